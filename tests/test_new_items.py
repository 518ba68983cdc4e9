"""New items added to an exported PIR run without retraining: embedded from their
attributes, served by both indexes in a fresh process, atomic updates, clear errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.cli import main
from tfrec_proxy.serving import load_run


@pytest.fixture()
def run_copy(pir_run, tmp_path):
    """A private copy of the session's PIR run (adding items changes the folder)."""
    return shutil.copytree(pir_run, tmp_path / "run")


def _unbiased_top_item(run, history):
    """The best item for `history` among those without a frequent-item bias row: a
    new item given its attributes gets exactly its vector (no per-item parameters)."""
    from tfrec_proxy.training import restore_model

    model, vocab, _ = restore_model(run.path)
    tower = model.candidate_tower
    top, _ = run.recommend([history], k=20, index="brute_force")
    for item in top[0]:
        index = int(vocab.lookup([item])[0])
        if int(tower.bias_index.numpy()[index]) >= tower.frequent_bias_k:
            return int(item), index, model
    pytest.skip("every top-20 item has a bias row")


def _fresh_recommend(run_dir, history):
    """Top 10 of each index, in a new process that loads the folder."""
    code = f"""
import json, sys
from tfrec_proxy.serving import load_run
run = load_run({str(run_dir)!r})
out = {{"added": run.items_added}}
for index in ("scann", "brute_force"):
    out[index] = run.recommend([{history!r}], k=10, index=index)[0][0].tolist()
json.dump(out, sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("rebuild", [False, True])
def test_added_item_is_retrieved_in_a_fresh_process(run_copy, rebuild):
    """A cold item with the attributes of the history's best (unbiased) item ties with
    it, so both indexes return it: through the exact delta segment, or (rebuild)
    through the ScaNN SavedModel itself."""
    run = load_run(run_copy)
    history = [int(i) for i in run.candidate_ids[:4]]
    twin, twin_index, model = _unbiased_top_item(run, history)
    attributes = np.load(run_copy / "item_features.npz")["attributes"][[twin_index]]
    new_id = int(run.candidate_ids.max()) + 1
    report = run.add_items([new_id], attributes, rebuild=rebuild)
    assert report == {"added": 1, "items_added": 1, "indexed": int(rebuild),
                      "delta": int(not rebuild)}
    np.testing.assert_allclose(run.candidate_embeddings[run.candidate_ids == new_id][0],
                               run.candidate_embeddings[run.candidate_ids == twin][0],
                               atol=1e-5)
    served = _fresh_recommend(run_copy, history)
    assert served["added"] == 1
    for index in ("scann", "brute_force"):
        assert new_id in served[index] and twin in served[index], (index, served)


def test_new_item_vectors_match_the_keras_tower(run_copy):
    from tfrec_proxy.training import restore_model

    run = load_run(run_copy)
    rng = np.random.default_rng(0)
    attributes = rng.normal(size=(3, 8)).astype(np.float32)
    ids = [10_001, 10_002, 10_003]
    run.add_items(ids, attributes)
    model, _, _ = restore_model(run_copy)
    expected = model.candidate_tower({"item_id": np.ones(3, np.int32),
                                      "attributes": attributes,
                                      "context": np.zeros((3, 0), np.float32)}).numpy()
    np.testing.assert_allclose(run.delta.embeddings, expected, atol=1e-5)
    # A second batch extends the segment; the re-export folds all of it into the indexes.
    run.add_items([10_004], attributes[:1])
    assert run.items_added == 4 and len(run.delta) == 4
    assert main(["export", "--run", str(run_copy)]) == 0
    again = load_run(run_copy)
    assert again.delta is None and again.items_added == 4
    assert set(ids) <= set(again.candidate_ids.tolist())


@pytest.mark.parametrize("ids, attributes, message", [
    ([None], np.zeros((1, 8)), "non-empty 1-D sequence of integers"),
    ([7_001, 7_001], np.zeros((2, 8)), "item_ids repeat: \\[7001\\]"),
    ("known", np.zeros((1, 8)), "already in run"),
    ([7_001], np.zeros((1, 5)), "attributes must have shape \\(1, 8\\)"),
    ([7_001], np.full((1, 8), np.nan), "attributes row 0 holds NaN"),
])
def test_bad_new_items_change_nothing(run_copy, ids, attributes, message):
    run = load_run(run_copy)
    if ids == "known":
        ids = [int(run.candidate_ids[0])]
    before = (run_copy / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=message):
        run.add_items(ids, attributes)
    assert (run_copy / "manifest.json").read_bytes() == before
    assert not list(run_copy.glob("added_items*"))


def test_a_crash_before_the_manifest_swap_leaves_the_old_run(run_copy, monkeypatch):
    import tfrec_proxy.new_items as new_items

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(new_items.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        new_items.add_items(run_copy, [8_001], np.zeros((1, 8), np.float32))
    run = load_run(run_copy)  # still valid, still without the item
    assert run.items_added == 0 and 8_001 not in run.candidate_ids


def test_runs_without_attributes_refuse_new_items(trained_run):
    with pytest.raises(ValueError, match="cannot embed new items"):
        load_run(trained_run[1]).add_items([5_000], np.zeros((1, 1)))


def test_add_items_verb_reads_a_table(run_copy, tmp_path, capsys):
    table = pd.DataFrame({"item_id": [6_001, 6_002],
                          "attributes": [",".join(["0.5"] * 8), ",".join(["-1"] * 8)]})
    path = tmp_path / "new.tsv"
    table.to_csv(path, sep="\t", index=False)
    capsys.readouterr()
    assert main(["add-items", "--run", str(run_copy), "--items", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["items_added"] == 2
    bad = tmp_path / "bad.tsv"
    table.assign(attributes=["1,2,3", "1,2"]).to_csv(bad, sep="\t", index=False)
    assert main(["add-items", "--run", str(run_copy), "--items", str(bad)]) != 0
    assert "6001" in capsys.readouterr().err
    assert load_run(run_copy).items_added == 2
