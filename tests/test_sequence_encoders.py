"""SASRec and RAM encoders, RAM's user embedding: causality, padding, hand-computed
blocks, reused item representations, serialisation and SavedModels."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.layers import ItemTower, QueryTower, SequenceExtraction
from tfrec_proxy.layers.ram import RAMEncoder, UserEmbedding
from tfrec_proxy.layers.sasrec import AttentionBlock, SASRecEncoder

from conftest import assert_round_trip, assert_runs_in_saved_model

VOCAB, DIM, MAX_LEN = 20, 8, 6
HISTORY = np.array([[0, 3, 5, 7, 9, 4], [2, 6, 8, 10, 12, 14]], np.int32)
ENCODERS = [SASRecEncoder, RAMEncoder]


def _encoder(cls, **overrides):
    args = dict(dim=DIM, max_len=MAX_LEN, num_layers=2, num_heads=2, dropout=0.1)
    args.update(overrides)
    return cls(VOCAB, **args)


@pytest.mark.parametrize("cls", ENCODERS)
def test_shapes_mask_and_interface(cls):
    encoder = _encoder(cls)
    hidden = encoder(tf.constant(HISTORY), training=True)
    assert hidden.shape == (2, MAX_LEN, DIM) and hidden.dtype == tf.float32
    assert encoder.causal
    np.testing.assert_array_equal(encoder.compute_mask(tf.constant(HISTORY)).numpy(),
                                  HISTORY != 0)
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        _encoder(cls, num_layers=0)


@pytest.mark.parametrize("cls", ENCODERS)
def test_causal_prefixes_and_padding(cls):
    encoder = _encoder(cls)
    history = tf.constant(HISTORY[:1])  # [[0, 3, 5, 7, 9, 4]]
    full = encoder(history, training=False).numpy()[0]
    changed = encoder(tf.constant([[0, 3, 5, 11, 9, 4]]), training=False).numpy()[0]
    np.testing.assert_allclose(changed[:3], full[:3], atol=1e-5)
    assert not np.allclose(changed[3], full[3], atol=1e-3)
    # The prefix [3, 5, 7] encoded alone equals columns 1..3 of the longer history.
    prefix = encoder(tf.constant([[0, 0, 0, 3, 5, 7]]), training=False).numpy()[0]
    np.testing.assert_allclose(prefix[3:], full[1:4], atol=1e-5)
    # More left padding leaves the real positions unchanged.
    short = encoder(tf.constant([[3, 5, 7, 9, 4]]), training=False).numpy()[0]
    np.testing.assert_allclose(short, full[1:], atol=1e-5)


def _randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _ln(x, norm):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * norm.gamma.numpy() + norm.beta.numpy()


def _block_by_hand(block, hidden, keys_values, real):
    """`AttentionBlock` (one head, no dropout) on one sequence's `[L, d]` rows."""
    w = {"/".join(v.name.split(":")[0].split("/")[-2:]): v.numpy()
         for v in block._attention.weights}
    queries = _ln(hidden, block._attention_norm)
    q = queries @ w["query/kernel"][:, 0] + w["query/bias"][0]
    k = keys_values @ w["key/kernel"][:, 0] + w["key/bias"][0]
    v = keys_values @ w["value/kernel"][:, 0] + w["value/bias"][0]
    length = len(real)
    allowed = real[np.newaxis, :] & (np.arange(length)[np.newaxis, :]
                                     <= np.arange(length)[:, np.newaxis])
    logits = np.where(allowed, q @ k.T / np.sqrt(hidden.shape[-1]), -np.inf)
    logits = np.where(allowed.any(-1, keepdims=True), logits, 0.0)  # all-padding rows
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = (weights @ v) @ w["attention_output/kernel"][0] + w["attention_output/bias"]
    x = (queries if block.residual_from_normed_query else hidden) + attended
    normed = _ln(x, block._ffn_norm)
    ffn = np.maximum(normed @ block._ffn_hidden.kernel.numpy()
                     + block._ffn_hidden.bias.numpy(), 0.0)
    base = normed if block.ffn_residual_from_normed else x
    x = base + ffn @ block._ffn_out.kernel.numpy() + block._ffn_out.bias.numpy()
    return x * real[:, np.newaxis]


def _embedded_by_hand(encoder, history, scale):
    real = history != 0
    positions = np.clip(np.cumsum(real) - 1, 0, encoder.num_positions - 1)
    items = encoder.item_embedding.embeddings.numpy()[history] * scale
    e = items + encoder.position_embedding.embeddings.numpy()[positions]
    return e * real[:, np.newaxis], real


