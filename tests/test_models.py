"""RetrievalModel: the loss pinned against tfrs.tasks.Retrieval, all-positions training
equal to per-prefix training, per-item loss weights, trained positions and OOV row."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import ModelConfig
from tfrec_proxy.models import build_model


def _config(**overrides) -> ModelConfig:
    config = ModelConfig(embedding_dim=8, item_hidden_units=(8, 8), num_heads=2,
                         dropout=0.0, history_oov_rate=0.0)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _probabilities(vocab_size: int, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(1, 50, size=vocab_size).astype(np.float64)
    return (counts / counts.sum()).astype(np.float32)


def test_compute_loss_equals_tfrs_retrieval_on_the_same_towers():
    vocab_size, probability = 30, _probabilities(30)
    model = build_model(_config(all_positions=False), vocab_size, 6, probability)
    rng = np.random.default_rng(1)
    history = rng.integers(2, vocab_size, size=(12, 6)).astype(np.int32)
    history[:4, :3] = 0  # some left padding
    target = rng.integers(2, vocab_size, size=12).astype(np.int32)
    target[5] = target[2]  # an accidental hit
    batch = {"history": tf.constant(history), "target": tf.constant(target)}
    ours = model.compute_loss(batch)
    queries = model.query_tower({"history": batch["history"]})
    candidates = model.candidate_tower({"item_id": batch["target"]})
    reference = tfrs.tasks.Retrieval(remove_accidental_hits=True)(
        queries, candidates, candidate_sampling_probability=tf.gather(probability, target),
        candidate_ids=batch["target"], compute_metrics=False, compute_batch_metrics=False)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)


@pytest.mark.parametrize("extraction, scorer", [
    ("last", "auto"), ("mean", "auto"), ("mur", "auto"), ("mur", "dot")])
def test_all_positions_loss_equals_the_per_prefix_loss(extraction, scorer):
    """One causal pass over whole sequences gives the per-prefix examples' loss, for
    every extraction (MUR: parametric attention over each prefix, eq. 4 or maxsim)."""
    vocab_size, max_len = 40, 7
    model = build_model(_config(extraction=extraction, num_interests=3, scorer=scorer),
                        vocab_size, max_len, _probabilities(vocab_size))
    rng = np.random.default_rng(2)
    lengths = [6, 3, 5]
    history = np.zeros((3, max_len), np.int32)
    targets = np.zeros((3, max_len), np.int32)
    prefixes, prefix_targets = [], []
    for row, n in enumerate(lengths):
        items = rng.integers(2, vocab_size, size=n + 1)
        history[row, max_len - n:] = items[:n]
        targets[row, max_len - n:] = items[1:]
        for t in range(1, n + 1):
            prefix = np.zeros(max_len, np.int32)
            prefix[max_len - t:] = items[:t]
            prefixes.append(prefix)
            prefix_targets.append(items[t])
    positions = model.query_tower.encode_positions({"history": tf.constant(history)})
    per_prefix = model.query_tower({"history": tf.constant(np.stack(prefixes))})
    np.testing.assert_allclose(tf.boolean_mask(positions, targets > 0).numpy(),
                               per_prefix.numpy(), atol=1e-5)
    sequence_loss = model.compute_loss({"history": tf.constant(history),
                                        "targets": tf.constant(targets)})
    prefix_loss = model.compute_loss({"history": tf.constant(np.stack(prefixes)),
                                      "target": tf.constant(np.array(prefix_targets, np.int32))})
    np.testing.assert_allclose(sequence_loss.numpy(), prefix_loss.numpy(), rtol=1e-5)


def test_item_loss_weights_scale_each_examples_loss():
    vocab_size = 20
    model = build_model(_config(all_positions=False, logq_correction=False), vocab_size, 4)
    batch = {"history": tf.constant([[0, 2, 3, 4], [0, 0, 5, 6]], tf.int32),
             "target": tf.constant([7, 8], tf.int32)}
    scores = model.scorer.score_matrix(model.query_tower({"history": batch["history"]}),
                                       model.candidate_tower({"item_id": batch["target"]}))
    log_softmax = tf.nn.log_softmax(scores, axis=1).numpy()
    weights = np.ones(vocab_size, np.float32)
    weights[7], weights[8] = 0.5, 3.0
    model.set_item_loss_weights(weights)
    expected = -(0.5 * log_softmax[0, 0] + 3.0 * log_softmax[1, 1])
    np.testing.assert_allclose(model.compute_loss(batch).numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(20,\), got \(3,\)"):
        model.set_item_loss_weights(np.ones(3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        model.set_item_loss_weights(-weights)


def test_every_served_position_and_the_oov_row_are_trained():
    """Training histories hold at most max_len - 3 items; the positions a served
    history of max_len items uses, and the OOV embedding, must all get gradients."""
    vocab_size, max_len = 50, 10
    model = build_model(_config(history_oov_rate=0.3), vocab_size, max_len)
    encoder = model.query_tower.encoder
    rng = np.random.default_rng(3)
    # Full-length training sequences: max_len - 3 inputs each (chunk of max_len items).
    history = np.zeros((16, max_len), np.int32)
    history[:, 3:] = rng.integers(2, vocab_size, size=(16, max_len - 3))
    targets = np.zeros_like(history)
    targets[:, 3:] = rng.integers(2, vocab_size, size=(16, max_len - 3))
    tf.keras.utils.set_random_seed(0)
    with tf.GradientTape() as tape:
        loss = model.compute_loss({"history": tf.constant(history),
                                   "targets": tf.constant(targets)}, training=True)
    position_table = encoder.position_embedding.embeddings
    item_table = encoder.item_embedding.embeddings
    position_grad, item_grad = tape.gradient(loss, [position_table, item_table])
    position_grad = tf.convert_to_tensor(position_grad).numpy()
    assert np.all(np.abs(position_grad).sum(axis=1) > 0), "an untrained position row"
    assert np.abs(tf.convert_to_tensor(item_grad).numpy()[1]).sum() > 0, "OOV row untrained"
    # A served history of max_len items only uses those trained rows.
    served = encoder.positions(tf.ones([1, max_len], tf.bool)).numpy()
    assert served.max() == position_table.shape[0] - 1 == max_len - 4


def test_all_positions_needs_a_causal_encoder():
    model = build_model(_config(extraction="mean", all_positions=False), 10, 5)
    with pytest.raises(ValueError, match="needs a causal encoder"):
        model.query_tower.encode_positions({"history": tf.zeros([1, 5], tf.int32)})


def test_mur_extraction_builds_m_vectors_and_the_eq4_scorer():
    from tfrec_proxy.layers.parametric_attention import (MultiInterestScorer,
                                                         ParametricAttention)
    from tfrec_proxy.scoring import DotScorer

    model = build_model(_config(extraction="mur", num_interests=4), 12, 5)
    assert isinstance(model.query_tower.extraction, ParametricAttention)
    assert isinstance(model.scorer, MultiInterestScorer)
    assert model.query_tower({"history": tf.constant([[0, 2, 3, 4, 5]])}).shape == (1, 4, 8)
    assert isinstance(build_model(_config(extraction="mur", scorer="dot"), 12, 5).scorer,
                      DotScorer)  # TFRS maxsim stays an option
    assert isinstance(build_model(_config(), 12, 5).scorer, DotScorer)


@pytest.mark.parametrize("overrides, message", [
    ({"extraction": "mur", "num_interests": 0}, r"num_interests \(M\) must be an integer >= 1, got 0"),
    ({"extraction": "capsule"}, "Unknown extraction 'capsule'; expected one of"),
    ({"loss": "hinge"}, "Unknown loss 'hinge'; expected one of"),
    ({"item_norm": "always"}, "Unknown item_norm 'always'; expected one of"),
    ({"focal_gamma": -1.0}, "focal_gamma must be >= 0, got -1.0"),
    ({"qmargin_max": 0.0}, "qmargin_max must be > 0, got 0.0"),
])
def test_bad_model_settings_fail_before_building(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(_config(**overrides), 12, 5)


def test_qmargin_subtracts_the_positive_margin_before_the_softmax():
    vocab_size = 20
    probability = _probabilities(vocab_size)
    model = build_model(_config(all_positions=False, loss="qmargin", qmargin_max=0.5,
                                logq_correction=False), vocab_size, 4, probability)
    raw = probability.astype(np.float64) ** -0.25
    np.testing.assert_allclose(model.item_margins.numpy(), 0.5 * raw / raw.max(), rtol=1e-6)
    batch = {"history": tf.constant([[0, 2, 3, 4], [0, 0, 5, 6]], tf.int32),
             "target": tf.constant([7, 8], tf.int32)}
    scores = model.scorer.score_matrix(model.query_tower({"history": batch["history"]}),
                                       model.candidate_tower({"item_id": batch["target"]})
                                       ).numpy().astype(np.float64)
    margins = model.item_margins.numpy()[[7, 8]]
    scores[[0, 1], [0, 1]] -= margins
    log_softmax = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    expected = -(log_softmax[0, 0] + log_softmax[1, 1])
    np.testing.assert_allclose(model.compute_loss(batch).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "posthoc"])
def test_item_norm_normalises_item_vectors(mode):
    model = build_model(_config(item_norm=mode), 12, 5)
    served = model.item_embeddings()
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    trained = model.candidate_tower({"item_id": tf.range(12)}, training=True).numpy()
    norms = np.linalg.norm(trained, axis=1)
    if mode == "train":
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:  # post hoc: trained unnormalised, normalised only at inference
        assert not np.allclose(norms, 1.0)
        np.testing.assert_allclose(served, trained / norms[:, None], rtol=1e-5, atol=1e-6)
