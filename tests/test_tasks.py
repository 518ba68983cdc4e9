"""BatchSoftmax: pinned against a numpy computation and against tfrs.tasks.Retrieval."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.scoring import DotScorer
from tfrec_proxy.tasks import BatchSoftmax


def _numpy_loss(scores, ids, probability, weights):
    """-sum_i w_i log softmax_i(s_i - log p)[i], accidental hits masked."""
    logits = scores - np.log(probability)[None, :]
    total = 0.0
    for i in range(len(ids)):
        row = logits[i].copy()
        row[(ids == ids[i]) & (np.arange(len(ids)) != i)] = -np.inf
        total += weights[i] * -(row[i] - np.log(np.sum(np.exp(row[np.isfinite(row)]))))
    return total


def test_matches_hand_computation_with_logq_hits_and_weights():
    scores = np.array([[2.0, 1.0, 0.5], [0.1, 1.5, 0.3], [0.7, 0.2, 1.0]], np.float32)
    ids = np.array([4, 7, 4])  # rows 0 and 2 share an item: accidental hits
    probability = np.array([0.5, 0.25, 0.5], np.float32)
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    loss = BatchSoftmax()(tf.constant(scores), candidate_ids=tf.constant(ids),
                          candidate_sampling_probability=tf.constant(probability),
                          sample_weight=tf.constant(weights))
    np.testing.assert_allclose(loss.numpy(), _numpy_loss(scores, ids, probability, weights),
                               rtol=1e-5)


def test_two_by_two_by_hand():
    # Equal probabilities shift every logit by log 2, which cancels: each row's loss is
    # log(1 + e^-1) = 0.3132617, the batch sum 0.6265234.
    loss = BatchSoftmax()(tf.constant([[1.0, 0.0], [0.0, 1.0]]), candidate_ids=tf.constant([2, 3]),
                          candidate_sampling_probability=tf.constant([0.5, 0.5]))
    np.testing.assert_allclose(loss.numpy(), 0.6265234, rtol=1e-6)
    # Same ids: the other column is an accidental hit, so each row's loss is 0.
    loss = BatchSoftmax()(tf.constant([[1.0, 0.0], [0.0, 1.0]]), candidate_ids=tf.constant([2, 2]))
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-6)


def test_equals_tfrs_retrieval_with_dot_scorer():
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(16, 8)), tf.float32)
    candidates = tf.constant(rng.normal(size=(16, 8)), tf.float32)
    ids = tf.constant(rng.integers(0, 6, size=16))
    probability = tf.constant(rng.uniform(0.01, 0.3, size=16), tf.float32)
    weights = tf.constant(rng.uniform(0.5, 2.0, size=16), tf.float32)
    ours = BatchSoftmax(temperature=0.5)(
        DotScorer().score_matrix(queries, candidates), candidate_ids=ids,
        candidate_sampling_probability=probability, sample_weight=weights)
    reference = tfrs.tasks.Retrieval(remove_accidental_hits=True, temperature=0.5)(
        queries, candidates, sample_weight=weights,
        candidate_sampling_probability=probability, candidate_ids=ids,
        compute_metrics=False, compute_batch_metrics=False)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6)


def test_accidental_hits_need_ids_and_temperature_is_positive():
    with pytest.raises(ValueError, match="candidate_ids"):
        BatchSoftmax()(tf.zeros([2, 2]))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        BatchSoftmax(temperature=0)


def test_round_trip_config():
    layer = BatchSoftmax(remove_accidental_hits=False, temperature=0.2)
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(clone, BatchSoftmax)
    assert clone.get_config() == layer.get_config()


def test_logq_correction_is_not_clipped_for_rare_items():
    """TFRS clips p at 1e-6, which flattens the correction of items rarer than that
    (any tail item once a catalogue has > 1M training targets); ours does not."""
    scores = np.array([[1.0, 0.5, 0.2], [0.3, 1.2, 0.1], [0.0, 0.4, 0.9]], np.float32)
    ids = np.array([2, 3, 4])
    probability = np.array([1e-3, 1e-8, 1e-9], np.float32)
    ours = BatchSoftmax()(tf.constant(scores), candidate_ids=tf.constant(ids),
                          candidate_sampling_probability=tf.constant(probability))
    np.testing.assert_allclose(ours.numpy(),
                               _numpy_loss(scores, ids, probability, np.ones(3)), rtol=1e-5)
    clipped = tfrs.tasks.Retrieval()(
        tf.eye(3), tf.constant(scores).numpy().T @ np.eye(3, dtype=np.float32),
        candidate_sampling_probability=tf.constant(probability),
        candidate_ids=tf.constant(ids), compute_metrics=False, compute_batch_metrics=False)
    flattened = _numpy_loss(scores, ids, np.maximum(probability, 1e-6), np.ones(3))
    np.testing.assert_allclose(clipped.numpy(), flattened, rtol=1e-5)
    assert abs(ours.numpy() - clipped.numpy()) > 1.0


def test_focal_loss_by_hand():
    """-(1 - p)^gamma log p per row (p the corrected softmax at the positive), weighted."""
    scores = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    probability = np.array([0.5, 0.2, 0.3], np.float32)
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    corrected = scores.astype(np.float64) - np.log(probability)[None, :]
    log_p = np.diag(corrected - np.log(np.exp(corrected).sum(axis=1, keepdims=True)))
    gamma = 2.0
    expected = np.sum(weights * -(1 - np.exp(log_p)) ** gamma * log_p)
    task = BatchSoftmax(remove_accidental_hits=False, focal_gamma=gamma)
    got = task(tf.constant(scores), candidate_sampling_probability=tf.constant(probability),
               sample_weight=tf.constant(weights))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    plain = BatchSoftmax(remove_accidental_hits=False)(
        tf.constant(scores), candidate_sampling_probability=tf.constant(probability),
        sample_weight=tf.constant(weights))
    zero = BatchSoftmax(remove_accidental_hits=False, focal_gamma=0.0)(
        tf.constant(scores), candidate_sampling_probability=tf.constant(probability),
        sample_weight=tf.constant(weights))
    np.testing.assert_allclose(zero.numpy(), plain.numpy(), rtol=1e-5)  # gamma 0 = softmax
    with pytest.raises(ValueError, match="focal_gamma must be >= 0, got -1"):
        BatchSoftmax(focal_gamma=-1)
    clone = BatchSoftmax.from_config(task.get_config())
    assert clone.focal_gamma == gamma


def test_positive_margin_by_hand():
    scores = np.array([[2.0, 0.5], [0.0, 1.0]], np.float32)
    margin = np.array([0.3, 0.7], np.float32)
    shifted = scores.astype(np.float64) - np.diag(margin)
    expected = -np.sum(np.diag(shifted - np.log(np.exp(shifted).sum(1, keepdims=True))))
    got = BatchSoftmax(remove_accidental_hits=False)(tf.constant(scores),
                                                     positive_margin=tf.constant(margin))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
