"""FELRec's two objectives (Weimann & Conrad, §2.2), as tensor functions and layers.

* FELRec-Q, eqs. 1-2: symmetric InfoNCE. The user projection u must pick its own
  item projection x+ out of {x+} and a FIFO queue of earlier items' projections
  (MoCo's dictionary), and the item projection must pick u out of a queue of users:
  `L = L_u + L_x`, `L_u = -log exp(u.x+/tau) / (exp(u.x+/tau) + sum_k exp(u.q_k/tau))`.
  Gradients stop at the positives and at the queues ("we stop the gradient in the
  item branch" for L_u, in the user branch for L_x).
* FELRec-P, eqs. 3-4: BYOL's normalized-MSE between each side's prediction and the
  other side's stop-gradient projection, `2 - 2 cos(h_u(u), x) + 2 - 2 cos(h_x(x), u)`.

As in the reference code (github.com/kweimann/FELRec), projections are L2-normalized
before the dot products of InfoNCE (so u.x is a cosine; `normalize=False` gives the
paper's raw dot product), losses are means over the batch, and the queues start as
random unit vectors and are refilled with each step's (normalized) projections after
the loss is computed.

Queue hits. The queues are filled in interaction order, so they hold earlier
encodings of the very user or item that is the positive: with a catalogue not much
larger than the queue (the synthetic 1,000 items against K = 4,096; popular items
many times over) those stale copies are false negatives that the loss pushes the
query away from. With ids (`positive_ids`, `queue_ids`), queue entries of the
positive's own id are removed from the softmax, as TFRS's `Retrieval` removes
accidental hits (`remove_accidental_hits`), with `InfoNCEQueueLoss(remove_hits=True)`
(the ids are kept beside the queues either way). The paper (on 59k and 433k items)
and its reference code do not do this; `remove_hits=False`, the default, is their
loss.
"""

from typing import Any, Dict

import numpy as np

from tfrec_proxy._tf import tf

# `ModelConfig.loss` names of the two variants (`--loss infonce` / `--loss byol`).
LOSS_VARIANTS = {"infonce": "q", "byol": "p"}
FELREC_LOSSES = tuple(LOSS_VARIANTS)


def loss_variant(loss: str) -> str:
    """The FELRecModel variant of a loss name: `"infonce"` -> "q", `"byol"` -> "p".

    Raises:
        ValueError: any other name.
    """
    if loss not in LOSS_VARIANTS:
        raise ValueError(f"--encoder felrec trains with --loss infonce (FELRec-Q, eqs. 1-2) "
                         f"or --loss byol (FELRec-P, eqs. 3-4); got loss {loss!r}.")
    return LOSS_VARIANTS[loss]


