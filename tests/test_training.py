"""Training: loss goes down, early stopping watches the validation metric, config JSON."""


import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.training import get_strategy, train

from conftest import tiny_config


def test_training_reduces_loss_and_beats_chance(trained_run):
    result, _ = trained_run
    losses = result.history["loss"]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert "val_hr@20" in result.history and "val_ndcg@20" in result.history
    # 99 sampled negatives: a random ranker has HR@20 = 0.2 in expectation.
    assert result.metrics["sampled/hr@20"] > 0.3
    assert set(result.metrics) >= {"full/hr@20", "sampled/head/hr@20", "sampled/tail/ndcg@5"}


def test_validation_callback_logs_the_sampled_metrics(trained_run):
    from tfrec_proxy.evaluation import evaluate_model

    result, _ = trained_run  # no early stopping: the model holds the last epoch's weights
    expected = evaluate_model(result.model, result.data, "validation", full=False)
    assert result.history["val_hr@20"][-1] == pytest.approx(expected["sampled/hr@20"])
    assert result.history["val_ndcg@5"][-1] == pytest.approx(expected["sampled/ndcg@5"])


def test_early_stopping_stops_when_the_monitor_stalls():
    config = tiny_config(epochs=6, early_stopping_patience=1, learning_rate=0.0)
    # With a zero learning rate nothing improves after epoch 1, so training stops at 2.
    result = train(config, export=False, verbose=0)
    assert len(result.history["loss"]) == 2
    assert result.run_dir is None


def test_config_json_round_trip_and_unknown_keys(tmp_path):
    config = tiny_config()
    config.to_json(tmp_path / "config.json")
    assert RunConfig.from_json(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match=r"config.train: unknown key\(s\) \['epoch'\]"):
        RunConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"config.train.epochs: expected int, got '20'"):
        RunConfig.from_dict({"train": {"epochs": "20"}})
    with pytest.raises(ValueError, match=r"config.model.item_hidden_units: expected a list"):
        RunConfig.from_dict({"model": {"item_hidden_units": 16}})
    with pytest.raises(ValueError, match=r"config.train.mixed_precision: expected bool"):
        RunConfig.from_dict({"train": {"mixed_precision": 1}})
    relaxed = RunConfig.from_dict({"train": {"learning_rate": 1, "tensorboard_dir": None},
                                   "model": {"item_hidden_units": [8, 8]}})
    assert relaxed.train.learning_rate == 1.0 and relaxed.model.item_hidden_units == (8, 8)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read run config"):
        RunConfig.from_json(tmp_path / "bad.json")


def test_unknown_monitor_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown early-stopping monitor 'val_hr@10'"):
        train(tiny_config(early_stopping_patience=2, monitor="val_hr@10"), export=False)


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'rmsprop'; expected one of"):
        train(tiny_config(optimizer="rmsprop"), export=False)


def test_sgd_optimizer_settings():
    from tfrec_proxy.schedule import make_optimizer

    optimizer = make_optimizer("sgd", 0.05)
    assert isinstance(optimizer, tf.keras.optimizers.SGD)
    assert optimizer.get_config()["momentum"] == pytest.approx(0.9)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="Unknown strategy 'tpu'"):
        get_strategy("tpu")


@pytest.fixture(scope="module")
def one_epoch_default():
    """The reference the GPU-ready options are compared with: same seed, same data."""
    return train(tiny_config(epochs=1), export=False, verbose=0)


@pytest.mark.parametrize("options", [{"strategy": "mirrored", "tensorboard_dir": "tb"},
                                     {"mixed_precision": True, "jit_compile": True}])
