"""FELRec end to end: data on one time line, training, online evaluation per partition,
export with the cache, serving in a fresh process, update_cache, CLI, leak test."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.chronological import chronological_split
from tfrec_proxy.data.felrec_data import prepare_chronological, round_robin
from tfrec_proxy.data.synthetic import generate_long_tail
from tfrec_proxy.felrec import FELRecModel
from tfrec_proxy.felrec_evaluation import OnlineEvaluator

from conftest import felrec_config as _config, felrec_frame as _frame  # noqa: E402

PARTITIONS = ("observed", "new_users", "new_items", "new_both", "total")


def _results(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _split(run_dir):
    config = RunConfig.from_json(run_dir / "config.json")
    return prepare_chronological(config.data, history_len=config.model.felrec.history_len).split


# --- data ---------------------------------------------------------------------------

def test_interleaved_clock_has_new_users_and_items_and_keeps_user_order():
    frame = _frame()
    assert frame["timestamp"].is_monotonic_increasing
    raw = generate_long_tail(num_users=50, num_items=30, num_clusters=3, seq_len=10)
    assert len(frame) == len(raw.interactions)
    # Each user's clicks keep their order; only early clicks on late items moved.
    per_user = frame.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing)
    assert per_user.all()
    split = chronological_split(frame, 0.8, 0.1, history_len=4)
    counts = split.partition_counts()["test"]
    assert counts["new_users"] > 0 and counts["new_items"] > 0 and counts["observed"] > 0


def test_round_robin_interleaves_users_by_position():
    frame = pd.DataFrame({"user_id": [7, 7, 7, 3, 3], "item_id": [1, 2, 3, 4, 5],
                          "timestamp": [0, 1, 2, 3, 4]})
    ordered = chronological_split(round_robin(frame), 1.0, 0.0, 2).interactions
    assert ordered["item_id"].tolist() == [1, 4, 2, 5, 3]


# --- online evaluation against a naive loop -------------------------------------------

def test_online_scores_match_a_naive_per_interaction_loop():
    tf.keras.utils.set_random_seed(1)
    users = np.array([0, 1, 0, 2, 1, 3])
    items = np.array([0, 1, 1, 0, 4, 1])  # repeats inside the batch; item 4 is new
    # Distinct histories, so no two rows encode to the same vector: equal vectors
    # would tie exactly, and float rounding (which differs between numpy, TF and CPU
    # instruction sets) would decide the ">=" of the rank.
    batch = {"user": users, "item": items,
             "user_history": np.array([[-1, 2], [0, 3], [-1, 1], [2, 3], [1, 0], [-1, 3]]),
             "item_history": np.array([[0, 1], [-1, 2], [3, 1], [-1, 0], [2, 3], [1, 2]])}
    model = FELRecModel(4, 5, "q", dim=8, num_layers=1, num_heads=2, ff_dim=16, dropout=0.0,
                        queue_size=8)
    table = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    evaluator = OnlineEvaluator(model, batch_size=6, num_negatives=3, k=2, seed=5)
    negatives = evaluator._negatives(np.random.default_rng([5, 17]), np.arange(4), items)

    class Part:
        def features(self):
            return batch

        def __len__(self):
            return 6

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    for sign in (1, -1):
        model.reset_cache()
        model.cache.update("item", [0, 1, 2, 3], table[:4])  # item 4 has no vector yet
        model.cache.update("user", [0, 1, 2, 3], table[:4])
        u, x = (v.numpy() for v in model.encode({k: tf.constant(v, tf.int32)
                                                   for k, v in batch.items()}))
        got = evaluator.run(Part(), sign)
        vectors = {j: unit(table[j]) for j in range(4)}
        for r in range(6):
            def score(v):
                return sign * float(unit(u[r]) @ v)

            target = score(unit(x[r]))
            others = [v for j, v in vectors.items() if j != items[r]]
            rank = sum(score(v) >= target for v in others)
            size = len(set(vectors) | {items[r]})
            assert got.normalized_rank[r] == pytest.approx(rank / (size - 1), abs=1e-6)
            assert got.catalogue[r] == size
            beaten = sum(score(vectors[j]) >= target for j in negatives[r] if j >= 0)
            assert got.hit[r] == (beaten < 2)
            vectors[items[r]] = unit(x[r])  # row r's fresh vector, for later rows
        assert model.cache.num_filled("item") == 5  # the pass wrote the batch


# --- training, evaluation, export ------------------------------------------------------

def test_training_loss_falls_and_metrics_are_per_partition(felrec_run):
    run_dir, printed = felrec_run
    results = _results(run_dir)
    losses = results["history"]["loss"]
    assert losses[-1] < losses[0], losses
    assert len(results["history"]["val_normalized_rank"]) == len(losses)
    for kind in ("user", "item"):  # the cache's spread, logged every epoch
        spread = results["history"][f"cache_{kind}_cosine"]
        assert len(spread) == len(losses) and all(-1 <= c <= 1 for c in spread), spread
    metrics, split = results["test"], _split(run_dir)
    for prefix in ("", "reset/"):
        assert metrics[f"{prefix}total/count"] == len(split.test)
        for name in PARTITIONS:
            if metrics[f"{prefix}{name}/count"]:
                assert 0 <= metrics[f"{prefix}{name}/normalized_rank"] <= 1
                assert 0 <= metrics[f"{prefix}{name}/hr@10"] <= 1
    assert sum(metrics[f"{p}/count"] for p in PARTITIONS[:3]) == len(split.test)
    assert metrics["new_users/count"] > 0 and metrics["new_items/count"] > 0
    assert "new_items/normalized_rank" in printed and "exported run" in printed


def test_byol_loss_falls():
    from tfrec_proxy.training import train

    result = train(_config("byol", epochs=2), export=False, verbose=0,
                   interactions=_frame())
    assert result.model.variant == "p"
    assert result.history["loss"][-1] < result.history["loss"][0], result.history["loss"]


def test_manifest_reports_the_cache_and_constant_parameters(felrec_run):
    from tfrec_proxy.felrec_export import restore_felrec_model

    run_dir = felrec_run[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cache = manifest["cache"]
    assert cache["bytes_per_entity"] == 4 * 8 + 1
    assert cache["cache_bytes_1m_users_1m_items"] == 2_000_000 * 33
    assert cache["users"] == _split(run_dir).num_users
    model = restore_felrec_model(run_dir)[0]
    assert manifest["parameters"]["total"] == sum(
        int(np.prod(v.shape)) for v in model.trainable_variables)
    assert manifest["query_features"] == ["user_id"] and manifest["model_kind"] == "felrec"


def test_a_fresh_process_reproduces_query_vectors_and_scores(felrec_run, tmp_path):
    """The exported SavedModels (another process) against the Keras model rebuilt
    from the checkpoint (cache included)."""
    from tfrec_proxy.felrec_export import restore_felrec_model

    run_dir = felrec_run[0]
    model, _, state = restore_felrec_model(run_dir)
    split = _split(run_dir)
    np.testing.assert_array_equal(state.user_ids, split.user_ids)
    users, items = np.arange(split.num_users), np.arange(split.num_items)
    cached = model.cache.lookup("user", users).numpy()
    sign = state.score_sign
    expected = sign * cached / np.linalg.norm(cached, axis=1, keepdims=True)
    expected_scores = sign * model.scores(users, items).numpy()
    script = textwrap.dedent(f"""
        import numpy as np
        from tfrec_proxy.serving import load_run
        run = load_run({str(run_dir)!r})
        users = np.array({split.user_ids.tolist()})
        items = np.array({split.item_ids.tolist()})
        ids, _ = run.recommend_users(users[:2], k=5, index="brute_force")
        np.savez({str(tmp_path / "out.npz")!r}, vectors=run.embed_users(users),
                 scores=run.scores(users, items), ids=ids)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   timeout=300)
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["vectors"], expected, atol=1e-5)
        np.testing.assert_allclose(out["scores"], expected_scores, atol=1e-5)
        top = split.item_ids[np.argsort(-expected_scores[:2], axis=1, kind="stable")[:, :5]]
        np.testing.assert_array_equal(out["ids"], top)