def _as_float(x: Any, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating or x.shape.rank != 2:
        raise ValueError(f"{name} must be a float [B, d] tensor, got dtype {x.dtype.name} "
                         f"shape {x.shape}.")
    return tf.cast(x, tf.float32)


# Added to removed logits (after the division by tau), as TFRS's remove_accidental_hits.
_REMOVED = -1e9


def info_nce_with_queue(queries: Any, positives: Any, queue: Any,
                        temperature: float = 0.07,
                        in_batch_negatives: bool = False,
                        positive_ids: Any = None, queue_ids: Any = None) -> tf.Tensor:
    """One direction of FELRec-Q's loss (eq. 1): mean over the batch of InfoNCE.

    Row i's logits are `[q_i . p_i, q_i . queue_0, ..., q_i . queue_{K-1}] / tau`
    (plus `q_i . p_j` for every j != i with `in_batch_negatives`, an option the paper
    does not use), and its loss is `-log softmax(logits_i)[0]`. With `positive_ids`
    and `queue_ids`, queue entries (and, with `in_batch_negatives`, other positives)
    of row i's own positive id are left out of its softmax. No gradient reaches
    `positives` or `queue`. Vectors are used as given (normalize them first for
    cosine logits).

    Args:
        queries: `[B, d]` (e.g. user projections u).
        positives: `[B, d]` (the paired item projections x+).
        queue: `[K, d]` negatives (earlier items' projections).
        temperature: tau > 0.
        in_batch_negatives: Also contrast against the batch's other positives.
        positive_ids: Optional `[B]` int ids of the positives.
        queue_ids: Optional `[K]` int ids of the queue rows (-1: no id); needed
            with `positive_ids`.

    Returns:
        Scalar float32 loss.
    """
    if not temperature > 0:
        raise ValueError(f"InfoNCE temperature must be > 0, got {temperature!r}.")
    if (positive_ids is None) != (queue_ids is None):
        raise ValueError("InfoNCE positive_ids and queue_ids go together (both or "
                         "neither).")
    queries = _as_float(queries, "InfoNCE queries")
    positives = tf.stop_gradient(_as_float(positives, "InfoNCE positives"))
    queue = tf.stop_gradient(_as_float(queue, "InfoNCE queue"))
    positive = tf.reduce_sum(queries * positives, axis=1, keepdims=True) / temperature
    queued = tf.linalg.matmul(queries, queue, transpose_b=True) / temperature
    if positive_ids is not None:
        positive_ids = tf.cast(tf.reshape(positive_ids, [-1]), tf.int64)
        hits = tf.equal(positive_ids[:, tf.newaxis],
                        tf.cast(tf.reshape(queue_ids, [-1]), tf.int64)[tf.newaxis, :])
        queued += _REMOVED * tf.cast(hits, queued.dtype)
    logits = [positive, queued]
    if in_batch_negatives:
        batch = tf.linalg.matmul(queries, positives, transpose_b=True) / temperature
        removed = tf.eye(tf.shape(batch)[0], dtype=tf.bool)
        if positive_ids is not None:
            removed |= tf.equal(positive_ids[:, tf.newaxis], positive_ids[tf.newaxis, :])
        logits.append(batch + _REMOVED * tf.cast(removed, batch.dtype))
    logits = tf.concat(logits, axis=1)
    return -tf.reduce_mean(tf.nn.log_softmax(logits, axis=1)[:, 0])


def symmetric_info_nce(user_projection: Any, item_projection: Any, user_queue: Any,
                       item_queue: Any, temperature: float = 0.07, normalize: bool = True,
                       in_batch_negatives: bool = False, user_ids: Any = None,
                       item_ids: Any = None, user_queue_ids: Any = None,
                       item_queue_ids: Any = None) -> tf.Tensor:
    """FELRec-Q's loss `L_u + L_x` (eqs. 1-2) on `[B, d]` projections, `[K, d]` queues.

    `L_u = info_nce_with_queue(u, x, item_queue)` (gradient through u only),
    `L_x = info_nce_with_queue(x, u, user_queue)` (through x only); with `normalize`
    u and x are L2-normalized first (the queues are expected to hold normalized rows).
    With `[B]` `item_ids` and `[K]` `item_queue_ids`, L_u leaves out the queue rows of
    each positive item's own id (likewise `user_ids` / `user_queue_ids` for L_x).
    """
    user = _as_float(user_projection, "user_projection")
    item = _as_float(item_projection, "item_projection")
    if normalize:
        user, item = tf.math.l2_normalize(user, axis=1), tf.math.l2_normalize(item, axis=1)
    return (info_nce_with_queue(user, item, item_queue, temperature, in_batch_negatives,
                                item_ids, item_queue_ids)
            + info_nce_with_queue(item, user, user_queue, temperature, in_batch_negatives,
                                  user_ids, user_queue_ids))


def byol_cosine_loss(predictions: Any, targets: Any) -> tf.Tensor:
    """One direction of FELRec-P's loss (eq. 3): mean of `2 - 2 cos(p_i, sg(t_i))`.

    Args:
        predictions: `[B, d]` (e.g. h_u(u)).
        targets: `[B, d]` (e.g. the item projections x); no gradient reaches them.

    Returns:
        Scalar float32 loss in [0, 4].
    """
    predictions = tf.math.l2_normalize(_as_float(predictions, "BYOL predictions"), axis=1)
    targets = tf.math.l2_normalize(
        tf.stop_gradient(_as_float(targets, "BYOL targets")), axis=1)
    return tf.reduce_mean(2.0 - 2.0 * tf.reduce_sum(predictions * targets, axis=1))


def symmetric_byol_loss(user_prediction: Any, item_projection: Any, item_prediction: Any,
                        user_projection: Any) -> tf.Tensor:
    """FELRec-P's loss `L_u + L_x` (eqs. 3-4): `byol(h_u(u), x) + byol(h_x(x), u)`."""
    return (byol_cosine_loss(user_prediction, item_projection)
            + byol_cosine_loss(item_prediction, user_projection))


def random_unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """`[rows, dim]` float32 random unit vectors (the queues' initial content)."""
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(
        np.float32)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class InfoNCEQueueLoss(tf.keras.layers.Layer):
    """FELRec-Q's symmetric InfoNCE with a user queue and an item queue (MoCo-style).

    Holds `user_queue` / `item_queue` (`[queue_size, dim]` float32, non-trainable),
    `user_queue_ids` / `item_queue_ids` (`[queue_size]` int64, -1 where a row has
    no id) and `queue_pointer` (int64, the next row to overwrite). `call` computes
    `symmetric_info_nce` against the current queues; `enqueue` (or
    `call(..., update_queue=True)`, after the loss) writes the batch's normalized
    projections at the pointer, FIFO, wrapping around; with more rows than
    `queue_size` only the last `queue_size` are kept.

    Args:
        dim: Projection size d.
        queue_size: K, default 8192 (paper).
        temperature: tau, default 0.07 (paper).
        normalize: L2-normalize projections (reference code); False = raw dot.
        in_batch_negatives: Also contrast against the batch's other positives.
        seed: Seed of the queues' random initial unit vectors.
        remove_hits: With ids passed to `call`, leave the queue rows of each
            positive's own id out of its softmax (see the module docstring);
            False (default) = the paper's loss.

    Shapes:
        `[B, d]` user and item projections (and optional `[B]` int ids) -> scalar
        loss.

    Example:

        loss_fn = InfoNCEQueueLoss(dim=8, queue_size=32, remove_hits=True)
        u, x = tf.random.normal([4, 8]), tf.random.normal([4, 8])
        loss = loss_fn(u, x, update_queue=True)  # scalar; queues now hold u, x
        users, items = tf.constant([3, 1, 4, 1]), tf.constant([5, 9, 2, 6])
        loss = loss_fn(u, x, update_queue=True, user_ids=users, item_ids=items)
    """

    def __init__(self, dim: int, queue_size: int = 8192, temperature: float = 0.07,
                 normalize: bool = True, in_batch_negatives: bool = False, seed: int = 0,
                 remove_hits: bool = False, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        for name, value in (("dim", dim), ("queue_size", queue_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or value < 1:
                raise ValueError(f"InfoNCEQueueLoss {name} must be an int >= 1, got "
                                 f"{value!r}.")
        if not temperature > 0:
            raise ValueError(f"InfoNCEQueueLoss temperature must be > 0, got "
                             f"{temperature!r}.")
        self.dim, self.queue_size = int(dim), int(queue_size)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.seed = int(seed)
        self.remove_hits = bool(remove_hits)
        self.user_queue_ids = tf.Variable(tf.fill([self.queue_size], tf.constant(-1, tf.int64)),
                                          trainable=False, name="user_queue_ids")
        self.item_queue_ids = tf.Variable(tf.fill([self.queue_size], tf.constant(-1, tf.int64)),
                                          trainable=False, name="item_queue_ids")
        self.user_queue = tf.Variable(random_unit_rows(self.queue_size, self.dim, self.seed),
                                      trainable=False, name="user_queue")
        self.item_queue = tf.Variable(
            random_unit_rows(self.queue_size, self.dim, self.seed + 1),
            trainable=False, name="item_queue")
        self.queue_pointer = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                         name="queue_pointer")

    def call(self, user_projection: tf.Tensor, item_projection: tf.Tensor,
             update_queue: bool = False, user_ids: Any = None,
             item_ids: Any = None) -> tf.Tensor:
        """`L_u + L_x` against the current queues; then enqueue if `update_queue`.

        Args:
            user_projection: `[B, d]` u = g_u(f(u)).
            item_projection: `[B, d]` x = g_x(f(x)).
            update_queue: Write this batch into the queues after the loss.
            user_ids: Optional `[B]` int user ids (with `item_ids`): queue hits are
                removed (with `remove_hits`) and the ids are enqueued.
            item_ids: Optional `[B]` int item ids.

        Returns:
            Scalar float32 loss (mean over the batch, summed over both directions).
        """
        if (user_ids is None) != (item_ids is None):
            raise ValueError("InfoNCEQueueLoss user_ids and item_ids go together (both "
                             "or neither).")
        user_projection = tf.convert_to_tensor(user_projection)
        item_projection = tf.convert_to_tensor(item_projection)
        for name, value in (("user_projection", user_projection),
                            ("item_projection", item_projection)):
            if value.shape.rank != 2 or value.shape[-1] not in (None, self.dim):
                raise ValueError(f"InfoNCEQueueLoss {name} must be [B, {self.dim}], got "
                                 f"shape {value.shape}.")
        ids: Dict[str, Any] = {}
        if user_ids is not None and self.remove_hits:
            ids = dict(user_ids=user_ids, item_ids=item_ids,
                       user_queue_ids=tf.identity(self.user_queue_ids),
                       item_queue_ids=tf.identity(self.item_queue_ids))
        loss = symmetric_info_nce(user_projection, item_projection,
                                  tf.identity(self.user_queue), tf.identity(self.item_queue),
                                  self.temperature, self.normalize, self.in_batch_negatives,
                                  **ids)
        if update_queue:
            with tf.control_dependencies([loss]):
                self.enqueue(user_projection, item_projection, user_ids, item_ids)
        return loss

    def enqueue(self, user_projection: tf.Tensor, item_projection: tf.Tensor,
                user_ids: Any = None, item_ids: Any = None) -> None:
        """Writes `[B, d]` projections (normalized if `normalize`) into the queues,
        and their `[B]` ids (-1 when not given) into the id queues."""
        pointer = tf.identity(self.queue_pointer)
        size = tf.shape(user_projection, out_type=tf.int64)[0]
        no_ids = tf.fill([size], tf.constant(-1, tf.int64))
        for queue, queue_ids, value, value_ids in (
                (self.user_queue, self.user_queue_ids, user_projection, user_ids),
                (self.item_queue, self.item_queue_ids, item_projection, item_ids)):
            rows = tf.stop_gradient(tf.cast(value, tf.float32))
            if self.normalize:
                rows = tf.math.l2_normalize(rows, axis=1)
            row_ids = no_ids if value_ids is None else tf.cast(
                tf.reshape(value_ids, [-1]), tf.int64)
            batch = tf.shape(rows, out_type=tf.int64)[0]
            kept = tf.minimum(batch, self.queue_size)
            rows, row_ids = rows[batch - kept:], row_ids[batch - kept:]
            index = (pointer + batch - kept + tf.range(kept, dtype=tf.int64)) % self.queue_size
            queue.scatter_update(tf.IndexedSlices(rows, index))
            queue_ids.scatter_update(tf.IndexedSlices(row_ids, index))
        self.queue_pointer.assign(
            (pointer + tf.shape(user_projection, out_type=tf.int64)[0]) % self.queue_size)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, queue_size=self.queue_size,
                      temperature=self.temperature, normalize=self.normalize,
                      in_batch_negatives=self.in_batch_negatives, seed=self.seed,
                      remove_hits=self.remove_hits)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class BYOLCosineLoss(tf.keras.layers.Layer):
    """FELRec-P's symmetric BYOL loss (eqs. 3-4) as a weightless layer.

    `byol(h_u(u), sg(x)) + byol(h_x(x), sg(u))`, `byol(p, t) = mean(2 - 2 cos(p, t))`.

    Shapes:
        four `[B, d]` tensors -> scalar loss in [0, 8].

    Example:

        loss = BYOLCosineLoss()(user_prediction, item_projection,
                                item_prediction, user_projection)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, user_prediction: tf.Tensor, item_projection: tf.Tensor,
             item_prediction: tf.Tensor, user_projection: tf.Tensor) -> tf.Tensor:
        """Returns the scalar loss; no gradient reaches the two projections."""
        return symmetric_byol_loss(user_prediction, item_projection, item_prediction,
                                   user_projection)


def felrec_loss(variant: str, dim: int, queue_size: int = 8192, temperature: float = 0.07,
                **kwargs: Any) -> tf.keras.layers.Layer:
    """`InfoNCEQueueLoss(dim, ...)` for variant "q", `BYOLCosineLoss()` for "p"."""
    if variant == "q":
        return InfoNCEQueueLoss(dim, queue_size, temperature, **kwargs)
    if variant == "p":
        return BYOLCosineLoss(**kwargs)
    raise ValueError(f"FELRec variant must be 'q' or 'p', got {variant!r}.")