@pytest.mark.parametrize("num_layers", [1, 2])
def test_ram_by_hand(num_layers):
    """Eqs. 2-4: every block's queries are the previous output, keys/values E."""
    encoder = _encoder(RAMEncoder, num_layers=num_layers, num_heads=1, dropout=0.0,
                       num_positions=4)
    history = HISTORY[0]
    encoder(tf.constant(history[np.newaxis]))
    _randomise(encoder)
    e, real = _embedded_by_hand(encoder, history, scale=1.0)
    hidden = e
    for block in encoder.blocks:
        hidden = _block_by_hand(block, hidden, e, real)
    expected = _ln(hidden, encoder._output_norm)
    got = encoder(tf.constant(history[np.newaxis]), training=False).numpy()[0]
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-4, atol=1e-4)


def test_sasrec_by_hand():
    """sqrt(d)-scaled embeddings; queries LN(x), keys/values x, residual from LN(x)."""
    encoder = _encoder(SASRecEncoder, num_layers=1, num_heads=1, dropout=0.0)
    history = HISTORY[0]
    encoder(tf.constant(history[np.newaxis]))
    _randomise(encoder, seed=1)
    e, real = _embedded_by_hand(encoder, history, scale=np.sqrt(DIM))
    embedded, _ = encoder.embed(tf.constant(history[np.newaxis]), training=False)
    np.testing.assert_allclose(embedded.numpy()[0], e, rtol=1e-5, atol=1e-5)
    expected = _ln(_block_by_hand(encoder.blocks[0], e, e, real), encoder._output_norm)
    got = encoder(tf.constant(history[np.newaxis]), training=False).numpy()[0]
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-4, atol=1e-4)
    # With zero position embeddings the input step is sqrt(d) V[b] at real items.
    encoder.position_embedding.embeddings.assign(tf.zeros([MAX_LEN, DIM]))
    embedded, _ = encoder.embed(tf.constant(history[np.newaxis]), training=False)
    table = encoder.item_embedding.embeddings.numpy()
    np.testing.assert_allclose(embedded.numpy()[0, 1:], np.sqrt(DIM) * table[history[1:]],
                               rtol=1e-6)
    np.testing.assert_array_equal(embedded.numpy()[0, 0], 0.0)


def test_ram_every_block_attends_over_the_same_item_representations(monkeypatch):
    encoder = _encoder(RAMEncoder, num_layers=3, dropout=0.0)
    history = tf.constant(HISTORY)
    encoder(history)
    calls = []
    for block in encoder.blocks:
        def spy(query, value, key=None, _original=block._attention.call, **kwargs):
            calls.append((query, value, key))
            return _original(query, value, key=key, **kwargs)
        monkeypatch.setattr(block._attention, "call", spy)
    encoder(history, training=False)
    assert len(calls) == 3
    items = encoder.keys_values(history, training=False).numpy()
    for query, value, key in calls:
        assert key is value and value is calls[0][1]  # one tensor, E, for every block
        np.testing.assert_array_equal(value.numpy(), items)
    assert not np.allclose(calls[1][0].numpy(), calls[2][0].numpy())


def test_user_embedding_lookup_and_eq5():
    users = UserEmbedding(DIM, user_ids=[1001, 42, 7],
                          embeddings_initializer="random_normal")
    ids = tf.constant([42, 5, 1001, 7, -3, 2 ** 40], tf.int64)
    u = users(ids).numpy()
    np.testing.assert_array_equal(users.rows(ids).numpy(), [2, 0, 3, 1, 0, 0])
    table = users.embedding.embeddings.numpy()
    np.testing.assert_array_equal(u[[0, 2, 3]], table[[2, 3, 1]])
    assert np.all(u[[1, 4, 5]] == 0.0)
    np.testing.assert_array_equal(users(tf.constant([7, 8], tf.int32)).numpy()[0], table[1])
    rng = np.random.default_rng(0)
    h = rng.normal(size=(6, DIM)).astype(np.float32)
    v = rng.normal(size=(10, DIM)).astype(np.float32)
    scores = tf.linalg.matmul(h + users(ids), v, transpose_b=True).numpy()
    u_by_hand = np.zeros((6, DIM), np.float32)
    u_by_hand[[0, 2, 3]] = table[[2, 3, 1]]
    np.testing.assert_allclose(scores, (h + u_by_hand) @ v.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[[1, 4, 5]], h[[1, 4, 5]] @ v.T, rtol=1e-5, atol=1e-5)


