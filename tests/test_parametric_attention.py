"""MUR layers (IDW §3.1): parametric attention and the eq. 4 scorer, against numpy."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.parametric_attention import MultiInterestScorer, ParametricAttention
from tfrec_proxy.scoring import build_scorer

from conftest import assert_round_trip, assert_runs_in_saved_model


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_parametric_attention_by_hand_with_padding_masked():
    layer = ParametricAttention(num_interests=2)
    hidden = np.array([[[9.0, 9.0], [1.0, 0.0], [0.0, 2.0]]], np.float32)  # pos 0 = pad
    mask = np.array([[False, True, True]])
    layer.build(tf.TensorShape([1, 3, 2]))
    layer.queries.assign([[1.0, 0.0], [0.0, 1.0]])
    out = layer(tf.constant(hidden), mask=tf.constant(mask)).numpy()
    # q1 . h = [1, 0] on the real positions, q2 . h = [0, 2].
    w1, w2 = _softmax(np.array([1.0, 0.0]), 0), _softmax(np.array([0.0, 2.0]), 0)
    real = hidden[0, 1:]
    np.testing.assert_allclose(out[0], np.stack([w1 @ real, w2 @ real]), rtol=1e-6)
    # More left padding changes nothing.
    padded = np.concatenate([np.zeros((1, 2, 2), np.float32), hidden], axis=1)
    again = layer(tf.constant(padded), mask=tf.constant([[False, False] + mask[0].tolist()]))
    np.testing.assert_allclose(again.numpy(), out, rtol=1e-6)
    with pytest.raises(ValueError, match="num_interests \\(M\\) must be an integer >= 1, got 0"):
        ParametricAttention(num_interests=0)


def test_eq4_scorer_against_numpy():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(3, 4, 5)).astype(np.float32)  # B=3, M=4, d=5
    items = rng.normal(size=(7, 5)).astype(np.float32)
    per_interest = np.einsum("bmd,cd->bmc", queries, items)
    expected = (_softmax(per_interest, axis=1) * per_interest).sum(axis=1)
    scorer = MultiInterestScorer()
    np.testing.assert_allclose(scorer.score_matrix(queries, items).numpy(), expected,
                               rtol=1e-5)
    own = items[rng.integers(0, 7, size=(3, 2))]  # [B, K=2, d]
    per_row = np.einsum("bmd,bkd->bmk", queries, own)
    np.testing.assert_allclose(scorer.score_candidates(queries, own).numpy(),
                               (_softmax(per_row, axis=1) * per_row).sum(axis=1), rtol=1e-5)
    # Two interests by hand: scores 1 and 3 -> weights e/(e+e^3), e^3/(e+e^3).
    manual = scorer.score_matrix(tf.constant([[[1.0], [3.0]]]), tf.constant([[1.0]])).numpy()
    w = np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()
    np.testing.assert_allclose(manual, [[w @ [1.0, 3.0]]], rtol=1e-6)
    assert isinstance(build_scorer("mur"), MultiInterestScorer)


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: ParametricAttention(3), (tf.random.normal([2, 4, 6]),)),
    (lambda: MultiInterestScorer(), (tf.random.normal([2, 3, 6]), tf.random.normal([5, 6]))),
])
def test_round_trip_and_saved_model(make_layer, inputs, tmp_path):
    layer = make_layer()
    assert_round_trip(layer, *inputs)
    assert_runs_in_saved_model(layer, inputs, tmp_path, atol=0)


def test_eq4_is_served_through_both_indexes(tmp_path):
    """A 2-vector query tower with the eq. 4 scorer: brute force is exact eq. 4 over the
    catalogue; ScaNN's merged per-interest candidates, re-scored, agree with it."""
    from test_seams import _exact_top, _exported, _model_config

    _, vocab, run = _exported(tmp_path, _model_config(kind="test_two_vector", scorer="mur"))
    assert run.manifest["scorer"] == "mur" and run.manifest["num_interests"] == 2
    histories = [[100 + i, 110 + 2 * i, 130 + i] for i in range(12)]
    queries = run.embed(histories)
    per_interest = np.einsum("bmd,cd->bmc", queries, run.candidate_embeddings)
    exact = (_softmax(per_interest, axis=1) * per_interest).sum(axis=1)
    expected_ids, expected_scores = _exact_top(exact, vocab.ids, 10)
    ids, scores = run.recommend(histories, k=10, index="brute_force")
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    scann_ids, _ = run.recommend(histories, k=10, index="scann")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(scann_ids, expected_ids)])
    assert recall >= 0.9, recall


def test_eq4_gradient_matches_autodiff_of_the_formula():
    from tfrec_proxy.layers.parametric_attention import eq4_combine

    scores = tf.constant(np.random.default_rng(3).normal(size=(4, 6, 5)) * 3, tf.float64)
    upstream = tf.constant(np.random.default_rng(4).normal(size=(4, 6)), tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(scores)
        ours = eq4_combine(*tf.unstack(scores, axis=-1))
        reference = tf.reduce_sum(tf.nn.softmax(scores, axis=-1) * scores, axis=-1)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(ours, scores, upstream).numpy(),
                               tape.gradient(reference, scores, upstream).numpy(), rtol=1e-10)


def test_one_interest_is_the_dot_product():
    queries, items = tf.random.normal([3, 1, 4]), tf.random.normal([5, 4])
    scorer = MultiInterestScorer()
    np.testing.assert_allclose(scorer.score_matrix(queries, items).numpy(),
                               tf.matmul(queries[:, 0], items, transpose_b=True).numpy(),
                               rtol=1e-6)
