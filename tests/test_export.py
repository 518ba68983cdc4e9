"""Export, reload parity, fresh-process loading, ScaNN vs BruteForce, bad input."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.export import RunFormatError, load_run, pack_histories


def _raw_histories(data, examples, count):
    history = examples.history[:count]
    return [data.vocab.raw_ids(row[row > 0]).tolist() for row in history]


def test_run_folder_layout(trained_run):
    _, run_dir = trained_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["format"] == "tfrec_proxy.run" and manifest["format_version"] == 2
    assert manifest["model_kind"] == "two_tower" and manifest["scorer"] == "dot"
    assert manifest["query_shape"] == [8] and manifest["query_features"] == ["history"]
    assert manifest["embedding_dim"] == 8 and manifest["num_interests"] == 1
    assert manifest["max_k"] == 20 and manifest["indexes"] == ["scann", "brute_force"]
    for name in ("query_model/saved_model.pb", "retrieval/scann/saved_model.pb",
                 "retrieval/brute_force/saved_model.pb", "candidates.npz", "metrics.json"):
        assert (run_dir / name).exists(), name
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]
    # Readable by a server running as another user (mkdtemp alone gives 0700).
    assert run_dir.stat().st_mode & 0o777 == 0o755
    assert all(path.stat().st_mode & 0o004 for path in run_dir.rglob("*"))


def test_reloaded_embeddings_and_topk_equal_in_memory_model(trained_run):
    result, run_dir = trained_run
    model, data = result.model, result.data
    run = load_run(run_dir)
    examples = data.split.test
    expected_queries = model.query_embeddings(examples.history[:8])
    np.testing.assert_allclose(run.embed(_raw_histories(data, examples, 8)), expected_queries,
                               atol=1e-5)
    items = model.item_embeddings(data.vocab.size)[2:]
    np.testing.assert_allclose(run.candidate_embeddings, items, atol=1e-6)
    ids, scores = run.recommend(_raw_histories(data, examples, 8), k=10, index="brute_force")
    exact = expected_queries @ items.T
    order = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, data.vocab.ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, axis=1), atol=1e-5)


def test_scann_agrees_with_brute_force(trained_run):
    result, run_dir = trained_run
    run = load_run(run_dir)
    histories = _raw_histories(result.data, result.data.split.test, 32)
    scann_ids, _ = run.recommend(histories, k=10, index="scann")
    exact_ids, _ = run.recommend(histories, k=10, index="brute_force")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(scann_ids, exact_ids)])
    assert recall >= 0.9, recall


def test_k_is_chosen_at_query_time(trained_run):
    _, run_dir = trained_run
    run = load_run(run_dir)
    ids_5, _ = run.recommend([3, 4, 5], k=5, index="scann")
    ids_20, _ = run.recommend([3, 4, 5], k=20, index="scann")
    assert ids_5.shape == (1, 5) and ids_20.shape == (1, 20)
    np.testing.assert_array_equal(ids_5[0], ids_20[0, :5])


def test_loads_in_a_fresh_process(trained_run):
    result, run_dir = trained_run
    in_memory, _ = load_run(run_dir).recommend([3, 4, 5], k=5)
    script = textwrap.dedent(f"""
        import json, tfrec_proxy
        from tfrec_proxy.export import recommend
        ids, scores = recommend({str(run_dir)!r}, [3, 4, 5], k=5)
        print(json.dumps([int(i) for i in ids]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == in_memory[0].tolist()


def test_pack_histories_left_aligns_and_truncates():
    packed = pack_histories(tf.constant([[5, 6, 0, 0], [0, 7, 0, 8], [1, 2, 3, 4]]), 3)
    np.testing.assert_array_equal(packed.numpy(), [[0, 5, 6], [0, 7, 8], [2, 3, 4]])


def test_bad_histories_and_k(trained_run):
    _, run_dir = trained_run
    run = load_run(run_dir)
    with pytest.raises(ValueError, match="history is empty"):
        run.recommend([], k=5)
    with pytest.raises(ValueError, match="item id is NaN"):
        run.recommend([3, float("nan")], k=5)
    with pytest.raises(ValueError, match="item id 'x' is not an integer"):
        run.recommend([3, "x"], k=5)
    with pytest.raises(ValueError, match="item id 2.5 is not an integer"):
        run.recommend([2.5], k=5)
    with pytest.raises(ValueError, match="k=201 exceeds the catalogue size"):
        run.recommend([3], k=201)
    with pytest.raises(ValueError, match="k=21 exceeds max_k=20"):
        run.recommend([3], k=21)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        run.recommend([3], k=0)
    with pytest.warns(UserWarning, match=r"2 item id\(s\) \[123456, 999999\] in 1 of 1 "
                                         "histories are not in the run's vocabulary"):
        ids, _ = run.recommend([3, 123456, 999999], k=5)
    assert ids.shape == (1, 5)


def test_invalid_run_folders(trained_run, tmp_path):
    _, run_dir = trained_run
    with pytest.raises(RunFormatError, match="does not exist"):
        load_run(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    shutil.rmtree(broken / "retrieval" / "scann")
    with pytest.raises(RunFormatError, match=r"missing \['retrieval/scann/saved_model.pb', "):
        load_run(broken)
    # Every file the manifest lists is checked, e.g. a SavedModel's variables.
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "retrieval" / "scann" / "variables" / "variables.index").unlink()
    with pytest.raises(RunFormatError,
                       match=r"missing \['retrieval/scann/variables/variables.index'\]"):
        load_run(partial)
    future = tmp_path / "future"
    shutil.copytree(run_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunFormatError, match="format version 99 is not supported"):
        load_run(future)


def test_tiny_catalogue_gets_brute_force_only(tmp_path):
    from tfrec_proxy.config import RunConfig
    from tfrec_proxy.data import Vocabulary
    from tfrec_proxy.export import export_run
    from tfrec_proxy.models import build_model

    vocab = Vocabulary.from_ids([10, 11, 12])
    config = RunConfig()
    config.data.max_len = 5
    export_run(build_model(config.model, vocab.size, 5), tmp_path / "tiny", vocab=vocab,
               config=config)
    run = load_run(tmp_path / "tiny")
    assert run.indexes == ["brute_force"] and run.max_k == 3
    ids, _ = run.recommend([10, 11], k=3)
    assert sorted(ids[0].tolist()) == [10, 11, 12]
    with pytest.raises(ValueError, match=r"Index 'scann' is not in this run; it has \['brute_force'\]"):
        run.recommend([10], k=1, index="scann")
    with pytest.raises(FileExistsError, match="exists"):
        export_run(build_model(config.model, vocab.size, 5), tmp_path / "tiny", vocab=vocab,
                   config=config)


def test_saved_models_check_their_inputs(trained_run):
    _, run_dir = trained_run
    query_model = tf.saved_model.load(str(run_dir / "query_model"))
    embed = query_model.signatures["serving_default"]
    # Padding on either side gives the same embedding as the unpadded history.
    left = embed(history=tf.constant([[-1, -1, 3, 4]], tf.int64))["embedding"]
    right = embed(history=tf.constant([[3, 4, -1, -1]], tf.int64))["embedding"]
    np.testing.assert_allclose(left.numpy(), right.numpy(), atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one item id"):
        embed(history=tf.constant([[-1, -1]], tf.int64))
    retrieve = tf.saved_model.load(str(run_dir / "retrieval" / "brute_force"))
    retrieve = retrieve.signatures["serving_default"]
    assert retrieve(history=tf.constant([[3]], tf.int64), k=tf.constant(4))["ids"].shape == (1, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be <= max_k=20"):
        retrieve(history=tf.constant([[3]], tf.int64), k=tf.constant(21))
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 1"):
        retrieve(history=tf.constant([[3]], tf.int64), k=tf.constant(0))


def test_scann_is_tuned_to_the_recall_target_on_validation_queries(trained_run):
    _, run_dir = trained_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tuning = manifest["scann_tuning"]
    assert tuning["target_recall"] == 0.95 and tuning["k"] == 10
    assert tuning["met_target"] and tuning["recall"] >= 0.95
    assert tuning["candidates_tried"] >= 1 and tuning["tuning_seconds"] > 0
    # The served index is the tuned one: its settings are the manifest's ScaNN settings.
    assert manifest["scann"] == tuning["settings"]
    assert manifest["stock_ops_retrieval"] == "retrieval/brute_force"


def test_reexport_keeps_the_tuned_scann_settings(trained_run, tmp_path):
    from tfrec_proxy.export import reexport_run

    _, run_dir = trained_run
    before = json.loads((run_dir / "manifest.json").read_text())
    target = reexport_run(run_dir, tmp_path / "again")
    after = json.loads((target / "manifest.json").read_text())
    assert after["scann"] == before["scann"]
    assert after["scann_tuning"]["reused"] is True
    assert after["scann_tuning"]["recall"] == before["scann_tuning"]["recall"]