def test_user_embedding_trains_known_rows_only():
    users = UserEmbedding(DIM, user_ids=[3, 9])
    assert users(tf.constant([3], tf.int64)).numpy().sum() == 0.0  # zero init
    assert users.trainable_weights == [users.embedding.embeddings]
    assert users.non_trainable_weights[0].dtype == tf.int64
    ids = tf.constant([9, 4, 3], tf.int64)
    h, v = tf.random.normal([3, DIM], seed=1), tf.random.normal([3, DIM], seed=2)
    optimizer = tf.keras.optimizers.Adam(0.1)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum((h + users(ids)) * v)
        grads = tape.gradient(loss, users.trainable_variables)
        optimizer.apply_gradients(zip(grads, users.trainable_variables))
    table = users.embedding.embeddings.numpy()
    assert np.all(table[0] == 0.0) and np.all(np.abs(table[1:]) > 0.0)
    assert np.all(users(tf.constant([4], tf.int64)).numpy() == 0.0)


def test_user_embedding_ids_are_set_and_checkpointed(tmp_path):
    users = UserEmbedding(DIM, num_users=2, embeddings_initializer="random_normal")
    users.set_users([30, 10])
    ids = tf.constant([10, 30, 20], tf.int64)
    np.testing.assert_array_equal(users.rows(ids).numpy(), [1, 2, 0])
    path = tf.train.Checkpoint(layer=users).save(str(tmp_path / "ckpt"))
    clone = UserEmbedding.from_config(users.get_config())
    clone.build()
    tf.train.Checkpoint(layer=clone).restore(path).assert_consumed()
    np.testing.assert_array_equal(clone(ids).numpy(), users(ids).numpy())
    with pytest.raises(ValueError, match="set_users got 3 ids; this layer has num_users=2"):
        users.set_users([1, 2, 3])
    with pytest.raises(ValueError, match=r"user_ids must be distinct; repeated: \[4\]"):
        UserEmbedding(DIM, user_ids=[4, 4, 5])
    with pytest.raises(ValueError, match="num_users=3 does not match the 2 user_ids"):
        UserEmbedding(DIM, user_ids=[4, 5], num_users=3)
    with pytest.raises(ValueError, match="needs user_ids or num_users >= 1"):
        UserEmbedding(DIM)


@pytest.mark.parametrize("cls", ENCODERS)
def test_shared_item_tower_gets_gradients(cls):
    tower = ItemTower(VOCAB, (DIM, DIM))
    encoder = _encoder(cls, item_encoder=tower)
    assert encoder.item_embedding is None
    weights = tf.random.normal([2, MAX_LEN, DIM], seed=3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoder(tf.constant(HISTORY), training=True) * weights)
    grads = tape.gradient(loss, tower.trainable_variables)
    assert tower.trainable_variables and all(
        g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0 for g in grads)


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: AttentionBlock(DIM, 2, residual_from_normed_query=False),
     (tf.random.normal([2, 4, DIM]), tf.random.normal([2, 4, DIM]))),
    (lambda: _encoder(SASRecEncoder, num_positions=4, oov_rate=0.1), (tf.constant(HISTORY),)),
    (lambda: _encoder(RAMEncoder, num_layers=3), (tf.constant(HISTORY),)),
    (lambda: _encoder(RAMEncoder, item_encoder=ItemTower(VOCAB, (DIM, DIM))),
     (tf.constant(HISTORY),)),
    (lambda: UserEmbedding(DIM, user_ids=[3, 9, 27], embeddings_initializer="random_normal"),
     (tf.constant([9, 4, 27], tf.int64),)),
])
def test_serialisation_round_trip(make_layer, inputs):
    assert_round_trip(make_layer(), *inputs)


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: _encoder(SASRecEncoder), (tf.constant(HISTORY),)),
    (lambda: QueryTower(_encoder(RAMEncoder, item_encoder=ItemTower(VOCAB, (DIM, DIM))),
                        SequenceExtraction("last")), ({"history": tf.constant(HISTORY)},)),
    (lambda: UserEmbedding(DIM, user_ids=[3, 9, 27], embeddings_initializer="random_normal"),
     (tf.constant([9, 4, 27], tf.int64),)),
])
def test_runs_inside_a_saved_model(make_layer, inputs, tmp_path):
    assert_runs_in_saved_model(make_layer(), inputs, tmp_path)