def test_update_cache_serves_a_new_user_and_a_new_item(felrec_run, tmp_path):
    from tfrec_proxy.serving import load_run

    folder = tmp_path / "run"
    shutil.copytree(felrec_run[0], folder)
    run = load_run(folder)
    known_user, known_item = int(run.users.ids[0]), int(run.candidate_ids[0])
    new_user, new_item = 10_001, 20_002
    assert run.unknown_users([new_user]) == [new_user]
    assert new_item not in run.candidate_ids
    with pytest.raises(ValueError, match="older than the run's last timestamp"):
        run.update_cache(pd.DataFrame({"user_id": [new_user], "item_id": [known_item],
                                       "timestamp": [run.last_timestamp - 1]}))
    report = run.update_cache(pd.DataFrame({
        "user_id": [new_user, known_user, new_user],
        "item_id": [known_item, new_item, new_item],
        "timestamp": run.last_timestamp + np.arange(1, 4)}))
    assert report["new_users"] == 1 and report["new_items"] == 1
    fresh = load_run(folder)  # the update is in the folder, for other processes too
    assert not fresh.unknown_users([new_user]) and new_item in fresh.candidate_ids
    k = min(fresh.max_k, len(fresh.candidate_ids))
    ids, scores = fresh.recommend_users([new_user, known_user], k=k, index="brute_force")
    assert ids.shape == (2, k) and np.all(np.diff(scores, axis=1) <= 1e-6)
    assert new_item in ids[0]  # retrievable
    score = fresh.scores([new_user], [new_item])[0, 0]
    assert score == pytest.approx(scores[0][list(ids[0]).index(new_item)], abs=1e-5)
    assert load_run(felrec_run[0]).unknown_users([new_user]) == [new_user]  # a copy


