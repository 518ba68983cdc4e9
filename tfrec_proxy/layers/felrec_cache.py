"""FELRec's cache (Weimann & Conrad, §2.4): the embedding layer's non-trainable stand-in.

`RepresentationCache` keeps the latest representation the encoder computed for every
user and every item. It has no trainable weights and is never touched by gradients:
the training step writes its (stop-gradient) encoder outputs with `update`, reads
the histories' representations with `lookup`, and clears it with `reset` at every
epoch start (§2.4). Capacity grows (eagerly, `grow` / `ensure_capacity`) when new
users or items arrive after training, so nothing in it is sized at training time for
good.
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np

from tfrec_proxy._tf import tf

USER = "user"
ITEM = "item"
KINDS = (USER, ITEM)
PAD_INDEX = -1  # history padding: looked up as a zero vector, never written


def last_occurrences(ids: tf.Tensor) -> tf.Tensor:
    """`[B]` positions of the last occurrence of each distinct id in `[B]` ids.

    Scatter writes with repeated indices keep an arbitrary one; a batch in
    chronological order must keep its latest interaction's representation, so writes
    go through these positions.

    Example:

        last_occurrences(tf.constant([4, 2, 4]))  # [2, 1]: id 4 -> row 2, id 2 -> row 1
    """
    unique, index = tf.unique(ids)
    return tf.math.unsorted_segment_max(tf.range(tf.size(ids)), index, tf.size(unique))


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class RepresentationCache(tf.keras.layers.Layer):
    """Two non-trainable tables of cached representations: one for users, one for items.

    Layout: `user_table` `[num_users, dim]` and `item_table` `[num_items, dim]`
    float32 variables, row k holding entity index k (contiguous indices, e.g.
    `ChronologicalSplit.user_index`), plus `user_filled` / `item_filled` `[capacity]`
    int8 variables (1 where a representation was written since the last `reset`).
    Both tables have a dynamic first dimension, so `grow` reallocates them in place
    (eagerly) and functions traced before still work after it.

    Entities without a representation (never written, or cleared by `reset`) are
    looked up as the zero vector, as in the paper (§2.4, "Non-existent entries are
    represented as a zero vector"): they stay real positions of the encoder's input
    (only padding, index -1, is masked), and the type embedding added by the encoder
    tells the model which kind of entity is missing. The filled mask is for callers
    (e.g. the catalogue of items with a representation at evaluation), not for the
    encoder.

    Args:
        dim: Representation size (the encoder's `dim`).
        num_users: Initial user capacity (rows of the user table).
        num_items: Initial item capacity.

    Shapes:
        `lookup(kind, ids)`: `[...]` int ids (-1 = padding) -> `[..., dim]` float32.
        `update(kind, ids, vectors)`: `[B]` ids >= 0, `[B, dim]` vectors.

    Example:

        cache = RepresentationCache(dim=4, num_users=3, num_items=5)
        cache.update("item", tf.constant([2, 4]), tf.ones([2, 4]))
        cache.lookup("item", tf.constant([[-1, 2, 0]]))  # [1, 3, 4]: 0, 1, 0 rows
        cache.grow(num_items=8)  # 3 new items arrive; their rows are 0
        cache.reset()  # every epoch starts from an empty cache
    """

    def __init__(self, dim: int, num_users: int, num_items: int, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"  # representations are stored in float32 always
        super().__init__(**kwargs)
        for name, value, low in (("dim", dim, 1), ("num_users", num_users, 0),
                                 ("num_items", num_items, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or value < low:
                raise ValueError(f"RepresentationCache {name} must be an int >= {low}, "
                                 f"got {value!r}.")
        self.dim = int(dim)
        self._tables: Dict[str, tf.Variable] = {}
        self._filled: Dict[str, tf.Variable] = {}
        for kind, size in ((USER, int(num_users)), (ITEM, int(num_items))):
            table = tf.Variable(tf.zeros([size, self.dim], tf.float32), trainable=False,
                                shape=tf.TensorShape([None, self.dim]),
                                name=f"{kind}_table")
            filled = tf.Variable(tf.zeros([size], tf.int8), trainable=False,
                                 shape=tf.TensorShape([None]), name=f"{kind}_filled")
            setattr(self, f"{kind}_table", table)  # tracked as non-trainable weights
            setattr(self, f"{kind}_filled", filled)
            self._tables[kind] = table
            self._filled[kind] = filled

    @property
    def bytes_per_entity(self) -> int:
        """Bytes one cached user or item takes: `4 * dim` (float32 row) + 1 (flag)."""
        return 4 * self.dim + 1

    @property
    def num_users(self) -> int:
        """Current user capacity (eager)."""
        return self.capacity(USER)

    @property
    def num_items(self) -> int:
        """Current item capacity (eager)."""
        return self.capacity(ITEM)

    def _kind(self, kind: str) -> Tuple[tf.Variable, tf.Variable]:
        if kind not in KINDS:
            raise ValueError(f"RepresentationCache kind must be one of {KINDS}, got "
                             f"{kind!r}.")
        return self._tables[kind], self._filled[kind]

    def capacity(self, kind: str) -> int:
        """Rows of the `kind` table (eager; in a graph use `tf.shape(table)[0]`)."""
        table, _ = self._kind(kind)
        return int(tf.shape(table)[0])

    def _checked_ids(self, kind: str, ids: Any, allow_padding: bool) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise ValueError(f"RepresentationCache {kind} ids must be integers, got "
                             f"dtype {ids.dtype.name}.")
        ids = tf.cast(ids, tf.int64)
        table, _ = self._kind(kind)
        low = PAD_INDEX if allow_padding else 0
        what = "-1 (padding) or in" if allow_padding else "in"
        if tf.executing_eagerly():
            values = ids.numpy()
            bad = values[(values < low) | (values >= self.capacity(kind))]
            if bad.size:
                raise ValueError(
                    f"RepresentationCache {kind} ids must be {what} "
                    f"[0, {self.capacity(kind)}) (the {kind} capacity; call "
                    f"grow/ensure_capacity for new {kind}s), got {bad[:10].tolist()}.")
            return ids
        size = tf.shape(table, out_type=tf.int64)[0]
        checks = [tf.debugging.assert_greater_equal(
                      ids, tf.constant(low, tf.int64),
                      message=f"RepresentationCache {kind} ids below {low}"),
                  tf.debugging.assert_less(
                      ids, size, message=f"RepresentationCache {kind} ids at or past the "
                      f"{kind} capacity (grow the cache for new {kind}s)")]
        with tf.control_dependencies(checks):
            return tf.identity(ids)

    def lookup(self, kind: str, ids: Any) -> tf.Tensor:
        """Cached representations of `[...]` ids (-1 = padding) -> `[..., dim]` float32.

        Padding and entities without a representation give the zero vector.

        Raises:
            ValueError: unknown `kind`, non-integer ids, or ids outside
                `[-1, capacity)` (eager; in a graph an `InvalidArgumentError`).
        """
        table, _ = self._kind(kind)
        ids = self._checked_ids(kind, ids, allow_padding=True)
        rows = tf.gather(table, tf.maximum(ids, 0))
        return rows * tf.cast(ids >= 0, tf.float32)[..., tf.newaxis]

    def is_filled(self, kind: str, ids: Any) -> tf.Tensor:
        """`[...]` bool: True where the id has a representation (padding: False)."""
        _, filled = self._kind(kind)
        ids = self._checked_ids(kind, ids, allow_padding=True)
        return tf.logical_and(ids >= 0, tf.gather(filled, tf.maximum(ids, 0)) > 0)

    def update(self, kind: str, ids: Any, vectors: Any) -> None:
        """Writes `[B, dim]` representations for `[B]` ids (no gradient flows).

        A repeated id keeps its last row's vector (the latest interaction in a
        chronological batch).

        Raises:
            ValueError: bad kind or ids, or vectors not `[B, dim]`.
        """
        table, filled = self._kind(kind)
        ids = tf.reshape(self._checked_ids(kind, ids, allow_padding=False), [-1])
        vectors = tf.stop_gradient(tf.cast(tf.convert_to_tensor(vectors), tf.float32))
        if vectors.shape.rank != 2 or (vectors.shape[-1] is not None
                                       and vectors.shape[-1] != self.dim):
            raise ValueError(f"RepresentationCache.update({kind!r}) needs [B, {self.dim}] "
                             f"vectors, got shape {vectors.shape}.")
        if (ids.shape[0] is not None and vectors.shape[0] is not None
                and ids.shape[0] != vectors.shape[0]):
            raise ValueError(f"RepresentationCache.update({kind!r}) got {ids.shape[0]} "
                             f"ids but {vectors.shape[0]} vectors.")
        keep = last_occurrences(ids)
        ids = tf.gather(ids, keep)
        table.scatter_update(tf.IndexedSlices(tf.gather(vectors, keep), ids))
        filled.scatter_update(tf.IndexedSlices(tf.ones_like(ids, tf.int8), ids))

    def reset(self, kind: Optional[str] = None) -> None:
        """Clears every representation (of one `kind`, or of both when None)."""
        for name in (KINDS if kind is None else (kind,)):
            table, filled = self._kind(name)
            table.assign(tf.zeros_like(table))
            filled.assign(tf.zeros_like(filled))

    def grow(self, num_users: Optional[int] = None, num_items: Optional[int] = None) -> None:
        """Enlarges the tables (eagerly) to the given capacities; new rows are empty.

        Raises:
            RuntimeError: called inside a `tf.function`.
            ValueError: a capacity below the current one.
        """
        if not tf.executing_eagerly():
            raise RuntimeError("RepresentationCache.grow runs eagerly only (it "
                               "reallocates the tables); call it outside tf.function.")
        for kind, size in ((USER, num_users), (ITEM, num_items)):
            if size is None:
                continue
            table, filled = self._kind(kind)
            current = self.capacity(kind)
            if not isinstance(size, (int, np.integer)) or size < current:
                raise ValueError(f"RepresentationCache.grow: num_{kind}s must be an int "
                                 f">= the current {kind} capacity {current}, got {size!r}.")
            extra = int(size) - current
            if extra:
                table.assign(tf.concat([table, tf.zeros([extra, self.dim])], 0))
                filled.assign(tf.concat([filled, tf.zeros([extra], tf.int8)], 0))

    def ensure_capacity(self, kind: str, size: int) -> None:
        """Grows the `kind` table to at least `size` rows (eagerly; no-op if it has)."""
        self._kind(kind)
        if size > self.capacity(kind):
            self.grow(**{f"num_{kind}s": int(size)})

    def num_filled(self, kind: str) -> int:
        """How many `kind` entities have a representation (eager)."""
        _, filled = self._kind(kind)
        return int(tf.reduce_sum(tf.cast(filled, tf.int64)))

    def filled_ids(self, kind: str) -> np.ndarray:
        """`[n]` int64 ids of the `kind` entities that have a representation (eager)."""
        _, filled = self._kind(kind)
        return np.flatnonzero(filled.numpy() > 0)

    def call(self, ids: tf.Tensor, kind: str = ITEM) -> tf.Tensor:
        """`lookup(kind, ids)`: `[...]` ids -> `[..., dim]` float32."""
        return self.lookup(kind, ids)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_users=self.num_users, num_items=self.num_items)
        return config