def test_gpu_ready_options_train_on_cpu(options, tmp_path, one_epoch_default):
    if "tensorboard_dir" in options:
        options = dict(options, tensorboard_dir=str(tmp_path / "tb"))
    config = tiny_config(epochs=1, **options)
    reference = one_epoch_default.history["loss"][0]
    if "strategy" in options:
        # Under a strategy, dropout and OOV replacement draw from per-replica random
        # streams (tf.random.Generator), so only the deterministic computation can
        # equal the default strategy's.
        config.model.dropout, config.model.history_oov_rate = 0.0, 0.0
        default = tiny_config(epochs=1)
        default.model.dropout, default.model.history_oov_rate = 0.0, 0.0
        reference = train(default, export=False, verbose=0).history["loss"][0]
    result = train(config, export=False, verbose=0)
    if "tensorboard_dir" in options:
        assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))
        assert isinstance(result.model.distribute_strategy, tf.distribute.MirroredStrategy)
        # One replica: the same computation as the default strategy.
        assert result.history["loss"][0] == pytest.approx(reference, rel=1e-4)
    else:
        assert result.model.query_tower.encoder.dtype_policy.name == "mixed_float16"
        assert result.model.query_embeddings(result.data.split.test.history[:2]).dtype == np.float32
        # float16 compute changes the numbers a little, not the training.
        assert result.history["loss"][0] == pytest.approx(reference, rel=0.05)
    assert result.metrics["sampled/hr@20"] > 0.3
    assert result.metrics["sampled/count"] == len(result.data.split.test)
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_evaluate_run_keeps_oov_history_items_oov(trained_run):
    """An OOV index in a history must reach the SavedModel as an unknown id (-> OOV),
    not as padding: queries through the run equal the in-memory model's."""
    from tfrec_proxy.evaluation import unknown_raw_id
    from tfrec_proxy.serving import load_run

    result, run_dir = trained_run
    run = load_run(run_dir)
    history = result.data.split.test.history[:4].copy()
    history[:, -3] = 1  # OOV index inside each history
    raw_of_index = np.concatenate([[-1, unknown_raw_id(run.vocab.ids)], result.data.vocab.ids])
    np.testing.assert_allclose(run.embed_padded(raw_of_index[history]),
                               result.model.query_embeddings(history), atol=1e-5)
    assert unknown_raw_id(np.array([0, 1, 3])) == 2 and unknown_raw_id(np.array([5])) == 0


def test_overall_metrics_drops_the_group_breakdowns_and_prefixes():
    from tfrec_proxy.evaluation import overall_metrics

    metrics = {"sampled/hr@5": 0.1, "full/hr@5": 0.2, "full/tail/hr@5": 0.3,
               "full/pop1/hr@5": 0.4, "full/freq9/ndcg@5": 0.5}
    assert overall_metrics(metrics, "cold/") == {
        "cold/sampled/hr@5": 0.1, "cold/full/hr@5": 0.2, "cold/full/tail/hr@5": 0.3}
    assert overall_metrics({}, "x/") == {}


def test_last_chunk_evaluation_and_early_stopping(trained_run):
    from tfrec_proxy.evaluation import SampledRankingCallback, evaluate_model

    result, _ = trained_run
    data = result.data
    last = data.examples("test", chunks="last")
    assert 0 < len(last) and last.last_chunk.all()
    metrics = evaluate_model(result.model, data, "test", full=False, chunks="last")
    assert metrics["sampled/count"] == len(last)
    callback = SampledRankingCallback(data, "validation", chunks="last")
    assert len(callback.examples) == len(data.examples("validation", chunks="last"))
    with pytest.raises(ValueError, match="Unknown eval_chunks 'first'"):
        train(tiny_config(eval_chunks="first"), export=False)
    with pytest.raises(ValueError, match="Unknown full_ranking_history 'gone'"):
        train(tiny_config(full_ranking_history="gone"), export=False)