def test_cli_recommend_by_user(felrec_run, capsys):
    from tfrec_proxy.cli import main

    run_dir = str(felrec_run[0])
    user = int(_split(felrec_run[0]).user_ids[0])
    assert main(["recommend", "--run", run_dir, "--user", str(user), "-k", "4"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["user"] == user and record["known_user"] and len(record["items"]) == 4
    assert main(["recommend", "--run", run_dir, "--user", str(user), "-k", "4",
                 "--exclude-seen"]) == 0
    unseen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]
    with np.load(felrec_run[0] / "cache.npz") as cache:
        recent = cache["user_recent"][0]
        seen = set(cache["item_ids"][recent[recent >= 0]].tolist())
    assert len(unseen) == 4 and not seen & set(unseen)
    assert main(["recommend", "--run", run_dir, "--user", "123456", "-k", "3"]) == 0
    captured = capsys.readouterr()
    assert not json.loads(captured.out)["known_user"] and "empty-history" in captured.err
    assert main(["recommend", "--run", run_dir, "--history", "1,2"]) == 2
    assert "queried by user" in capsys.readouterr().err


def test_a_leaked_future_interaction_does_not_change_validation(felrec_run):
    """A test-period row replaced by a validation interaction repeated in the future:
    if anything of the future reached validation, its scores would move."""
    from tfrec_proxy.training import train

    frame, run_dir = _frame(), felrec_run[0]
    ordered = _split(run_dir).interactions
    validation = ordered[ordered["split"] == "validation"].iloc[0]
    test = ordered[(ordered["split"] == "test") & (ordered["partition"] == "observed")]
    row = int(test["row"].iloc[-1])  # an observed test row: same users/items indices
    leaked = frame.copy()
    leaked.loc[row, ["user_id", "item_id"]] = [validation["user_id"], validation["item_id"]]
    result = train(_config(), export=False, verbose=0, interactions=leaked)
    original = _split(run_dir)
    assert result.data.split.num_users == original.num_users
    changed = np.flatnonzero((result.data.split.item != original.item)
                             | (result.data.split.user != original.user))
    assert len(changed) and changed.min() >= original.num_train + original.num_validation
    history = _results(run_dir)["history"]
    for key in ("val_normalized_rank", "val_hr@10"):
        np.testing.assert_allclose(result.history[key], history[key], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.history["loss"], history["loss"], rtol=1e-6)
