"""PIR through the CLI, composed with MUR + IDW and a shared history encoder (the
session's `pir_run`, conftest): train -> evaluate -> export -> reload (identical
outputs) -> a fresh process recommends."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfrec_proxy.cli import main

from conftest import tiny_config


def test_manifest_reports_the_item_tower_and_parameters(pir_run):
    manifest = json.loads((pir_run / "manifest.json").read_text())
    assert manifest["item_tower"] == "pir" and manifest["num_interests"] == 2
    parameters = manifest["parameters"]
    # The shared encoder is counted in both towers but once in the total.
    assert parameters["total"] < parameters["query_tower"] + parameters["candidate_tower"]
    assert parameters["query_tower"] > parameters["candidate_tower"] > 0
    # 8 proxies x 8 dims + top-20 bias rows x 8 proxies + the eq. 11-17 layers, no
    # per-item table.
    assert parameters["candidate_tower"] < 200 * 8
    assert {"item_features.json", "item_features.npz"} <= set(manifest["files"])
    metrics = json.loads((pir_run / "metrics.json").read_text())
    assert metrics["method"]["item_tower"] == "pir"


def test_evaluate_through_the_savedmodels_matches_training(pir_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(pir_run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    trained = json.loads((pir_run / "metrics.json").read_text())["test"]
    for key in ("sampled/hr@20", "full/ndcg@20", "full/tail/ndcg@20"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_reloaded_run_gives_identical_outputs(pir_run, tmp_path, capsys):
    """Keras model rebuilt from the folder, a re-export, and the SavedModels in a fresh
    process all give the trained item and user vectors (<= 1e-5)."""
    from tfrec_proxy.training import restore_model

    model, vocab, config = restore_model(pir_run)
    trained = np.load(pir_run / "candidates.npz")
    np.testing.assert_allclose(model.item_embeddings()[2:], trained["embeddings"], atol=1e-5)
    target = tmp_path / "again"
    assert main(["export", "--run", str(pir_run), "--output", str(target)]) == 0
    again = np.load(target / "candidates.npz")
    np.testing.assert_allclose(again["embeddings"], trained["embeddings"], atol=1e-5)
    assert (target / "item_features.npz").exists()

    histories = [[int(i) for i in trained["ids"][j:j + 4]] for j in range(0, 40, 4)]
    code = f"""
import json, sys
from tfrec_proxy.serving import load_run
run = load_run({str(pir_run)!r})
json.dump(run.embed({histories!r}).tolist(), sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.asarray(json.loads(result.stdout), np.float32)
    keras = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]))
    np.testing.assert_allclose(served, keras, atol=1e-5)


def test_recommend_verb_serves_the_pir_run(pir_run, capsys):
    capsys.readouterr()
    ids = np.load(pir_run / "candidates.npz")["ids"]
    history = ",".join(str(int(i)) for i in ids[:4])
    assert main(["recommend", "--run", str(pir_run), "--history", history, "-k", "5"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["items"]) == 5


def test_pir_without_features_is_a_bias_only_factorisation(tmp_path):
    """No attribute table: the PIR tower still trains (weights from the bias alone)."""
    from tfrec_proxy.training import train

    config = tiny_config(epochs=1)
    config.model.item_tower = "pir"
    config.model.frequent_bias_k = 50
    result = train(config, export=False, verbose=0)
    assert result.data.item_features is None
    assert result.model.candidate_tower.attribute_dim == 0
    assert np.isfinite(result.metrics["full/ndcg@20"])


def test_item_table_with_categories_and_timestamps_trains_pir(tmp_path):
    """A user's item table (multi-hot tags + a release timestamp -> 7 calendar context
    features) drives the PIR tower; cold items get metrics of their own."""
    import pandas as pd

    from tfrec_proxy.training import train

    config = tiny_config(epochs=1)
    ids = np.arange(1, config.data.synthetic.num_items + 1)
    table = pd.DataFrame({"item_id": ids,
                          "tags": ["a|b" if i % 2 else "c" for i in ids],
                          "released": 1_000_000_000 + 86_400 * ids})
    table.to_csv(tmp_path / "items.csv", index=False)
    config.data.item_features = str(tmp_path / "items.csv")
    config.data.item_feature_spec = {"id_column": "item_id", "columns": {
        "tags": {"kind": "multi_hot"}, "released": {"kind": "timestamp"}}}
    config.data.cold_items = 0.05
    config.model.item_tower, config.model.num_proxies = "pir", 4
    result = train(config, export=False, verbose=0)
    tower = result.model.candidate_tower
    assert (tower.attribute_dim, tower.context_dim) == (3, 7)
    assert result.data.item_features.spec.columns[1].kind == "timestamp"
    assert np.isfinite(result.metrics["cold/full/hr@20"])