def test_full_ranking_with_the_history_removed_by_hand(trained_run):
    """`history="removed"` (`--full-ranking-history removed`) ranks each test target
    against every real item except the user's other items; "kept" against all of
    them. Both against ranks counted in numpy from the model's score matrix."""
    from tfrec_proxy.evaluation import evaluate_model

    result, _ = trained_run
    data, model = result.data, result.model
    kept = evaluate_model(model, data, "test", ks=(5,), seed=3)
    removed = evaluate_model(model, data, "test", ks=(5,), seed=3, history="removed")
    examples = data.examples("test")
    scores = model.scorer.score_matrix(
        tf.constant(model.query_embeddings(examples.history)),
        tf.constant(model.item_embeddings(data.vocab.size))).numpy()
    ranks = {"kept": [], "removed": []}
    for row, (target, user) in enumerate(zip(examples.target, examples.user)):
        others = np.setdiff1d(np.arange(2, data.vocab.size), [target])
        seen = np.setdiff1d(data.split.user_items[user], [target])
        ranks["kept"].append(np.sum(scores[row, others] >= scores[row, target]))
        unseen = np.setdiff1d(others, seen)
        ranks["removed"].append(np.sum(scores[row, unseen] >= scores[row, target]))
    for name, metrics in (("kept", kept), ("removed", removed)):
        rank = np.asarray(ranks[name])
        assert metrics["full/hr@5"] == pytest.approx(np.mean(rank < 5), abs=1e-6)
        assert metrics["full/ndcg@5"] == pytest.approx(
            np.mean(np.where(rank < 5, 1.0 / np.log2(rank + 2.0), 0.0)), abs=1e-6)
    assert np.any(np.asarray(ranks["removed"]) < np.asarray(ranks["kept"]))  # not a no-op
    assert removed["sampled/hr@5"] == kept["sampled/hr@5"]  # sampled: the same either way
    with pytest.raises(ValueError, match="Unknown full-ranking history 'all'"):
        evaluate_model(model, data, "test", history="all")


def test_train_reports_the_full_ranking_history_its_config_asks_for():
    from tfrec_proxy.evaluation import evaluate_model

    result = train(tiny_config(epochs=1, full_ranking_history="removed"), export=False,
                   verbose=0)
    train_config = tiny_config().train
    options = dict(ks=train_config.eval_ks, num_negatives=train_config.num_negatives)
    removed = evaluate_model(result.model, result.data, "test", history="removed", **options)
    kept = evaluate_model(result.model, result.data, "test", history="kept", **options)
    assert result.metrics["full/mrr"] == pytest.approx(removed["full/mrr"], abs=1e-9)
    assert removed["full/mrr"] > kept["full/mrr"]  # fewer competitors: better ranks


def test_training_changes_with_the_seed_but_not_the_data():
    """The training seed and the data seed are separate settings."""
    first = train(tiny_config(epochs=1, seed=1), export=False, verbose=0)
    second = train(tiny_config(epochs=1, seed=2), export=False, verbose=0)
    np.testing.assert_array_equal(first.data.split.train.target, second.data.split.train.target)
    assert first.history["loss"] != second.history["loss"]


def test_small_catalogue_trains_with_fewer_negatives():
    config = tiny_config(epochs=1)
    config.data.synthetic.num_items = 30
    config.data.synthetic.num_clusters = 3
    with pytest.warns(UserWarning, match="fewer than num_negatives=99 eligible negative items"):
        result = train(config, export=False, verbose=0)
    assert np.isfinite(result.metrics["sampled/hr@20"])


def test_time_budget_stops_training_and_skips_later_phases():
    from tfrec_proxy.training import train

    config = tiny_config(epochs=50)
    config.train.weighting = "idw"
    config.train.time_budget_minutes = 1e-4  # 6 ms: stops after the first step
    result = train(config, export=False, verbose=0)
    phases = result.phases
    assert phases[0]["time_budget"] == "stopped" and phases[0]["epochs"] == 1
    assert all(p["epochs"] == 0 and p["time_budget"] == "skipped" for p in phases[1:])
    assert np.isfinite(result.metrics["full/ndcg@20"])
    with pytest.raises(ValueError, match="time_budget_minutes must be > 0"):
        config.train.time_budget_minutes = 0
        train(config, export=False, verbose=0)
