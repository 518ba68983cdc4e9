"""Exact chunked top-k (dot and MUR eq. 4) vs brute force, the stock-op retrieval
SavedModel in a fresh process without scann / tfrec_proxy, ScaNN tuned to a recall
target, bad arguments, and the retrieval benchmark's smoke run."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.layers.parametric_attention import MultiInterestScorer
from tfrec_proxy.savedmodels import ScorerBruteForce
from tfrec_proxy.topk import ChunkedTopK, chunked_top_k

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
# Small-integer vectors: every dot product is exact in float32 whatever the matmul's
# summation order, so ties are real ties and ids must equal BruteForce's exactly.
CANDIDATES = RNG.integers(-3, 4, (1037, 8)).astype(np.float32)
CANDIDATES[700] = CANDIDATES[5]  # duplicates in different blocks: exact ties
CANDIDATES[1030] = CANDIDATES[5]
QUERIES = RNG.integers(-3, 4, (6, 8)).astype(np.float32)
QUERIES[0] = CANDIDATES[5]


def _brute_force(queries, candidates, k, scorer=None):
    layer = (tfrs.layers.factorized_top_k.BruteForce(k=k) if scorer is None
             else ScorerBruteForce(scorer, k=k))
    layer.index(tf.constant(candidates), tf.range(len(candidates)))
    scores, ids = layer(tf.constant(queries), k=k)
    return scores.numpy(), ids.numpy()


@pytest.mark.parametrize("k, block_size, group_size, unroll_limit", [
    (10, 64, 4, 128),     # ragged last block (1037 = 16 x 64 + 13), grouped
    (10, 100, 32, 128),   # last block 37 < groups x size
    (10, 7, 1, 2),        # tiny blocks through the while loop, no grouping
    (100, 64, 4, 128),    # k > block size
    (100, 64, 4, 3),      # k > block size in the while loop (head holds >= k)
    (1, 5000, 32, 128),   # one block larger than the catalogue
    (1037, 256, 8, 2),    # k = the whole catalogue
])
def test_chunked_top_k_equals_brute_force_with_ties(k, block_size, group_size, unroll_limit):
    expected_scores, expected_ids = _brute_force(QUERIES, CANDIDATES, k)
    scores, ids = chunked_top_k(tf.constant(QUERIES), tf.constant(CANDIDATES), k,
                                block_size=block_size, group_size=group_size,
                                unroll_limit=unroll_limit)
    np.testing.assert_array_equal(ids.numpy(), expected_ids)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)
    # Ties: the three copies of candidate 5 come in position order.
    row = ids.numpy()[0].tolist()
    copies = [position for position in row if position in (5, 700, 1030)]
    assert copies == sorted(copies)


@pytest.mark.parametrize("unroll_limit", [128, 2])
def test_block_k_recomputes_queries_whose_top_k_crowd_one_block(unroll_limit):
    # Sorted by query 1's scores, its whole top 40 lies in the first block, which keeps
    # only 5: that query must be recomputed (the others need not be).
    candidates = CANDIDATES[np.argsort(-(CANDIDATES @ QUERIES[1]), kind="stable")]
    expected_scores, expected_ids = _brute_force(QUERIES, candidates, 40)
    search = tf.function(lambda q: chunked_top_k(q, candidates, 40, block_size=64,
                                                 block_k=5, unroll_limit=unroll_limit))
    scores, ids = search(tf.constant(QUERIES))
    np.testing.assert_array_equal(ids.numpy(), expected_ids)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)


@pytest.mark.parametrize("block_size, unroll_limit", [(64, 128), (100, 2), (2000, 128)])
def test_mur_eq4_chunked_equals_brute_force(block_size, unroll_limit):
    scorer = MultiInterestScorer()
    candidates = RNG.standard_normal((1037, 8)).astype(np.float32)
    queries = RNG.standard_normal((5, 3, 8)).astype(np.float32)
    expected_scores, expected_ids = _brute_force(queries, candidates, 20, scorer)
    index = ChunkedTopK(scorer, k=20, block_size=block_size, group_size=8,
                        unroll_limit=unroll_limit)
    index.index(tf.constant(candidates), tf.range(1037, dtype=tf.int64) + 1000)
    scores, ids = tf.function(lambda q: index(q))(tf.constant(queries))
    np.testing.assert_array_equal(ids.numpy(), expected_ids + 1000)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-6)
    assert index.is_exact()


def test_bad_arguments_give_clear_errors():
    queries, candidates = tf.constant(QUERIES), tf.constant(CANDIDATES)
    for kwargs, message in [({"k": 0}, "k must be an integer >= 1"),
                            ({"k": True}, "k must be an integer >= 1"),
                            ({"k": 1038}, r"k=1038 exceeds the catalogue size \(1037"),
                            ({"k": 5, "block_size": 0}, "block_size must be an integer >= 1"),
                            ({"k": 5, "group_size": 0}, "group_size must be an integer >= 1"),
                            ({"k": 5, "unroll_limit": 0}, "unroll_limit must be"),
                            ({"k": 5, "block_k": 0}, "block_k must be an integer >= 1")]:
        with pytest.raises(ValueError, match=message):
            chunked_top_k(queries, candidates, **kwargs)
    with pytest.raises(ValueError, match=r"candidates must be \[C, d\]"):
        chunked_top_k(queries, tf.constant(CANDIDATES[0]), 1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        ChunkedTopK(k=0)
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        ChunkedTopK(block_size=-1)
    index = ChunkedTopK(k=5)
    with pytest.raises(ValueError, match="index` method must be called first"):
        index(queries)
    with pytest.raises(ValueError, match="non-empty"):
        index.index(tf.zeros([0, 8]))
    index.index(candidates)
    with pytest.raises(ValueError, match=r"k=2000 exceeds the catalogue size"):
        index(queries, k=2000)


def _small_model(mur: bool):
    from tfrec_proxy.config import ModelConfig
    from tfrec_proxy.data import Vocabulary
    from tfrec_proxy.models import build_model
    from tfrec_proxy.savedmodels import QueryModule

    config = ModelConfig(embedding_dim=8, item_hidden_units=(8, 8), num_heads=2,
                         dropout=0.0, history_oov_rate=0.0)
    if mur:
        config.extraction, config.num_interests = "mur", 3
    vocab = Vocabulary(np.arange(100, 400))
    model = build_model(config, vocab.size, 6)
    sample = model.query_tower(model.sample_query_features(tf.constant([[2]], tf.int32)),
                               training=False)
    query = QueryModule(model.query_tower, model.scorer, vocab, 6, tuple(sample.shape[1:]))
    return model, vocab, query, model.item_embeddings(vocab.size)[2:]


HISTORIES = [[101, 102, 103, -1], [150, 160, 170, 180], [399, 5, -1, -1]]  # 5: unknown


def test_stock_savedmodel_serves_in_a_fresh_process_without_scann_or_tfrec_proxy(tmp_path):
    from tfrec_proxy.stock_export import save_stock_retrieval

    expected, folders = {}, {}
    for kind in ("dot", "mur"):
        model, vocab, query, embeddings = _small_model(kind == "mur")
        assert type(model.scorer).__name__ == ("MultiInterestScorer" if kind == "mur"
                                               else "DotScorer")
        # MUR's stock model is built from the saved query SavedModel folder, the dot one
        # from the in-memory QueryModule: both sources export.py may hold.
        source = query
        if kind == "mur":
            source = tmp_path / "mur_query"
            tf.saved_model.save(query, str(source), signatures=query.signatures())
        folders[kind] = save_stock_retrieval(tmp_path / kind, source, vocab.ids, embeddings,
                                             max_k=20, block_size=128)
        queries = query.embed({"history": tf.constant(HISTORIES, tf.int64)})["embedding"]
        scores, at = tf.math.top_k(model.scorer.score_matrix(queries, embeddings), k=5)
        expected[kind] = (vocab.ids[at.numpy()], scores.numpy(), queries.numpy())
    with pytest.raises(FileExistsError, match="not empty"):
        save_stock_retrieval(folders["dot"], query, vocab.ids, embeddings)

    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        out = {{}}
        for kind, folder in {json.dumps({k: str(v) for k, v in folders.items()})}.items():
            model = tf.saved_model.load(folder)
            served = model.signatures["serving_default"](
                history=tf.constant({HISTORIES}, tf.int64), k=tf.constant(5))
            queries = tf.constant(json.loads(sys.stdin.readline()))
            direct = model.signatures["from_queries"](queries=queries, k=tf.constant(5))
            out[kind] = [served["ids"].numpy().tolist(), served["scores"].numpy().tolist(),
                         direct["ids"].numpy().tolist()]
        out["modules"] = sorted(name for name in sys.modules if name.split(".")[0] in
                                ("scann", "tfrec_proxy", "tensorflow_recommenders"))
        print(json.dumps(out))
    """)
    stdin = "\n".join(json.dumps(expected[kind][2].tolist()) for kind in ("dot", "mur"))
    child = subprocess.run([sys.executable, "-c", script], input=stdin + "\n",
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    for kind in ("dot", "mur"):
        ids, scores, _ = expected[kind]
        np.testing.assert_array_equal(out[kind][0], ids)
        np.testing.assert_allclose(out[kind][1], scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out[kind][2], ids)

    cli = Path(sys.executable).parent / "saved_model_cli"
    run = subprocess.run(
        [str(cli), "run", "--dir", str(folders["mur"]), "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--input_exprs", f"history={HISTORIES};k=5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = re.search(r"Result for output key ids:\n(.*?)\nResult", run.stdout, re.S)
    assert printed, run.stdout[-2000:]
    cli_ids = np.array(json.loads(re.sub(r"\s+", ",", printed.group(1).strip())
                                  .replace("[,", "[")))
    np.testing.assert_array_equal(cli_ids, expected["mur"][0])


def _clustered(count, rng, centres):
    points = centres[rng.integers(0, len(centres), count)]
    return (points + 0.5 * rng.standard_normal(points.shape)).astype(np.float32)


def test_tuned_scann_meets_its_recall_target_on_5k_clustered_vectors(tmp_path):
    from tfrec_proxy.scann_tuning import recall_at_k, tune_scann

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 16)).astype(np.float32)
    candidates = _clustered(5000, rng, centres)
    tune, held_out = _clustered(400, rng, centres), _clustered(400, rng, centres)
    tuning = tune_scann(candidates, tune, k=10, target_recall=0.95, max_builds=2)
    assert tuning.met_target and tuning.recall_lower_bound >= 0.95
    assert set(tuning.settings) == {"num_leaves", "num_leaves_to_search",
                                    "num_reordering_candidates"}
    summary = tuning.to_manifest()
    json.dumps(summary)
    assert summary["candidates_tried"] == len(tuning.trials) >= 1
    assert tuning.queries_per_second > 0 and tuning.build_seconds > 0
    exact = lambda q: chunked_top_k(tf.constant(q), tf.constant(candidates), 10)[1].numpy()  # noqa
    # The served index is the measured one: its selection and held-out recalls (both
    # >= 0.95) average to its recall on all the tuning queries.
    _, served = tuning.index(tf.constant(tune))
    assert recall_at_k(served.numpy(), exact(tune)) >= 0.95
    assert tuning.recall >= 0.95 and tuning.recall_selection >= 0.95
    _, served = tf.function(lambda q: tuning.index(q))(tf.constant(held_out))
    assert recall_at_k(served.numpy(), exact(held_out)) >= 0.93
    # It saves like the export's ScaNN index, with its tuned query-time settings.
    module = tf.Module()
    module.index = tuning.index
    module.search = tf.function(lambda q: module.index(q, k=10),
                                input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "scann"), options=tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"]))
    loaded = tf.saved_model.load(str(tmp_path / "scann"))
    _, reloaded = loaded.search(tf.constant(held_out))
    np.testing.assert_array_equal(reloaded.numpy(), served.numpy())


def test_tune_scann_and_stock_export_reject_bad_arguments(tmp_path):
    from tfrec_proxy.scann_tuning import tune_scann
    from tfrec_proxy.stock_export import save_stock_retrieval

    items, queries = CANDIDATES[:100], QUERIES
    for kwargs, message in [({"target_recall": 0}, r"target_recall must be in \(0, 1\]"),
                            ({"target_recall": 1.5}, r"target_recall must be in \(0, 1\]"),
                            ({"k": 101}, "need k <= num_neighbors <= catalogue size"),
                            ({"num_neighbors": 5}, "need k <= num_neighbors"),
                            ({"repeats": 0}, "repeats must be an integer >= 1"),
                            ({"confidence": 1.0}, r"confidence must be in \[0, 1\)"),
                            ({"holdout": 1.0}, r"holdout must be in \[0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            tune_scann(items, queries, **kwargs)
    with pytest.raises(ValueError, match=r"queries must be a non-empty \[Q, d = 8\]"):
        tune_scann(items, queries[:, :4])
    _, vocab, query, embeddings = _small_model(False)
    with pytest.raises(ValueError, match=r"max_k must be an integer in \[1, 300\]"):
        save_stock_retrieval(tmp_path / "a", query, vocab.ids, embeddings, max_k=301)
    with pytest.raises(ValueError, match="C = len\\(candidate_ids\\) = 299"):
        save_stock_retrieval(tmp_path / "a", query, vocab.ids[:-1], embeddings)
    with pytest.raises(ValueError, match="query embeddings have d = 8"):
        save_stock_retrieval(tmp_path / "a", query, vocab.ids, embeddings[:, :4])
    with pytest.raises(TypeError, match="query must be a query SavedModel folder"):
        save_stock_retrieval(tmp_path / "a", object(), vocab.ids, embeddings)


def test_bench_retrieval_smoke(tmp_path):
    results = tmp_path / "retrieval.jsonl"
    out = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "bench_retrieval.py"), "--sizes", "3000",
         "--queries", "50", "--tune-queries", "100", "--clusters", "30", "--rounds", "1",
         "--max-builds", "1", "--no-memory", "--results", str(results)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["method"] for row in rows] == ["bruteforce", "exact_chunked",
                                               "scann_tfrs_default", "scann_export",
                                               "scann_tuned"]
    assert rows[1]["recall"] == 1.0 and rows[1]["ids_equal_bruteforce"]
    assert results.with_suffix(".png").exists() and "| 3,000 | scann_tuned |" in out.stdout


def test_run_brute_force_savedmodel_needs_no_scann_or_tfrec_proxy(trained_run, pir_run,
                                                                  tmp_path):
    """A run's exact retrieval model (SUR; MUR + PIR + IDW) is stock TensorFlow ops: a
    fresh process that never imports scann / tfrec_proxy / TFRS serves it with the
    same ids as `Run.recommend`."""
    from tfrec_proxy.serving import load_run

    folders = {"sur": trained_run[1], "mur": pir_run}
    histories = [[3, 17, 42, -1], [5, 6, 7, 8]]
    expected = {kind: load_run(folder).recommend([h[:3] if h[-1] < 0 else h
                                                  for h in histories], k=7,
                                                 index="brute_force")[0].tolist()
                for kind, folder in folders.items()}
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        out = {{}}
        for kind, folder in {json.dumps({k: str(v) for k, v in folders.items()})}.items():
            model = tf.saved_model.load(folder + "/retrieval/brute_force")
            served = model.signatures["serving_default"](
                history=tf.constant({histories}, tf.int64), k=tf.constant(7))
            out[kind] = served["ids"].numpy().tolist()
        out["modules"] = sorted(name for name in sys.modules if name.split(".")[0] in
                                ("scann", "tfrec_proxy", "tensorflow_recommenders"))
        print(json.dumps(out))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out.pop("modules") == []
    assert out == expected
