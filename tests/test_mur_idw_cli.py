"""MUR + IDW through the CLI: train -> evaluate -> export -> a fresh process loads the
run and recommends; ScaNN retrieval agrees with exact eq. 4 over the catalogue."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfrec_proxy.cli import main

from conftest import tiny_config


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_mur_idw")
    config = tiny_config(epochs=1)
    config.to_json(folder / "config.json")
    code = main(["train", "--config", str(folder / "config.json"), "--output", str(folder),
                 "--run-name", "mur_idw", "--extraction", "mur", "--num-interests", "3",
                 "--weighting", "idw", "--idw-max-iterations", "2", "--idw-eta", "1e-9",
                 "--max-k", "20", "--scann-target-recall", "1.0"])
    assert code == 0
    return folder / "mur_idw"


def test_train_records_the_method(cli_run, capsys):
    manifest = json.loads((cli_run / "manifest.json").read_text())
    assert manifest["num_interests"] == 3 and manifest["scorer"] == "mur"
    assert manifest["query_shape"] == [3, 8]
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert metrics["method"]["weighting"] == "idw" and metrics["method"]["num_interests"] == 3
    assert [phase["name"] for phase in metrics["phases"]] == ["pretrain", "idw", "calibrate"]
    assert "items/silhouette" in metrics["test"]


def test_evaluate_through_the_savedmodels_matches_training(cli_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(cli_run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    trained = json.loads((cli_run / "metrics.json").read_text())["test"]
    for key in ("sampled/hr@20", "sampled/ndcg@20", "full/ndcg@20", "full/tail/ndcg@20"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_export_keeps_the_idw_state(cli_run, tmp_path, capsys):
    from tfrec_proxy.weighting.idw import IDWState

    target = tmp_path / "again"
    assert main(["export", "--run", str(cli_run), "--output", str(target)]) == 0
    before, after = IDWState.from_run(cli_run), IDWState.from_run(target)
    np.testing.assert_array_equal(before.weights, after.weights)
    assert (before.iteration, before.phase) == (after.iteration, after.phase)


def test_fresh_process_recommends_exact_eq4_and_scann_agrees(cli_run):
    """Brute force is exact eq. 4 over all items; ScaNN's merged per-interest
    candidates, re-scored by eq. 4, reach recall@10 >= 0.99 against it."""
    code = f"""
import json, sys
import numpy as np
from tfrec_proxy.serving import load_run
run = load_run({str(cli_run)!r})
ids = run.candidate_ids
histories = [[int(ids[(7 * i + j) % len(ids)]) for j in range(1 + i % 6)] for i in range(60)]
queries = run.embed(histories)
out = {{"queries": queries.tolist(), "histories": histories}}
for index in ("brute_force", "scann"):
    top, scores = run.recommend(histories, k=10, index=index)
    out[index] = top.tolist()
json.dump(out, sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    candidates = np.load(cli_run / "candidates.npz")
    queries = np.asarray(out["queries"], np.float32)
    per_interest = np.einsum("bmd,cd->bmc", queries, candidates["embeddings"])
    exact = (_softmax(per_interest, axis=1) * per_interest).sum(axis=1)
    expected = candidates["ids"][np.argsort(-exact, axis=1, kind="stable")[:, :10]]
    brute = np.asarray(out["brute_force"])
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(brute, expected)]
    assert np.mean(overlap) >= 0.999  # exact up to float ties
    # The run's ScaNN is tuned to recall@10 = 1 on its validation queries (the
    # default target, 0.95, picks by timing among settings that meet it, so its
    # recall on other queries varies from run to run).
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(out["scann"], expected)])
    assert recall >= 0.99, recall


def test_recommend_verb_serves_the_mur_run(cli_run, capsys):
    capsys.readouterr()
    ids = np.load(cli_run / "candidates.npz")["ids"]
    history = ",".join(str(int(i)) for i in ids[:4])
    assert main(["recommend", "--run", str(cli_run), "--history", history, "-k", "5",
                 "--exclude-seen"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["items"]) == 5 and not set(record["items"]) & set(ids[:4].tolist())
