"""SASRec / RAM objectives pinned against numpy: sampled BCE, full softmax over the
catalogue, sampled softmax with logQ; and training with each through `fit`."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.objectives import FullSoftmax, SampledBCE, SampledSoftmax, build_objective
from tfrec_proxy.scoring import DotScorer

from conftest import tiny_config

RNG = np.random.default_rng(0)
V, D = 7, 3
ITEMS = RNG.normal(size=(V, D)).astype(np.float32)
QUERIES = RNG.normal(size=(4, D)).astype(np.float32)
TARGET = np.array([2, 5, 6, 2], np.int32)
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0], np.float32)


def _embed(ids):
    return tf.gather(tf.constant(ITEMS), ids)


def _softplus(x):
    return np.log1p(np.exp(x))


def test_sampled_bce_by_hand():
    negatives = np.array([[3], [5], [4], [6]], np.int32)  # row 1's negative is its target
    loss = SampledBCE(V)(tf.constant(QUERIES), tf.constant(TARGET), _embed, DotScorer(),
                         sample_weight=tf.constant(WEIGHTS), negatives=tf.constant(negatives))
    positive = (QUERIES * ITEMS[TARGET]).sum(1)
    negative = (QUERIES * ITEMS[negatives[:, 0]]).sum(1)
    per_row = _softplus(-positive) + np.where(negatives[:, 0] == TARGET, 0.0,
                                              _softplus(negative))
    np.testing.assert_allclose(loss.numpy(), (WEIGHTS * per_row).sum(), rtol=1e-5)


def test_full_softmax_by_hand():
    loss = FullSoftmax(V)(tf.constant(QUERIES), tf.constant(TARGET), _embed, DotScorer(),
                          sample_weight=tf.constant(WEIGHTS))
    scores = QUERIES @ ITEMS[2:].T  # padding and OOV columns are no candidates
    log_p = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    expected = -(WEIGHTS * log_p[np.arange(4), TARGET - 2]).sum()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_sampled_softmax_with_logq_by_hand():
    objective = SampledSoftmax(V, num_negatives=3, sampler="popularity")
    counts = np.array([0, 0, 5, 1, 1, 2, 1], np.float64)
    objective.set_probabilities(counts)
    q = counts / counts.sum()
    negatives = np.array([3, 2, 6], np.int32)
    loss = objective(tf.constant(QUERIES), tf.constant(TARGET), _embed, DotScorer(),
                     sample_weight=tf.constant(WEIGHTS), negatives=tf.constant(negatives))
    positive = (QUERIES * ITEMS[TARGET]).sum(1) - np.log(q[TARGET])
    negative = QUERIES @ ITEMS[negatives].T - np.log(q[negatives])[None]
    negative = np.where(negatives[None] == TARGET[:, None], -1e9, negative)
    logits = np.concatenate([positive[:, None], negative], 1)
    log_p = logits[:, 0] - np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(loss.numpy(), -(WEIGHTS * log_p).sum(), rtol=1e-5)


def test_popularity_negatives_follow_the_counts():
    objective = SampledSoftmax(V, num_negatives=4000, sampler="popularity")
    objective.set_probabilities(np.array([9, 9, 3, 1, 0, 0, 0]))
    tf.random.set_seed(0)
    drawn = tf.random.categorical(tf.math.log(objective.probabilities)[None], 4000)[0]
    share = np.mean(drawn.numpy() == 2)
    assert 0.72 < share < 0.78  # 3 / 4; padding and OOV are never drawn
    assert set(np.unique(drawn.numpy())) <= {2, 3}


def test_bad_objective_settings():
    with pytest.raises(ValueError, match="Unknown negative sampler 'random'"):
        SampledSoftmax(V, sampler="random")
    with pytest.raises(ValueError, match="Unknown objective 'hinge'"):
        build_objective("hinge", V, 5, "uniform", None, None)


@pytest.mark.parametrize("loss", ["bce", "full-softmax", "sampled-softmax"])
def test_training_with_each_objective_lowers_the_loss(loss):
    from tfrec_proxy.data import make_sequence_dataset
    from tfrec_proxy.training import train

    class InitialWeights(tf.keras.callbacks.Callback):
        weights = None

        def on_train_begin(self, logs=None):
            InitialWeights.weights = self.model.get_weights()

    config = tiny_config(epochs=3)
    config.model.loss, config.model.sampled_negatives = loss, 20
    config.train.learning_rate = 0.005
    result = train(config, export=False, verbose=0, callbacks=[InitialWeights()])
    # The loss of the same training batch, averaged over 20 draws of the sampled
    # negatives (one epoch's mean moves by +-10% with the draws alone).
    batch = next(iter(make_sequence_dataset(result.data.split.train_sequences, 64)))
    model = result.model

    def mean_loss():
        return np.mean([float(model.compute_loss(batch)) for _ in range(20)])

    trained = mean_loss()
    model.set_weights(InitialWeights.weights)
    assert trained < 0.97 * mean_loss()
    assert result.metrics["full/hr@20"] > 0


def test_margin_loss_by_hand():
    from tfrec_proxy.objectives import MarginLoss

    negatives = np.array([[3, 4], [5, 2], [4, 4], [6, 3]], np.int32)  # row 1 hits 5
    loss = MarginLoss(V, num_negatives=2, margin=0.5, lambda_dist=0.1)(
        tf.constant(QUERIES), tf.constant(TARGET), _embed, DotScorer(),
        sample_weight=tf.constant(WEIGHTS), negatives=tf.constant(negatives))
    d_pos = -(QUERIES * ITEMS[TARGET]).sum(1)
    d_neg = -np.einsum("bd,bnd->bn", QUERIES, ITEMS[negatives])
    hinge = np.maximum(0.5 + d_pos[:, None] - d_neg, 0.0)
    hinge = np.where(negatives == TARGET[:, None], 0.0, hinge)
    expected = (WEIGHTS * (hinge.sum(1) + 0.1 * d_pos)).sum()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
