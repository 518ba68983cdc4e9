"""PIR proxy-based item encoder (PIR eqs. 11-18): maths pinned in numpy, the simplex
property, the top-K bias, the content-only and attribute-free modes, shapes,
serialisation and parameter counts."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.layers import ItemTower, SelfAttentionEncoder
from tfrec_proxy.layers.pir import ProxyItemEncoder

from conftest import assert_round_trip, assert_runs_in_saved_model

V, D, N_PROXY, D_A, D_C = 12, 6, 4, 5, 3


def _leaky(x):
    return np.where(x > 0, x, 0.3 * x)  # Keras LeakyReLU's default slope


def _encoder(k=3, attribute_dim=D_A, context_dim=D_C, seed=0):
    rng = np.random.default_rng(seed)
    encoder = ProxyItemEncoder(V, D, num_proxies=N_PROXY, frequent_bias_k=k,
                               attribute_dim=attribute_dim, context_dim=context_dim)
    encoder.set_item_features(
        rng.normal(size=(V, attribute_dim)) if attribute_dim else None,
        rng.normal(size=(V, context_dim)) if context_dim else None)
    counts = np.zeros(V)
    counts[2:] = [9, 1, 7, 0, 3, 8, 2, 2, 5, 4]  # top 3: indices 2, 7, 4
    encoder.set_frequent_items(counts)
    encoder({"item_id": tf.constant([2])})
    for weight in encoder.trainable_weights:  # non-zero biases, so every term shows
        weight.assign(rng.normal(size=weight.shape) * 0.5)
    return encoder


def _dense(encoder, name):
    layer = getattr(encoder, name)
    return layer.kernel.numpy(), layer.bias.numpy()


def _by_hand(encoder, ids):
    """Eqs. 11-18 in numpy, from the encoder's own weights and tables."""
    f = encoder.attribute_table.numpy()[ids]
    c = encoder.context_table.numpy()[ids]
    w1, b1 = _dense(encoder, "_phi_hidden")
    w2, b2 = _dense(encoder, "_phi_out")
    logits = _leaky(np.concatenate([f, c], 1) @ w1 + b1) @ w2 + b2  # eqs. 11-12
    rows = encoder.bias_index.numpy()[ids]
    bias = encoder.frequent_bias.numpy()
    logits = logits + np.where((rows < encoder.frequent_bias_k)[:, None],
                               bias[np.minimum(rows, encoder.frequent_bias_k - 1)], 0.0)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)  # eq. 13
    pir = weights @ encoder.proxies.numpy()  # eq. 14
    wa, ba = _dense(encoder, "_attribute_layer")
    f_prime = _leaky(f @ wa + ba)  # eq. 15
    wac, bac = _dense(encoder, "_context_layer")
    z = _leaky(np.concatenate([f_prime, c], 1) @ wac + bac)  # eq. 16
    wi, bi = _dense(encoder, "_item_layer")
    return weights, np.concatenate([pir, z], 1) @ wi + bi  # eq. 17


def test_outputs_match_the_equations_by_hand():
    encoder = _encoder()
    ids = np.arange(2, V)
    weights, vectors = _by_hand(encoder, ids)
    np.testing.assert_allclose(encoder.proxy_weights({"item_id": tf.constant(ids)}).numpy(),
                               weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder({"item_id": tf.constant(ids)}).numpy(), vectors,
                               rtol=1e-5, atol=1e-5)


def test_proxy_representation_lies_in_the_simplex_of_the_proxies():
    encoder = _encoder()
    weights = encoder.proxy_weights({"item_id": tf.range(V)}).numpy()
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    # Convex hull: the representation is the weights' combination of the proxies, and
    # recovering the weights from it (least squares, proxies linearly independent)
    # gives back a point of the simplex.
    proxies = encoder.proxies.numpy()
    representation = weights @ proxies
    recovered = np.linalg.lstsq(proxies.T, representation.T, rcond=None)[0].T
    np.testing.assert_allclose(recovered, weights, atol=1e-5)


def test_frequent_bias_only_on_the_top_k_items():
    encoder = _encoder(k=3)
    np.testing.assert_array_equal(np.flatnonzero(encoder.bias_index.numpy() < 3), [2, 4, 7])
    np.testing.assert_array_equal(encoder.bias_index.numpy()[[2, 7, 4]], [0, 1, 2])
    ids = tf.range(V)
    with_bias = encoder.proxy_logits({"item_id": ids}).numpy()
    encoder.frequent_bias.assign(tf.zeros_like(encoder.frequent_bias))
    without = encoder.proxy_logits({"item_id": ids}).numpy()
    changed = np.flatnonzero(np.abs(with_bias - without).max(1) > 1e-7)
    np.testing.assert_array_equal(changed, [2, 4, 7])


