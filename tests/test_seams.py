"""The seams methods plug into: registries, a non-dot scorer and a multi-vector query
tower served end to end, training phases with frozen layers and loss weights."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.config import ModelConfig, RunConfig
from tfrec_proxy.data import Vocabulary
from tfrec_proxy.export import export_run
from tfrec_proxy.layers.towers import ItemTower, QueryTower
from tfrec_proxy.models import BuildContext, assemble, build_model
from tfrec_proxy.registry import MODEL_KINDS, SCORERS, Registry
from tfrec_proxy.scoring import Scorer, build_scorer
from tfrec_proxy.serving import load_run

from conftest import tiny_config


@SCORERS.register("test_neg_l2")
@tf.keras.utils.register_keras_serializable(package="tfrec_proxy_tests")
class NegativeL2(Scorer):
    """Toy non-dot scorer: -||q - c||^2 (max over query vectors)."""

    def score_matrix(self, queries, candidates):
        queries = queries if queries.shape.rank == 3 else queries[:, None, :]
        distance = tf.reduce_sum(tf.square(queries[:, :, None, :] - candidates[None, None]), -1)
        return -tf.reduce_min(distance, axis=1)

    def score_candidates(self, queries, candidates):
        queries = queries if queries.shape.rank == 3 else queries[:, None, :]
        distance = tf.reduce_sum(tf.square(queries[:, :, None, :] - candidates[:, None]), -1)
        return -tf.reduce_min(distance, axis=1)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy_tests")
class LastAndMean(tf.keras.layers.Layer):
    """Toy multi-vector extraction: [last position, masked mean] -> [B, 2, d]."""

    def call(self, hidden, mask=None):
        weights = tf.cast(mask, hidden.dtype)[:, :, None]
        mean = tf.reduce_sum(hidden * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
        return tf.stack([hidden[:, -1], mean], axis=1)


@dataclasses.dataclass
class TwoVectorOptions:
    scale: float = 1.0


@MODEL_KINDS.register("test_two_vector", options=TwoVectorOptions)
def build_two_vector(config: ModelConfig, options: TwoVectorOptions,
                     context: BuildContext):
    from tfrec_proxy.layers.encoders import SelfAttentionEncoder
    encoder = SelfAttentionEncoder(context.vocab_size, config.embedding_dim, context.max_len,
                                   num_layers=1, num_heads=1, name="encoder")
    query = QueryTower(encoder, LastAndMean(), name="query_tower")
    candidates = ItemTower(context.vocab_size, config.item_hidden_units, name="candidate_tower")
    return assemble(config, context, query, candidates)


def _model_config(**overrides) -> ModelConfig:
    config = ModelConfig(embedding_dim=4, item_hidden_units=(4,), num_heads=1, num_layers=1)
    return dataclasses.replace(config, **overrides)


def _exported(tmp_path, model_config: ModelConfig, num_items: int = 60):
    vocab = Vocabulary.from_ids(np.arange(100, 100 + num_items))
    config = RunConfig(model=model_config)
    config.data.max_len = 5
    config.export.max_k = 10
    model = build_model(model_config, vocab.size, 5)
    run_dir = export_run(model, tmp_path / "run", vocab=vocab, config=config)
    return model, vocab, load_run(run_dir)


def test_registry_errors_and_options():
    registry = Registry("widget")
    registry.register("a", options=TwoVectorOptions)(lambda: None)
    with pytest.raises(ValueError, match=r"Unknown widget 'b'; expected one of \['a'\]"):
        registry.get("b")
    with pytest.raises(ValueError, match=r"config.x: unknown key\(s\) \['size'\]"):
        registry.get("a").parse_options({"size": 3}, "config.x")
    assert registry.get("a").parse_options({"scale": 2}, "config.x") == TwoVectorOptions(2.0)
    def other_builder():
        return None

    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(other_builder)
    with pytest.raises(ValueError, match=r"Unknown model kind 'nope'; expected one of \[.*"
                                         r"'two_tower'"):
        build_model(_model_config(kind="nope"), 10, 5)
    with pytest.raises(ValueError, match="'dot' takes no options"):
        build_scorer("dot", {"x": 1})
    with pytest.raises(ValueError, match=r"config.model.options: unknown key\(s\) \['depth'\]"):
        build_model(_model_config(kind="test_two_vector", options={"depth": 2}), 10, 5)


def _exact_top(scores: np.ndarray, ids: np.ndarray, k: int):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_non_dot_scorer_is_served_and_evaluated_as_trained(tmp_path):
    model, vocab, run = _exported(tmp_path, _model_config(scorer="test_neg_l2"))
    assert run.manifest["scorer"] == "test_neg_l2"
    histories = [[100, 101, 102], [130, 140], [159]]
    queries = run.embed(histories)
    items = run.candidate_embeddings
    exact = -((queries[:, None, :] - items[None]) ** 2).sum(-1)
    ids, scores = run.recommend(histories, k=10, index="brute_force")
    expected_ids, expected_scores = _exact_top(exact, vocab.ids, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    # ScaNN proposes by dot product; the returned scores are the exact re-score.
    scann_ids, scann_scores = run.recommend(histories, k=5, index="scann")
    position = {int(i): p for p, i in enumerate(vocab.ids)}
    rescored = np.take_along_axis(
        exact, np.vectorize(position.get)(scann_ids), axis=1)
    np.testing.assert_allclose(scann_scores, rescored, rtol=1e-5, atol=1e-5)
    # Evaluation of the run goes through the exported scorer, not a dot product.
    np.testing.assert_allclose(run.scorer.score_matrix(queries, items).numpy(), exact,
                               rtol=1e-5, atol=1e-5)


def test_multi_vector_queries_through_both_indexes(tmp_path):
    model, vocab, run = _exported(tmp_path, _model_config(kind="test_two_vector"))
    assert run.manifest["num_interests"] == 2 and run.manifest["query_shape"] == [2, 4]
    assert run.model_kind == "test_two_vector"
    histories = [[100, 101, 102], [130, 140], [159], [120, 121, 122, 123]]
    queries = run.embed(histories)
    assert queries.shape == (4, 2, 4)
    exact = np.einsum("bmd,cd->bmc", queries, run.candidate_embeddings).max(axis=1)
    expected_ids, expected_scores = _exact_top(exact, vocab.ids, 10)
    ids, scores = run.recommend(histories, k=10, index="brute_force")
    assert ids.shape == (4, 10)  # not [B, M, k]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    scann_ids, scann_scores = run.recommend(histories, k=10, index="scann")
    assert all(len(set(row)) == 10 for row in scann_ids.tolist())  # merged, de-duplicated
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(scann_ids, expected_ids)])
    assert recall >= 0.9, recall
    np.testing.assert_array_less(-1e-5, scann_scores[:, :-1] - scann_scores[:, 1:])


def test_exported_non_dot_run_loads_in_a_fresh_process(tmp_path):
    """The SavedModels carry the scorer: a process that never imported it serves it."""
    _, _, run = _exported(tmp_path, _model_config(scorer="test_neg_l2"))
    in_memory, _ = run.recommend([100, 101], k=5, index="brute_force")
    script = textwrap.dedent(f"""
        import json
        from tfrec_proxy.serving import load_run
        ids, _ = load_run({str(run.path)!r}).recommend([100, 101], k=5, index="brute_force")
        print(json.dumps(ids[0].tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == in_memory[0].tolist()


def test_phases_freeze_layers_and_set_loss_weights(tmp_path):
    from tfrec_proxy.training import Phase, restore_model, train

    weights_seen = []

    def weights(model, data):
        weights_seen.append(data.vocab.size)
        return np.linspace(0.5, 1.5, data.vocab.size).astype(np.float32)

    class Snapshot(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.before = [v.numpy().copy() for v in self.model.candidate_tower.weights]

    snapshot = Snapshot()
    config = tiny_config(epochs=1)
    result = train(config, output_dir=tmp_path, run_name="phased", verbose=0, phases=[
        Phase("pretrain"),
        Phase("calibrate", frozen=("candidate_tower",), item_loss_weights=weights,
              callbacks=[snapshot], early_stopping=False)])
    assert [{k: p[k] for k in ("name", "epochs")} for p in result.phases] == [
        {"name": "pretrain", "epochs": 1}, {"name": "calibrate", "epochs": 1}]
    assert all(p["seconds"] > 0 for p in result.phases)
    assert len(result.history["loss"]) == 2 and weights_seen == [result.data.vocab.size]
    after = [v.numpy() for v in result.model.candidate_tower.weights]
    for before, now in zip(snapshot.before, after):
        np.testing.assert_array_equal(before, now)  # frozen in the calibration phase
    assert all(layer.trainable for layer in (result.model.candidate_tower,))
    restored, _, _ = restore_model(result.run_dir)
    np.testing.assert_allclose(restored.item_loss_weights.numpy(),
                               np.linspace(0.5, 1.5, result.data.vocab.size), rtol=1e-6)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["phases"] == result.phases and len(metrics["history"]["loss"]) == 2
    with pytest.raises(ValueError, match="Cannot freeze 'item_tower'"):
        train(config, export=False, verbose=0, phases=[Phase(frozen=("item_tower",))])


def test_only_the_chief_writes_the_run(tmp_path, monkeypatch):
    from tfrec_proxy import training

    monkeypatch.setattr(training, "is_chief", lambda strategy: False)
    result = training.train(tiny_config(epochs=1), output_dir=tmp_path, run_name="worker",
                            verbose=0)
    assert result.run_dir is None and not (tmp_path / "worker").exists()
    assert not list(tmp_path.iterdir())


def test_is_chief_reads_the_cluster_role():
    from tfrec_proxy.training import is_chief

    class Resolver:
        def __init__(self, task_type, task_id, cluster):
            self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

        def cluster_spec(self):
            return tf.train.ClusterSpec(self._cluster)

    class Strategy:
        def __init__(self, resolver):
            self.cluster_resolver = resolver

    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief(Strategy(Resolver("worker", 0, workers)))
    assert not is_chief(Strategy(Resolver("worker", 1, workers)))
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert is_chief(Strategy(Resolver("chief", 0, with_chief)))
    assert not is_chief(Strategy(Resolver("worker", 0, with_chief)))
    assert is_chief(tf.distribute.get_strategy())


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy_tests")
class HourQueryTower(QueryTower):
    """Toy query tower with a context feature: the hour of the request shifts the
    user vector by a learnt per-hour embedding."""

    context_specs = {"hour": tf.TensorSpec([None], tf.int64)}

    def __init__(self, encoder, extraction, **kwargs):
        super().__init__(encoder, extraction, **kwargs)
        self.hour_embedding = tf.keras.layers.Embedding(24, encoder.dim)

    def call(self, features, training=None):
        user = super().call(features, training=training)
        hour = features.get("hour") if isinstance(features, dict) else None
        if hour is None:
            hour = tf.zeros(tf.shape(user)[:1], tf.int64)
        return user + self.hour_embedding(hour)


@MODEL_KINDS.register("test_hour")
def build_hour(config: ModelConfig, options: None, context: BuildContext):
    from tfrec_proxy.layers.encoders import SelfAttentionEncoder
    from tfrec_proxy.layers.extraction import SequenceExtraction
    encoder = SelfAttentionEncoder(context.vocab_size, config.embedding_dim, context.max_len,
                                   num_layers=1, num_heads=1, name="encoder")
    query = HourQueryTower(encoder, SequenceExtraction("last"), name="query_tower")
    candidates = ItemTower(context.vocab_size, config.item_hidden_units, name="candidate_tower")
    return assemble(config, context, query, candidates)


def test_query_context_features_reach_the_saved_models(tmp_path):
    model, vocab, run = _exported(tmp_path, _model_config(kind="test_hour"))
    assert run.manifest["query_features"] == ["history", "hour"]
    assert run.context_features == ["hour"]
    histories = [[100, 101], [100, 101]]
    hours = np.array([3, 17])
    queries = run.embed(histories, context={"hour": hours})
    expected = model.query_tower({"history": tf.constant([[0, 0, 0, 2, 3]] * 2),
                                  "hour": tf.constant(hours)}).numpy()
    np.testing.assert_allclose(queries, expected, atol=1e-5)
    assert not np.allclose(queries[0], queries[1])  # the hour changes the query
    ids, _ = run.recommend(histories, k=5, index="brute_force", context={"hour": hours})
    exact = queries @ run.candidate_embeddings.T
    np.testing.assert_array_equal(ids, _exact_top(exact, vocab.ids, 5)[0])
    with pytest.raises(ValueError, match=r"takes context features \['hour'\]; got \[\]"):
        run.recommend(histories, k=5)
    with pytest.raises(ValueError, match="one value per history"):
        run.recommend(histories, k=5, context={"hour": [1]})
