"""Export parity for every run kind: the reloaded SavedModels' query embeddings and
exact top-k equal the model rebuilt from the run's weights (<= 1e-5, identical ids),
and ScaNN's top-k roughly agrees with it. One parametrised test over the session's shared
tiny runs (conftest), so nothing is trained twice."""

import json
from pathlib import Path

import numpy as np
import pytest

from tfrec_proxy._tf import tf

# (fixture, what it covers)
RUNS = {
    "trained_run": "self-attention SUR, id item tower (Python)",
    "pir_run": "MUR (M = 2) + IDW + PIR item tower shared with the history encoder (CLI)",
    "sasrec_run": "SASRec, tied item table, BCE, per-user split (CLI)",
    "ram_result": "RAM with a user embedding, full softmax, MUR extraction (Python)",
    "proxysr_run": "ProxySR, eq. 7 distance scorer, annealed temperature (CLI)",
    "felrec_run": "FELRec-Q: cache-based towers, no embedding tables (CLI)",
}


def _run_dir(request, name):
    value = request.getfixturevalue(name)
    if isinstance(value, tuple):  # trained_run: (result, folder); felrec_run: (folder, out)
        return next(item for item in value if isinstance(item, Path))
    return getattr(value, "run_dir", value)  # a TrainResult, or the folder itself


def _exact_top_k(scores, k):
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _felrec_parity(run_dir):
    from tfrec_proxy.felrec_export import read_serving_state
    from tfrec_proxy.serving import load_run

    run = load_run(run_dir)
    state, arrays = read_serving_state(run_dir)
    users = state.user_ids[:16]
    rows = np.arange(len(users))

    def normalise(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    filled = arrays["user_filled"][rows] > 0
    with np.load(run_dir / "cache.npz") as stored:
        empty = stored["empty_user"]
    expected = state.score_sign * np.where(filled[:, None],
                                           normalise(arrays["user_table"][rows]),
                                           normalise(empty))
    np.testing.assert_allclose(run.embed_users(users), expected, atol=1e-5)
    candidates = np.load(run_dir / "candidates.npz")
    scores = expected @ candidates["embeddings"].T
    ids, _ = run.recommend_users(users, k=5, index="brute_force")
    np.testing.assert_array_equal(ids, candidates["ids"][_exact_top_k(scores, 5)])


@pytest.mark.parametrize("name", list(RUNS))
def test_reloaded_savedmodels_equal_the_rebuilt_model(request, name):
    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import restore_model

    run_dir = _run_dir(request, name)
    if (run_dir / "cache.npz").exists():
        _felrec_parity(run_dir)
        return
    model, vocab, _ = restore_model(run_dir)
    run = load_run(run_dir)
    candidates = np.load(run_dir / "candidates.npz")
    items = model.item_embeddings(vocab.size)[2:]
    np.testing.assert_allclose(items, candidates["embeddings"], atol=1e-5)
    ids = candidates["ids"]
    histories = [[int(i) for i in ids[j:j + 5]] for j in range(0, 80, 5)]
    context, served_context = None, None
    users_file = run_dir / "users.json"
    if "user_id" in model.query_tower.context_specs:
        users = json.loads(users_file.read_text())["ids"][:len(histories)]
        users += [10 ** 9] * (len(histories) - len(users))  # and unknown users
        context = {"user_id": np.asarray(users, np.int64)}
        served_context = {"user_id": users}
    queries = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]),
                                     context=context)
    served = run.embed(histories, context=served_context)
    np.testing.assert_allclose(served, queries, atol=1e-5)
    scores = model.scorer.score_matrix(tf.constant(queries), tf.constant(items)).numpy()
    exact = ids[_exact_top_k(scores, 10)]
    got, got_scores = run.recommend(histories, k=10, index="brute_force",
                                    context=served_context)
    np.testing.assert_array_equal(got, exact)
    np.testing.assert_allclose(got_scores, np.take_along_axis(
        scores, _exact_top_k(scores, 10), axis=1), atol=1e-5)
    if "scann" in run.indexes:
        approximate, _ = run.recommend(histories, k=10, index="scann",
                                       context=served_context)
        # ScaNN is tuned to recall@10 >= 0.95 on validation queries; these 16 are other
        # queries on a 200-item catalogue (a CI run measured 0.894), so only a sanity
        # bound here: exact parity is the brute-force check above.
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact)])
        assert recall >= 0.8, recall