def test_frequent_bias_starts_at_zero_and_skips_unseen_items():
    encoder = ProxyItemEncoder(V, D, num_proxies=N_PROXY, frequent_bias_k=20, attribute_dim=2)
    counts = np.zeros(V)
    counts[[3, 5]] = [4, 9]
    np.testing.assert_array_equal(encoder.set_frequent_items(counts), [5, 3])
    assert encoder.frequent_bias_k == V - 2  # K capped at the real items
    assert not np.any(encoder.frequent_bias.numpy())


def test_content_only_items_with_equal_attributes_are_equal():
    encoder = _encoder(k=0, context_dim=0)
    assert not hasattr(encoder, "frequent_bias")
    table = encoder.attribute_table.numpy()
    table[5] = table[2]
    encoder.attribute_table.assign(table)
    vectors = encoder({"item_id": tf.constant([2, 5, 6])}).numpy()
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[2])


def test_without_attributes_the_weights_come_from_the_bias_alone():
    encoder = _encoder(k=3, attribute_dim=0, context_dim=0)
    weights = encoder.proxy_weights({"item_id": tf.range(V)}).numpy()
    base = encoder.proxy_logit_bias.numpy()
    logits = base + np.where((encoder.bias_index.numpy() < 3)[:, None],
                             encoder.frequent_bias.numpy()[
                                 np.minimum(encoder.bias_index.numpy(), 2)], 0.0)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    vectors = encoder({"item_id": tf.range(V)}).numpy()
    np.testing.assert_allclose(vectors, (expected @ encoder.proxies.numpy())
                               @ encoder._item_layer.kernel.numpy()
                               + encoder._item_layer.bias.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs frequent_bias_k > 0"):
        ProxyItemEncoder(V, D, frequent_bias_k=0)


def test_shapes_of_any_rank_and_attribute_overrides():
    encoder = _encoder()
    assert encoder({"item_id": tf.constant([[2, 3, 0], [4, 5, 6]])}).shape == (2, 3, D)
    # An item outside the vocabulary (OOV index, no bias) given another item's
    # features gets that item's vector when that item has no bias row.
    features = {"item_id": tf.constant([1]),
                "attributes": encoder.attribute_table.numpy()[[3]],
                "context": encoder.context_table.numpy()[[3]]}
    np.testing.assert_allclose(encoder(features).numpy(),
                               encoder({"item_id": tf.constant([3])}).numpy(), rtol=1e-6)


def test_bad_tables_are_clear_errors():
    encoder = ProxyItemEncoder(V, D, num_proxies=N_PROXY, attribute_dim=2)
    with pytest.raises(ValueError, match=r"attributes must have shape \(12, 2\)"):
        encoder.set_item_features(np.zeros((V, 3)))
    with pytest.raises(ValueError, match="NaN"):
        encoder.set_item_features(np.full((V, 2), np.nan))
    with pytest.raises(ValueError, match="num_proxies must be an integer >= 1"):
        ProxyItemEncoder(V, D, num_proxies=0, attribute_dim=2)


def test_serialisation_and_saved_model(tmp_path):
    encoder = _encoder()
    inputs = ({"item_id": tf.constant([2, 3, 9])},)
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(encoder))
    assert clone.get_config() == encoder.get_config()
    assert_round_trip(encoder, *inputs)
    assert_runs_in_saved_model(encoder, inputs, tmp_path)


def test_parameters_at_100k_items_are_at_most_half_the_id_tower():
    """|I| = 100k, d = 64, n_proxy = 32, K = 1000 (18 genre-like attributes)."""
    vocab = 100_002
    pir = ProxyItemEncoder(vocab, 64, num_proxies=32, frequent_bias_k=1000, attribute_dim=18)
    pir({"item_id": tf.constant([2])})
    ids = ItemTower(vocab, (64, 64))
    ids({"item_id": tf.constant([2])})

    def count(layer):
        return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)

    assert count(ids) == vocab * 64 + 2 * (64 * 64 + 64)  # table, hidden and output layers
    assert count(pir) <= 0.5 * count(ids)
    assert count(pir) < 0.02 * count(ids)  # in fact ~1%: K x n_proxy dominates


def test_shared_as_the_history_encoder():
    encoder = _encoder()
    sequence = SelfAttentionEncoder(V, dim=D, max_len=4, num_heads=2, item_encoder=encoder)
    assert sequence.item_embedding is None
    history = tf.constant([[0, 2, 3, 4]])
    with tf.GradientTape() as tape:
        hidden = sequence(history)
        loss = tf.reduce_sum(hidden ** 2)
    gradient = tape.gradient(loss, encoder.proxies)
    assert hidden.shape == (1, 4, D) and gradient is not None
    assert np.abs(gradient.numpy()).sum() > 0
    assert_round_trip(sequence, history)
