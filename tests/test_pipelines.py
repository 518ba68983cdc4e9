"""Pipelines: configs parse, benchmark scripts run on tiny settings."""

import subprocess
import sys
from pathlib import Path

from tfrec_proxy.config import RunConfig

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_configs_parse_and_build():
    from tfrec_proxy.models import build_model

    paths = sorted((PIPELINES / "configs").glob("*.json"))
    assert [p.name for p in paths] == ["ml1m_d64.json", "ml1m_sur.json",
                                       "synthetic_default.json"]
    for path in paths:
        config = RunConfig.from_json(path)
        build_model(config.model, vocab_size=10, max_len=config.data.max_len)


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


def test_bench_exclusions_smoke():
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "bench_exclusions.py"), "--users", "50", "--items",
         "1000", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio per-row lists / shared sets" in out.stdout


def test_bench_train_speed_smoke():
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "bench_train_speed.py"), "--quick", "--tiny"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ratio = out.stdout.strip().splitlines()[-1]
    assert ratio.startswith("speed ratio vs plain TFRS: ")
    assert float(ratio.rsplit(" ", 1)[1]) > 0


def test_sweep_baseline_smoke(tmp_path):
    from conftest import tiny_config

    config = tiny_config(epochs=1)
    config.to_json(tmp_path / "tiny.json")
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "sweep_baseline.py"), "--config",
         str(tmp_path / "tiny.json"), "--set", "train.learning_rate=0.003;model.dropout=0.0"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("[train.learning_rate=0.003;model.dropout=0.0]") and "1 epochs" in line
