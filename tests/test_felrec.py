"""FELRec (Weimann & Conrad): losses vs numpy, cache, encoder, chronological protocol,
histories without leaks, configs, SavedModels and a tiny training run."""

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.data.chronological import (NEW_ITEMS, NEW_USERS, OBSERVED,
                                            chronological_split, past_neighbours)
from tfrec_proxy.felrec import FELRecModel, ResetCache
from tfrec_proxy.felrec_losses import (BYOLCosineLoss, InfoNCEQueueLoss, byol_cosine_loss,
                                       info_nce_with_queue, symmetric_byol_loss,
                                       symmetric_info_nce)
from tfrec_proxy.layers.felrec import (ITEMS_OF_USER, USERS_OF_ITEM, FELRecEncoder,
                                       FELRecEncoderLayer, PredictionHead, ProjectionHead,
                                       prediction_head, projection_head)
from tfrec_proxy.layers.felrec_cache import RepresentationCache

from conftest import assert_round_trip, assert_runs_in_saved_model

RNG = np.random.default_rng(0)
D = 4


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_info_nce(q, p, queue, tau, in_batch=False, ids=None, queue_ids=None):
    """By hand; with ids, a row's logits against entries of its own id are dropped."""
    queued = q @ queue.T
    if ids is not None:
        queued = np.where(ids[:, None] == queue_ids[None, :], -np.inf, queued)
    logits = [np.sum(q * p, 1, keepdims=True), queued]
    if in_batch:
        batch = q @ p.T
        np.fill_diagonal(batch, -np.inf)
        if ids is not None:
            batch = np.where(ids[:, None] == ids[None, :], -np.inf, batch)
        logits.append(batch)
    logits = np.concatenate(logits, 1) / tau
    top = logits.max(1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return float(np.mean(log_z - logits[:, 0]))


def _small_encoder(**kwargs):
    options = dict(dim=8, num_layers=2, num_heads=2, ff_dim=16, dropout=0.0)
    options.update(kwargs)
    return FELRecEncoder(**options)


# --- losses -------------------------------------------------------------------------

U, X = _normal(3, D), _normal(3, D)
UQ, IQ = _unit(_normal(5, D)), _unit(_normal(5, D))


@pytest.mark.parametrize("normalize,in_batch", [(True, False), (False, False), (True, True)])
def test_symmetric_info_nce_by_hand(normalize, in_batch):
    u, x = (_unit(U), _unit(X)) if normalize else (U, X)
    expected = (_np_info_nce(u, x, IQ, 0.07, in_batch)
                + _np_info_nce(x, u, UQ, 0.07, in_batch))
    got = symmetric_info_nce(U, X, UQ, IQ, 0.07, normalize, in_batch)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    layer = InfoNCEQueueLoss(D, queue_size=5, normalize=normalize, in_batch_negatives=in_batch)
    layer.user_queue.assign(UQ)
    layer.item_queue.assign(IQ)
    np.testing.assert_allclose(layer(U, X).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("in_batch", [False, True])
def test_info_nce_removes_queue_hits_by_hand(in_batch):
    # Users 7, 8, 7 and items 2, 3, 2; the queues hold older copies of user 7 and
    # item 2 (and ids -1: rows without an id), which must not count as negatives.
    users, items = np.array([7, 8, 7]), np.array([2, 3, 2])
    user_queue_ids, item_queue_ids = np.array([7, -1, 9, 7, 8]), np.array([2, 5, -1, 2, 6])
    u, x = _unit(U), _unit(X)
    expected = (_np_info_nce(u, x, IQ, 0.07, in_batch, items, item_queue_ids)
                + _np_info_nce(x, u, UQ, 0.07, in_batch, users, user_queue_ids))
    plain = _np_info_nce(u, x, IQ, 0.07, in_batch) + _np_info_nce(x, u, UQ, 0.07, in_batch)
    assert abs(expected - plain) > 1e-3  # the removal changes the loss
    got = symmetric_info_nce(U, X, UQ, IQ, 0.07, True, in_batch, users, items,
                             user_queue_ids, item_queue_ids)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    layers = {}
    for remove_hits, want in ((True, expected), (False, plain)):  # False: the paper's
        layer = InfoNCEQueueLoss(D, queue_size=5, in_batch_negatives=in_batch,
                                 remove_hits=remove_hits)
        for variable, value in ((layer.user_queue, UQ), (layer.item_queue, IQ),
                                (layer.user_queue_ids, user_queue_ids),
                                (layer.item_queue_ids, item_queue_ids)):
            variable.assign(value)
        np.testing.assert_allclose(layer(U, X, user_ids=users, item_ids=items).numpy(), want,
                                   rtol=1e-5)
        layers[remove_hits] = layer
    layer = layers[True]
    with pytest.raises(ValueError, match="user_ids and item_ids go together"):
        layer(U, X, user_ids=users)


def test_queue_keeps_ids_fifo():
    layer = InfoNCEQueueLoss(D, queue_size=5)
    assert layer.item_queue_ids.numpy().tolist() == [-1] * 5
    layer(U, X, update_queue=True, user_ids=tf.constant([4, 5, 6]),
          item_ids=tf.constant([1, 2, 3]))
    layer.enqueue(_normal(3, D), _normal(3, D))  # no ids: -1, wrapping to slots 3, 4, 0
    assert layer.item_queue_ids.numpy().tolist() == [-1, 2, 3, -1, -1]
    assert layer.user_queue_ids.numpy().tolist() == [-1, 5, 6, -1, -1]
    layer.enqueue(_normal(2, D), _normal(2, D), tf.constant([8, 9]), tf.constant([0, 7]))
    assert layer.item_queue_ids.numpy().tolist() == [-1, 0, 7, -1, -1]


def test_mean_pairwise_cosine_by_hand():
    from tfrec_proxy.felrec import mean_pairwise_cosine

    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    units = [np.array([1, 0]), np.array([0, 1]), np.array([1, 1]) / np.sqrt(2),
             np.array([0, 0])]
    pairs = [units[i] @ units[j] for i in range(4) for j in range(4) if i != j]
    assert mean_pairwise_cosine(v) == pytest.approx(np.mean(pairs))
    assert mean_pairwise_cosine(np.ones([3, 4])) == pytest.approx(1.0)
    assert mean_pairwise_cosine(np.eye(4)) == pytest.approx(0.0)
    assert np.isnan(mean_pairwise_cosine(np.ones([1, 4])))
    with pytest.raises(ValueError, match=r"\[n, d\] vectors"):
        mean_pairwise_cosine(np.ones(4))


def test_cache_spread_logs_collapse():
    from tfrec_proxy.felrec import CacheSpread

    model = FELRecModel(4, 6, "q", dim=4, num_layers=1, num_heads=2, ff_dim=8,
                        queue_size=8)
    model.cache.update("user", tf.constant([0, 2]), tf.ones([2, 4]))   # collapsed
    model.cache.update("item", tf.constant([1, 3, 5]), tf.eye(4)[:3])  # orthogonal
    callback = CacheSpread(sample=2, seed=0)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["cache_user_cosine"] == pytest.approx(1.0)
    assert logs["cache_item_cosine"] == pytest.approx(0.0)  # 2 of the 3 sampled
    assert model.cache.filled_ids("item").tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="sample must be an int >= 2"):
        CacheSpread(sample=1)


def test_info_nce_gradient_only_reaches_queries():
    u, x, queue = tf.constant(U), tf.constant(X), tf.constant(IQ)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([u, x, queue])
        loss = info_nce_with_queue(u, x, queue, 0.5)
    assert tape.gradient(loss, x) is None and tape.gradient(loss, queue) is None
    # d/dq of -log softmax: (sum_k p_k c_k - c_+) / tau, c = [x+, queue].
    candidates = np.concatenate([X[:, None, :], np.broadcast_to(IQ, (3, 5, D))], 1)
    logits = np.einsum("bd,bkd->bk", U, candidates) / 0.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = (np.einsum("bk,bkd->bd", p, candidates) - X) / 0.5 / 3
    np.testing.assert_allclose(tape.gradient(loss, u).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_queue_is_fifo_and_keeps_normalized_rows():
    layer = InfoNCEQueueLoss(D, queue_size=5)
    assert not layer.trainable_weights
    np.testing.assert_allclose(np.linalg.norm(layer.item_queue.numpy(), axis=1), 1, rtol=1e-5)
    before = layer.item_queue.numpy().copy()
    batches = [_normal(2, D) for _ in range(3)]
    layer(batches[0], batches[0] * 2, update_queue=True)
    np.testing.assert_allclose(layer.item_queue.numpy()[2:], before[2:])
    layer.enqueue(batches[1], batches[1])
    layer.enqueue(batches[2], batches[2])
    rows = _unit(np.concatenate(batches))  # 6 rows into 5 slots: row 5 wraps to slot 0
    expected = np.concatenate([rows[5:6], rows[1:5]])
    np.testing.assert_allclose(layer.item_queue.numpy(), expected, rtol=1e-5)
    assert layer.queue_pointer.numpy() == 1
    big = _normal(7, D)  # more rows than slots: the last 5 are kept, in FIFO order
    layer.enqueue(big, big)
    np.testing.assert_allclose(layer.user_queue.numpy(), _unit(big[np.array([4, 5, 6, 2, 3])]),
                               rtol=1e-5)
    assert layer.queue_pointer.numpy() == 3


def test_info_nce_loss_uses_queue_before_update():
    layer = InfoNCEQueueLoss(D, queue_size=5)
    user_queue, item_queue = layer.user_queue.numpy(), layer.item_queue.numpy()
    loss = layer(U, X, update_queue=True)
    np.testing.assert_allclose(loss.numpy(), symmetric_info_nce(U, X, user_queue, item_queue)
                               .numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer.item_queue.numpy()[:3], _unit(X), rtol=1e-5)


def test_byol_cosine_loss_by_hand():
    p, t = _normal(3, D), _normal(3, D)
    expected = np.mean(2 - 2 * np.sum(_unit(p) * _unit(t), 1))
    np.testing.assert_allclose(byol_cosine_loss(p, t).numpy(), expected, rtol=1e-5)
    hu, zx, hx, zu = (_normal(3, D) for _ in range(4))
    both = (np.mean(2 - 2 * np.sum(_unit(hu) * _unit(zx), 1))
            + np.mean(2 - 2 * np.sum(_unit(hx) * _unit(zu), 1)))
    np.testing.assert_allclose(symmetric_byol_loss(hu, zx, hx, zu).numpy(), both, rtol=1e-5)
    np.testing.assert_allclose(BYOLCosineLoss()(hu, zx, hx, zu).numpy(), both, rtol=1e-5)
    target = tf.constant(t)
    with tf.GradientTape() as tape:
        tape.watch(target)
        loss = byol_cosine_loss(p, target)
    assert tape.gradient(loss, target) is None
    np.testing.assert_allclose(byol_cosine_loss(p, 3 * p).numpy(), 0.0, atol=1e-6)


def test_loss_errors():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        info_nce_with_queue(U, X, IQ, 0.0)
    with pytest.raises(ValueError, match=r"InfoNCE queries must be a float \[B, d\]"):
        info_nce_with_queue(np.array([1, 2]), X, IQ)
    with pytest.raises(ValueError, match=r"item_projection must be \[B, 4\], got shape"):
        InfoNCEQueueLoss(D, queue_size=5)(U, _normal(3, 6))
    with pytest.raises(ValueError, match="queue_size must be an int >= 1, got 0"):
        InfoNCEQueueLoss(D, queue_size=0)


# --- cache --------------------------------------------------------------------------

def test_cache_update_lookup_reset_grow():
    cache = RepresentationCache(dim=D, num_users=3, num_items=5)
    assert cache.trainable_weights == [] and len(cache.non_trainable_weights) == 4
    assert cache.bytes_per_entity == 4 * D + 1
    np.testing.assert_array_equal(cache.lookup("item", [[-1, 0, 4]]).numpy(), 0)
    first, second, third = _normal(3, D)
    cache.update("item", tf.constant([2, 4, 2]), np.stack([first, second, third]))
    got = cache.lookup("item", tf.constant([[-1, 2, 0, 4]])).numpy()
    np.testing.assert_array_equal(got[0, 1], third)  # a repeated id keeps the last row
    np.testing.assert_array_equal(got[0, 3], second)
    np.testing.assert_array_equal(got[0, [0, 2]], 0)  # padding and never written: 0
    np.testing.assert_array_equal(cache.is_filled("item", [-1, 0, 2, 4]).numpy(),
                                  [False, False, True, True])
    assert cache.num_filled("item") == 2 and cache.num_filled("user") == 0
    traced = tf.function(lambda ids: cache.lookup("item", ids))
    traced(tf.constant([2]))
    cache.grow(num_items=8)  # new items after training, eagerly
    assert cache.num_items == 8 and cache.num_users == 3
    np.testing.assert_array_equal(traced(tf.constant([2, 7])).numpy(), [third, np.zeros(D)])
    cache.update("item", [7], second[None])
    tf.function(lambda: cache.update("user", tf.constant([1]), first[None]))()
    np.testing.assert_array_equal(cache.lookup("user", [1]).numpy(), first[None])
    cache.reset("user")
    assert cache.num_filled("user") == 0 and cache.num_filled("item") == 3
    cache.reset()
    np.testing.assert_array_equal(cache.lookup("item", np.arange(8)).numpy(), 0)
    assert cache.num_filled("item") == 0
    cache.ensure_capacity("user", 2)
    cache.ensure_capacity("user", 10)
    assert cache.get_config()["num_users"] == 10


def test_cache_errors():
    cache = RepresentationCache(dim=D, num_users=3, num_items=5)
    with pytest.raises(ValueError, match=r"one of \('user', 'item'\), got 'items'"):
        cache.lookup("items", [0])
    with pytest.raises(ValueError, match=r"in \[0, 5\) \(the item capacity.*got \[5, 9\]"):
        cache.lookup("item", [1, 5, 9])
    with pytest.raises(ValueError, match=r"user ids must be in \[0, 3\).*got \[-1\]"):
        cache.update("user", [-1], _normal(1, D))
    with pytest.raises(ValueError, match="ids must be integers, got dtype float32"):
        cache.lookup("item", np.array([1.0], np.float32))
    with pytest.raises(ValueError, match=r"needs \[B, 4\] vectors, got shape \(1, 3\)"):
        cache.update("item", [0], _normal(1, 3))
    with pytest.raises(ValueError, match="got 2 ids but 1 vectors"):
        cache.update("item", [0, 1], _normal(1, D))
    with pytest.raises(ValueError, match="num_items must be an int >= the current item "
                                         "capacity 5, got 4"):
        cache.grow(num_items=4)
    with pytest.raises(RuntimeError, match="runs eagerly only"):
        tf.function(lambda: cache.grow(num_items=9))()
    with pytest.raises(tf.errors.InvalidArgumentError, match="past the item capacity"):
        tf.function(lambda ids: cache.lookup("item", ids))(tf.constant([6]))
    with pytest.raises(ValueError, match="num_users must be an int >= 0, got -1"):
        RepresentationCache(dim=D, num_users=-1, num_items=5)


# --- encoder and heads --------------------------------------------------------------

def test_encoder_masks_padding_and_pools_real_positions():
    encoder = _small_encoder()
    vectors = _normal(2, 3, 8)
    mask = np.array([[False, True, True], [True, True, True]])
    out = encoder(vectors, mask, ITEMS_OF_USER).numpy()
    assert out.shape == (2, 8)
    # Garbage in padded positions and extra left padding change nothing (for row 1,
    # full at L = 3, the padding slot appears at L = 5: the next test).
    padded = np.concatenate([_normal(2, 2, 8) * 100, vectors], 1)
    padded[0, 2] = 1e3
    padded_mask = np.concatenate([np.zeros([2, 2], bool), mask], 1)
    np.testing.assert_allclose(encoder(padded, padded_mask, ITEMS_OF_USER).numpy()[0],
                               out[0], rtol=1e-5, atol=1e-5)
    plain = _small_encoder(padding_slot=False)
    np.testing.assert_allclose(plain(padded, padded_mask, ITEMS_OF_USER).numpy(),
                               plain(vectors, mask, ITEMS_OF_USER).numpy(),
                               rtol=1e-5, atol=1e-5)
    # The type embedding tells a user's items from an item's users.
    other = encoder(vectors, mask, USERS_OF_ITEM).numpy()
    assert not np.allclose(other, out, atol=1e-3)
    mixed = encoder(vectors, mask, tf.constant([ITEMS_OF_USER, USERS_OF_ITEM])).numpy()
    np.testing.assert_allclose(mixed, [out[0], other[1]], rtol=1e-5, atol=1e-6)
    # Empty histories: one learned "empty" representation, whatever the padding holds.
    empty = encoder(_normal(2, 3, 8), np.zeros([2, 3], bool), ITEMS_OF_USER).numpy()
    assert np.isfinite(empty).all()
    np.testing.assert_allclose(empty[0], empty[1], rtol=1e-5, atol=1e-6)


def test_encoder_padding_slot_is_one_zero_vector_left_of_the_history():
    """The reference code's mask: a history shorter than L also covers the padding
    position just left of its oldest item, as a zero vector (plus the type token)."""
    vectors = _normal(3, 4, 8)
    mask = np.array([[False, False, True, True], [True, True, True, True],
                     [False, False, False, False]])
    slot = _small_encoder()
    out = slot(vectors, mask, ITEMS_OF_USER).numpy()
    plain = FELRecEncoder.from_config({**slot.get_config(), "padding_slot": False})
    plain(vectors, mask)
    plain.set_weights(slot.get_weights())
    # == the slot made a real, zero position of an encoder without slots; the full
    # row 1 has no slot, the empty row 2 has it at its last position.
    explicit = vectors.copy()
    explicit[0, :2] = explicit[2] = 0.0
    explicit_mask = np.array([[False, True, True, True], [True] * 4,
                              [False, False, False, True]])
    np.testing.assert_allclose(out, plain(explicit, explicit_mask, ITEMS_OF_USER).numpy(),
                               rtol=1e-5, atol=1e-5)
    # Without the slot, padding is ignored entirely (row 0 == its real part alone).
    no_slot = plain(vectors, mask, ITEMS_OF_USER).numpy()
    np.testing.assert_allclose(no_slot[0], plain(vectors[:1, 2:], mask[:1, 2:]).numpy()[0],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(no_slot[1:], out[1:], rtol=1e-5, atol=1e-5)
    assert not np.allclose(no_slot[0], out[0], atol=1e-3)


def test_encoder_layer_is_bidirectional():
    layer = FELRecEncoderLayer(dim=8, num_heads=2, ff_dim=16, dropout=0.0)
    x = _normal(1, 3, 8)
    changed = x.copy()
    changed[0, 2] += 1.0  # the last (most recent) position
    first = layer(x, mask=tf.ones([1, 3], tf.bool)).numpy()[0, 0]
    assert not np.allclose(layer(changed, mask=tf.ones([1, 3], tf.bool)).numpy()[0, 0], first)
    masked = np.array([[True, True, False]])  # masked keys are not attended to
    np.testing.assert_allclose(layer(changed, mask=masked).numpy()[0, :2],
                               layer(x, mask=masked).numpy()[0, :2], rtol=1e-5, atol=1e-6)


def test_encoder_and_head_errors():
    encoder = _small_encoder()
    with pytest.raises(ValueError, match=r"vectors of shape \[B, L, 8\], got \(2, 3, 5\)"):
        encoder(_normal(2, 3, 5))
    with pytest.raises(ValueError, match="sequence_type must be 0 .* got 2"):
        encoder(_normal(2, 3, 8), None, 2)
    with pytest.raises(ValueError, match=r"sequence_type values must be 0 or 1, got \[3\]"):
        encoder(_normal(2, 3, 8), None, tf.constant([0, 3]))
    with pytest.raises(ValueError, match="length 6; its position encoding covers "
                                         "num_positions=4"):
        _small_encoder(num_positions=4)(_normal(1, 6, 8))
    with pytest.raises(ValueError, match="dim=6 must be divisible by num_heads=4"):
        FELRecEncoder(dim=6, num_heads=4, positional_encoding=False)(_normal(1, 2, 6))
    with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\), got 1.5"):
        FELRecEncoder(dropout=1.5)
    with pytest.raises(ValueError, match="normalization must be one of .* got 'group'"):
        ProjectionHead(normalization="group")
    with pytest.raises(ValueError, match="variant must be one of \\('q', 'p'\\), got 'x'"):
        projection_head("x", 8)


def test_paper_sizes_and_parameter_counts():
    sizes = {"q": (128, 128), "p": (256, 64)}
    for variant, (hidden, out) in sizes.items():
        head = projection_head(variant, 128)
        assert (head.hidden_dim, head.output_dim) == (hidden, out)
    predictor = prediction_head(128)
    assert (predictor.hidden_dim, predictor.output_dim) == (256, 64)
    # Table 1: FELRec-Q 0.48M and FELRec-P 0.58M parameters, whatever the data.
    counts = {}
    for variant in ("q", "p"):
        model = _built_model(variant, 10, 10)
        counts[variant] = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert counts == {"q": 479488, "p": 580096}


def _batch(num_users, num_items, size=4, length=3, seed=0):
    rng = np.random.default_rng(seed)
    history = lambda top: np.where(rng.random((size, length)) < 0.3, -1,  # noqa: E731
                                   rng.integers(0, top, (size, length))).astype(np.int32)
    return {"user": rng.integers(0, num_users, size).astype(np.int32),
            "item": rng.integers(0, num_items, size).astype(np.int32),
            "user_history": history(num_items), "item_history": history(num_users)}


def _built_model(variant, num_users, num_items, **kwargs):
    model = FELRecModel(num_users, num_items, variant=variant, **kwargs)
    users, items = model.encode(_batch(num_users, num_items), training=False)
    model.loss_from_representations(users, items)
    return model


@pytest.mark.parametrize("variant", ["q", "p"])
def test_trainable_shapes_do_not_scale_with_users_or_items(variant):
    options = dict(dim=8, num_layers=1, num_heads=2, ff_dim=16, queue_size=16)
    small = _built_model(variant, 5, 7, **options)
    large = _built_model(variant, 5000, 700, **options)
    shapes = lambda m: [tuple(w.shape) for w in m.trainable_weights]  # noqa: E731
    assert shapes(small) == shapes(large)
    assert len(small.trainable_weights) > 20
    assert large.cache.num_users == 5000 and small.cache.num_users == 5
    cache_ids = {id(w) for w in large.cache.weights}
    assert not cache_ids & {id(w) for w in large.trainable_weights}


# --- chronological protocol ---------------------------------------------------------

def _hand_frame():
    """20 interactions, rows shuffled, ties at t=5; sorted, the last four are
    validation (a, x) observed, (d, y) new user; test (a, w) new item, (e, v) both new."""
    train = [("a", "x"), ("b", "y"), ("a", "y"), ("c", "z"), ("b", "x"), ("a", "z"),
             ("c", "x"), ("b", "z"), ("a", "x"), ("c", "y"), ("b", "y"), ("a", "y"),
             ("c", "z"), ("b", "x"), ("a", "z"), ("c", "x")]
    rest = [("a", "x"), ("d", "y"), ("a", "w"), ("e", "v")]
    times = [1, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    frame = pd.DataFrame([(u, i, t) for (u, i), t in zip(train + rest, times)],
                         columns=["user_id", "item_id", "timestamp"])
    order = np.random.default_rng(1).permutation(20)
    return frame.iloc[order].reset_index(drop=True), order


def test_chronological_split_and_partitions_by_hand():
    frame, order = _hand_frame()
    split = chronological_split(frame, history_len=3)
    # Stable sort: the three t=5 rows keep their row order, which the shuffle decided.
    chronological = np.argsort(order, kind="stable")
    ties = sorted(chronological[4:7])
    np.testing.assert_array_equal(split.interactions["row"].to_numpy()[4:7], ties)
    assert (split.num_train, split.num_validation, len(split.test)) == (16, 2, 2)
    assert (split.num_train_users, split.num_train_items) == (3, 3)
    assert list(split.interactions["split"][14:]) == ["train"] * 2 + ["validation"] * 2 + \
        ["test"] * 2
    assert list(split.validation.partition) == [OBSERVED, NEW_USERS]
    assert list(split.test.partition) == [NEW_ITEMS, NEW_ITEMS]
    assert list(split.test.new_both) == [False, True] and not split.validation.new_both.any()
    assert split.partition_counts()["test"] == {"observed": 0, "new_users": 0,
                                                "new_items": 2, "new_both": 1}
    assert list(split.user_ids) == ["a", "b", "c", "d", "e"]  # first appearance
    assert split.interactions["partition"].iloc[-1] == "new_items"
    # Test row (a, w): a's last three items before it, oldest first: y, z, x
    # (indices by first appearance: x 0, y 1, z 2).
    np.testing.assert_array_equal(split.test.user_history[0], [1, 2, 0])
    # (e, v): a new user and a new item have empty histories.
    np.testing.assert_array_equal(split.test.user_history[1], [-1, -1, -1])
    np.testing.assert_array_equal(split.test.item_history[1], [-1, -1, -1])
    # Validation (d, y): y's last three users before it.
    users_of_y = [u for u, i in zip(split.interactions["user_id"][:17],
                                    split.interactions["item_id"][:17]) if i == "y"]
    expected = [list(split.user_ids).index(u) for u in users_of_y[-3:]]
    np.testing.assert_array_equal(split.validation.item_history[1], expected)
    assert split.train.features()["user_history"].shape == (16, 3)


def _naive_histories(users, items, length):
    seen_items, seen_users, out_u, out_i = {}, {}, [], []
    for user, item in zip(users, items):
        past = seen_items.setdefault(user, [])[-length:]
        out_u.append([-1] * (length - len(past)) + past)
        past = seen_users.setdefault(item, [])[-length:]
        out_i.append([-1] * (length - len(past)) + past)
        seen_items[user].append(item)
        seen_users[item].append(user)
    return np.array(out_u), np.array(out_i)


def test_histories_match_a_naive_loop_with_ties():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"user_id": rng.integers(0, 15, 300) * 10,
                          "item_id": rng.integers(0, 9, 300) + 100,
                          "timestamp": rng.integers(0, 40, 300)})  # many ties
    split = chronological_split(frame, history_len=4)
    expected_u, expected_i = _naive_histories(split.user, split.item, 4)
    np.testing.assert_array_equal(split.user_history, expected_u)
    np.testing.assert_array_equal(split.item_history, expected_i)
    rows = np.array([5, 299, 0])
    np.testing.assert_array_equal(past_neighbours(split.user, split.item, 4, rows),
                                  expected_u[rows])


def test_histories_never_see_the_interaction_or_the_future():
    frame, _ = _hand_frame()
    split = chronological_split(frame, history_len=3)
    row, later = 16, 18  # validation (a, x) at t=15 and test (a, w) at t=17, both user a
    # Change the interaction itself (x -> z) and a later one of the same user (w -> y).
    changed = split.interactions[["user_id", "item_id", "timestamp"]].copy()
    changed.loc[row, "item_id"], changed.loc[later, "item_id"] = "z", "y"
    other = chronological_split(changed, history_len=3)
    np.testing.assert_array_equal(other.user_history[:row + 1], split.user_history[:row + 1])
    np.testing.assert_array_equal(other.item_history[:row], split.item_history[:row])
    assert not np.array_equal(other.user_history[later], split.user_history[later])
    # So the encoder's representation of user a at `row` is unchanged, while a history
    # that held the interaction's own item or the later one would change it.
    cache = RepresentationCache(dim=8, num_users=5, num_items=5)
    cache.update("item", np.arange(5), _normal(5, 8))
    encoder = _small_encoder()

    def encode(history):
        return encoder(cache.lookup("item", history[None]), history[None] >= 0).numpy()

    np.testing.assert_allclose(encode(other.user_history[row]),
                               encode(split.user_history[row]), rtol=1e-6)
    for leaked_item in (split.item[row], other.item[later]):
        leaky = np.concatenate([split.user_history[row][1:], [leaked_item]])
        assert not np.allclose(encode(leaky), encode(split.user_history[row]), atol=1e-3)
    # Every row's newest entry is the user's previous interaction (-1 if none).
    for r in range(len(split.user)):
        past = split.item[:r][split.user[:r] == split.user[r]]
        assert split.user_history[r][-1] == (past[-1] if len(past) else -1)
        past = split.user[:r][split.item[:r] == split.item[r]]
        assert split.item_history[r][-1] == (past[-1] if len(past) else -1)


def test_split_errors():
    frame, _ = _hand_frame()
    with pytest.raises(ValueError, match=r"lack column\(s\) \['timestamp'\]"):
        chronological_split(frame.drop(columns="timestamp"))
    broken = frame.astype({"timestamp": float})
    broken.loc[3, "timestamp"] = np.nan
    with pytest.raises(ValueError, match="'timestamp' has 1 missing value"):
        chronological_split(broken)
    with pytest.raises(ValueError, match="got 0.9 and 0.2"):
        chronological_split(frame, 0.9, 0.2)
    with pytest.raises(ValueError, match="history_len must be an int >= 1, got 0"):
        chronological_split(frame, history_len=0)
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        chronological_split(frame).part("val")


# --- configs and SavedModels --------------------------------------------------------

def _layer_cases():
    cache = RepresentationCache(dim=D, num_users=3, num_items=5)
    cache.update("item", [1, 3], _normal(2, D))
    vectors, mask = _normal(2, 3, 8), np.array([[False, True, True], [True, True, True]])
    head, predictor = ProjectionHead(8, 6), PredictionHead(8, 4)
    head(_normal(5, 8), training=True)  # non-trivial moving statistics
    predictor(_normal(5, 6), training=True)
    return [(cache, (tf.constant([[-1, 1, 3]]), "item")),
            (FELRecEncoderLayer(8, 2, 16), (tf.constant(vectors), tf.constant(mask))),
            (_small_encoder(), (tf.constant(vectors), tf.constant(mask),
                                tf.constant([0, 1]))),
            (head, (tf.constant(_normal(3, 8)),)),
            (predictor, (tf.constant(_normal(3, 6)),)),
            (InfoNCEQueueLoss(D, queue_size=6), (tf.constant(U), tf.constant(X))),
            (BYOLCosineLoss(), tuple(tf.constant(_normal(3, D)) for _ in range(4)))]


@pytest.mark.parametrize("case", range(7))
def test_layer_round_trip_and_saved_model(case, tmp_path):
    layer, inputs = _layer_cases()[case]
    assert_round_trip(layer, *inputs)
    assert_runs_in_saved_model(layer, inputs, tmp_path, atol=1e-5)


def test_model_round_trip_and_saved_model(tmp_path):
    model = _built_model("p", 6, 5, dim=8, num_layers=1, num_heads=2, ff_dim=16)
    clone = FELRecModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    batch = _batch(6, 5)
    clone.loss_from_representations(*clone.encode(batch))
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    model.cache.update("item", [0, 2, 4], _normal(3, 8))
    expected = model(batch)
    module = tf.Module()
    module.model = model
    signature = {k: tf.TensorSpec([None] + [None] * (k.endswith("history")), tf.int32)
                 for k in batch}
    module.encode = tf.function(lambda b: model(b), input_signature=[signature])
    tf.saved_model.save(module, str(tmp_path / "felrec"))
    loaded = tf.saved_model.load(str(tmp_path / "felrec"))
    got = loaded.encode({k: tf.constant(v) for k, v in batch.items()})
    for key in ("user", "item"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5,
                                   atol=1e-5)


# --- training -----------------------------------------------------------------------

def _clustered_split(num=1200, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, num)
    items = (users % 4) + 4 * rng.integers(0, 10, num)  # users of cluster c pick items c mod 4
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.arange(num)})
    return chronological_split(frame, 0.9, 0.0, history_len=8)


