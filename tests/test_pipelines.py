"""Pipelines: configs parse, benchmark scripts run on tiny settings."""

import subprocess
import sys
from pathlib import Path

import pytest

from tfrec_proxy.config import RunConfig

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.mark.parametrize("path", sorted((PIPELINES / "configs").glob("*.json")),
                         ids=lambda p: p.name)
def test_configs_parse(path):
    config = RunConfig.from_json(path)
    assert config.model.item_hidden_units[-1] == config.model.embedding_dim


def test_bench_full_ranking_smoke():
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "bench_full_ranking.py"), "--items", "1000",
         "--chunk-sizes", "100", "--speed-items", "500", "--queries", "20", "--repeats", "1"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio chunked/dense" in out.stdout and "peak RSS growth" in out.stdout


def test_bench_run_retrieval_smoke(trained_run):
    _, run_dir = trained_run
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "bench_run_retrieval.py"), "--run", str(run_dir),
         "--queries", "20", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recall@10 of ScaNN against brute force over 20 test histories" in out.stdout
