"""Layers: shapes, masking, hand-computed extraction, Keras serialisation round trips."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.layers import (ItemTower, QueryTower, SelfAttentionEncoder,
                                SequenceExtraction, TransformerBlock)
from tfrec_proxy.layers.item_norm import ItemNormalization
from tfrec_proxy.layers.parametric_attention import ParametricAttention
from tfrec_proxy.scoring import DotScorer, get_scorer

from conftest import assert_round_trip, assert_runs_in_saved_model

HISTORY = np.array([[0, 0, 5, 6, 7], [3, 4, 5, 6, 2]], np.int32)


def _query_tower(max_len: int, extraction: str = "last") -> QueryTower:
    return QueryTower(SelfAttentionEncoder(10, dim=8, max_len=max_len, num_heads=2),
                      SequenceExtraction(extraction))


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: TransformerBlock(8, num_heads=2, causal=True), (tf.random.normal([2, 5, 8]),)),
    (lambda: SelfAttentionEncoder(10, dim=8, max_len=5, num_heads=2), (tf.constant(HISTORY),)),
    (lambda: SelfAttentionEncoder(10, dim=8, max_len=5, num_heads=2, causal=True,
                                  num_positions=3, oov_rate=0.1), (tf.constant(HISTORY),)),
    (lambda: SequenceExtraction("mean"), (tf.random.normal([2, 5, 8]),)),
    (lambda: _query_tower(max_len=5, extraction="mean"), (tf.constant(HISTORY),)),
    (lambda: ItemTower(10, (8, 4)), ({"item_id": tf.constant([2, 3, 9])},)),
    (lambda: DotScorer(), (tf.random.normal([2, 4]), tf.random.normal([3, 4]))),
    (lambda: ItemNormalization(ItemTower(10, (8, 4)), "train"),
     ({"item_id": tf.constant([2, 3, 9])},)),
])
def test_serialisation_round_trip(make_layer, inputs):
    assert_round_trip(make_layer(), *inputs)


def test_query_tower_ignores_padding():
    tower = _query_tower(max_len=7)
    short = tower(tf.constant([[0, 0, 5, 6, 7]]), training=False)
    long = tower(tf.constant([[0, 0, 0, 0, 5, 6, 7]]), training=False)
    assert short.shape == (1, 8) and short.dtype == tf.float32
    np.testing.assert_allclose(short.numpy(), long.numpy(), atol=1e-5)
    other = tower(tf.constant([[0, 0, 5, 6, 8]]), training=False)
    assert not np.allclose(short.numpy(), other.numpy())


def test_extraction_by_hand():
    hidden = tf.constant([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    mask = tf.constant([[False, True, True]])
    np.testing.assert_allclose(SequenceExtraction("last")(hidden).numpy(), [[5.0, 6.0]])
    np.testing.assert_allclose(SequenceExtraction("mean")(hidden, mask=mask).numpy(), [[4.0, 5.0]])
    with pytest.raises(ValueError, match="Unknown extraction mode 'first'"):
        SequenceExtraction("first")


def test_item_tower_shapes_and_errors():
    tower = ItemTower(10, (16, 16))
    assert tower({"item_id": tf.constant([2, 3])}).shape == (2, 16)
    with pytest.raises(KeyError, match="item_id"):
        tower({"id": tf.constant([2])})
    with pytest.raises(ValueError, match="hidden_units"):
        ItemTower(10, ())
    with pytest.raises(ValueError, match="vocab_size must be >= 3"):
        SelfAttentionEncoder(2)


def test_dot_scorer_by_hand():
    queries = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    candidates = tf.constant([[1.0, 1.0], [2.0, -1.0], [0.0, 0.5]])
    np.testing.assert_allclose(DotScorer().score_matrix(queries, candidates).numpy(),
                               [[1.0, 2.0, 0.0], [2.0, -2.0, 1.0]])
    per_row = tf.constant([[[1.0, 1.0], [2.0, -1.0]], [[0.0, 0.5], [1.0, 1.0]]])
    np.testing.assert_allclose(DotScorer().score_candidates(queries, per_row).numpy(),
                               [[1.0, 2.0], [1.0, 2.0]])
    # Two query vectors per user: the score is the best of the two (max-sim).
    multi = tf.constant([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(DotScorer().score_matrix(multi, candidates).numpy(),
                               [[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(DotScorer().score_candidates(multi, per_row[:1]).numpy(),
                               [[1.0, 2.0]])
    with pytest.raises(ValueError, match="Unknown scorer 'cosine'"):
        get_scorer("cosine")


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: SelfAttentionEncoder(10, dim=8, max_len=5, num_heads=2, causal=True),
     (tf.constant(HISTORY),)),
    (lambda: _query_tower(max_len=5), ({"history": tf.constant(HISTORY)},)),
    (lambda: ItemTower(10, (8, 4)), ({"item_id": tf.constant([2, 3, 9])},)),
    (lambda: DotScorer(), (tf.random.normal([2, 4]), tf.random.normal([3, 4]))),
    (lambda: ItemNormalization(ItemTower(10, (8, 4)), "posthoc"),
     ({"item_id": tf.constant([2, 3, 9])},)),
    (lambda: QueryTower(SelfAttentionEncoder(10, dim=8, max_len=5, num_heads=2, causal=True),
                        ParametricAttention(3)), ({"history": tf.constant(HISTORY)},)),
])
def test_runs_inside_a_saved_model(make_layer, inputs, tmp_path):
    assert_runs_in_saved_model(make_layer(), inputs, tmp_path)


def test_forward_positions_are_clamped_to_the_trained_table():
    encoder = SelfAttentionEncoder(10, dim=4, max_len=6, num_heads=1, num_positions=3)
    mask = tf.constant([[False, False, True, True, True, True], [True] * 6])
    np.testing.assert_array_equal(encoder.positions(mask).numpy(),
                                  [[0, 0, 0, 1, 2, 2], [0, 1, 2, 2, 2, 2]])
    with pytest.raises(ValueError, match=r"num_positions must be in \[1, max_len=6\], got 7"):
        SelfAttentionEncoder(10, max_len=6, num_positions=7)
    with pytest.raises(ValueError, match=r"oov_rate must be in \[0, 1\), got 1.0"):
        SelfAttentionEncoder(10, max_len=6, oov_rate=1.0)


def test_prefix_outputs_equal_each_prefix_by_hand():
    """Causal prefix outputs of the mean and MUR extractions: column j = the layer on
    columns <= j (padding masked)."""
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[False, True, True, True], [True, True, True, True]])
    mean = SequenceExtraction("mean").prefix_outputs(tf.constant(hidden), tf.constant(mask))
    mur = ParametricAttention(2)
    mur.build(tf.TensorShape([2, 4, 3]))
    prefixes = mur.prefix_outputs(tf.constant(hidden), tf.constant(mask)).numpy()
    queries = mur.queries.numpy()
    for b in range(2):
        for j in range(4):
            real = [i for i in range(j + 1) if mask[b, i]]
            if not real:
                continue
            np.testing.assert_allclose(mean.numpy()[b, j], hidden[b, real].mean(0), rtol=1e-5)
            logits = queries @ hidden[b, real].T  # [M, n]
            weights = np.exp(logits - logits.max(1, keepdims=True))
            weights /= weights.sum(1, keepdims=True)
            np.testing.assert_allclose(prefixes[b, j], weights @ hidden[b, real], rtol=1e-5,
                                       atol=1e-6)