def test_train_step_writes_pre_update_representations_into_the_cache():
    split = _clustered_split(200)
    model = FELRecModel(split.num_users, split.num_items, "q", dim=8, num_layers=1,
                        num_heads=2, ff_dim=16, dropout=0.0, queue_size=16)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    batch = {k: v[100:116] for k, v in split.train.features().items()}
    # A filled cache, as later in an epoch (an empty one makes every input the same).
    filled_users = _normal(split.num_users, 8)
    model.cache.update("user", np.arange(split.num_users), filled_users)
    model.cache.update("item", np.arange(split.num_items), _normal(split.num_items, 8))
    users, items = model.encode(batch, training=True)
    model.loss_from_representations(users, items)  # builds the heads
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(batch)
    unchanged = [w.name for b, w in zip(before, model.trainable_weights)
                 if np.allclose(b, w.numpy())]
    assert not unchanged
    untouched = np.setdiff1d(np.arange(split.num_users), batch["user"])
    np.testing.assert_array_equal(model.cache.lookup("user", untouched).numpy(),
                                  filled_users[untouched])  # only explicit writes
    last = {u: r for r, u in enumerate(batch["user"])}
    np.testing.assert_allclose(model.cache.lookup("user", list(last)).numpy(),
                               users.numpy()[list(last.values())], rtol=1e-5, atol=1e-6)
    last = {i: r for r, i in enumerate(batch["item"])}
    np.testing.assert_allclose(model.cache.lookup("item", list(last)).numpy(),
                               items.numpy()[list(last.values())], rtol=1e-5, atol=1e-6)
    callback = ResetCache()
    callback.set_model(model)
    callback.on_epoch_begin(1)
    assert model.cache.num_filled("user") == 0


@pytest.mark.parametrize("variant", ["q", "p"])
def test_tiny_training_run_loss_falls(variant):
    split = _clustered_split()
    tf.keras.utils.set_random_seed(0)
    model = FELRecModel(split.num_train_users, split.num_train_items, variant, dim=16,
                        num_layers=1, num_heads=2, ff_dim=32, dropout=0.0, queue_size=128)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
    data = tf.data.Dataset.from_tensor_slices(split.train.features()).batch(64)
    history = model.fit(data, epochs=4, shuffle=False, callbacks=[ResetCache()], verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    # New users and items of the test part: grow the cache, keep encoding online.
    model.ensure_capacity(split.num_users, split.num_items)
    result = model.evaluate(tf.data.Dataset.from_tensor_slices(split.test.features())
                            .batch(64), verbose=0)
    assert np.isfinite(result)
    assert model.cache.num_filled("item") == split.num_items
    scores = model.scores(split.test.user[:3], np.arange(split.num_items)).numpy()
    assert scores.shape == (3, split.num_items) and np.all(np.abs(scores) <= 1 + 1e-5)
