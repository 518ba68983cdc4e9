"""FELRec as a Keras model (Weimann & Conrad, §2): cache -> shared encoder -> heads -> loss.

`FELRecModel.train_step` follows Figure 1 for one batch of interactions in time
order: it looks the user's past items and the item's past users up in the
`RepresentationCache`, encodes both sequences with the shared `FELRecEncoder`,
projects them (and, for FELRec-P, predicts), computes the variant's loss
(`InfoNCEQueueLoss` or `BYOLCosineLoss`), applies the gradients, and then writes the
new (stop-gradient) user and item representations into the cache; FELRec-Q also
pushes the batch's projections into its queues. Train with an unshuffled dataset of
`ChronologicalPart.features()` (`tfrec_proxy.data.chronological`) and the
`ResetCache` callback, which empties the cache at every epoch start (§2.4).
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.felrec_losses import felrec_loss
from tfrec_proxy.layers.felrec import (ITEMS_OF_USER, USERS_OF_ITEM, VARIANTS, FELRecEncoder,
                                       prediction_head, projection_head)
from tfrec_proxy.layers.felrec_cache import ITEM, USER, RepresentationCache

BATCH_KEYS = ("user", "item", "user_history", "item_history")


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class FELRecModel(tf.keras.Model):
    """FELRec-Q (`variant="q"`) or FELRec-P (`variant="p"`) with its cache.

    Batches are dicts (the order of interactions is the protocol: never shuffle):
    `user` `[B]` and `item` `[B]` int indices, `user_history` `[B, L]` int item
    indices of the user's previous items and `item_history` `[B, L]` int user indices
    of the item's previous users, oldest first, left-padded with -1. Indices must be
    below the cache capacities (`ensure_capacity` before feeding new entities).

    Trainable weights are the encoder's and the heads' only; the cache, the queues
    and the BatchNorm statistics are non-trainable.

    Args:
        num_users: Initial user capacity of the cache.
        num_items: Initial item capacity of the cache.
        variant: "q" (InfoNCE with queues) or "p" (BYOL-style).
        dim: Model width d (paper 128).
        num_layers, num_heads, ff_dim, dropout, num_positions, positional_encoding,
            type_embedding, padding_slot: `FELRecEncoder`'s arguments (paper 3, 4,
            256, 0.1; the reference code's padding slot).
        queue_size: FELRec-Q queue length K (paper 8192).
        temperature: FELRec-Q tau (paper 0.07).
        share_heads: One projection (and prediction) MLP for users and items (the
            paper's -shareMLP ablation).
        normalization: "batch" (paper) or "layer" in the MLPs (the -LN ablation).
        remove_queue_hits: FELRec-Q: leave the queue rows of a batch row's own user
            (item) out of its softmax (`InfoNCEQueueLoss(remove_hits=...)`); False
            (default) is the paper's loss.

    Example:

        model = FELRecModel(num_users=100, num_items=50, dim=16, num_layers=1,
                            num_heads=2, ff_dim=32, queue_size=64)
        model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.9))
        data = tf.data.Dataset.from_tensor_slices(split.train.features()).batch(32)
        model.fit(data, epochs=3, shuffle=False, callbacks=[ResetCache()])
    """

    def __init__(self, num_users: int, num_items: int, variant: str = "q", dim: int = 128,
                 num_layers: int = 3, num_heads: int = 4, ff_dim: int = 256,
                 dropout: float = 0.1, num_positions: int = 512,
                 positional_encoding: bool = True, type_embedding: bool = True,
                 padding_slot: bool = True, queue_size: int = 8192, temperature: float = 0.07,
                 share_heads: bool = False, normalization: str = "batch",
                 remove_queue_hits: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"FELRecModel variant must be one of {VARIANTS}, got "
                             f"{variant!r}.")
        self.variant, self.dim = variant, dim
        self.share_heads, self.normalization = bool(share_heads), normalization
        self.queue_size, self.temperature = queue_size, temperature
        self.remove_queue_hits = bool(remove_queue_hits)
        self._encoder_config = dict(
            num_layers=num_layers, num_heads=num_heads, ff_dim=ff_dim, dropout=dropout,
            num_positions=num_positions, positional_encoding=positional_encoding,
            type_embedding=type_embedding, padding_slot=padding_slot)
        self.cache = RepresentationCache(dim, num_users, num_items, name="cache")
        self.encoder = FELRecEncoder(dim, name="encoder", **self._encoder_config)
        self.user_projection = projection_head(variant, dim, normalization,
                                               name="user_projection")
        self.item_projection = self.user_projection if share_heads else projection_head(
            variant, dim, normalization, name="item_projection")
        self.user_prediction = self.item_prediction = None
        if variant == "p":
            self.user_prediction = prediction_head(dim, normalization, name="user_prediction")
            self.item_prediction = self.user_prediction if share_heads else prediction_head(
                dim, normalization, name="item_prediction")
        loss_options = {"remove_hits": self.remove_queue_hits} if variant == "q" else {}
        self.objective = felrec_loss(variant, self.user_projection.output_dim, queue_size,
                                     temperature, name="objective", **loss_options)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]

    @staticmethod
    def _batch(data: Any) -> Dict[str, tf.Tensor]:
        if isinstance(data, (tuple, list)):
            data = data[0]
        if not isinstance(data, dict) or any(key not in data for key in BATCH_KEYS):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"FELRecModel batches must be dicts with keys {BATCH_KEYS}, "
                             f"got {keys}.")
        return data

    def encode(self, batch: Dict[str, tf.Tensor],
               training: Optional[bool] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """New `[B, d]` user and item representations from the cached histories."""
        user_history = tf.convert_to_tensor(batch["user_history"])
        item_history = tf.convert_to_tensor(batch["item_history"])
        past_items = self.cache.lookup(ITEM, user_history)
        past_users = self.cache.lookup(USER, item_history)
        users = self.encoder(past_items, user_history >= 0, ITEMS_OF_USER, training=training)
        items = self.encoder(past_users, item_history >= 0, USERS_OF_ITEM, training=training)
        return users, items

    def loss_from_representations(self, users: tf.Tensor, items: tf.Tensor,
                                  training: Optional[bool] = None,
                                  update_queue: bool = False,
                                  batch: Optional[Dict[str, tf.Tensor]] = None) -> tf.Tensor:
        """The variant's loss on `[B, d]` representations (heads applied here).

        `batch` (the interactions' `user` / `item` ids) lets FELRec-Q remove queue
        hits and enqueue the ids."""
        user_projection = self.user_projection(users, training=training)
        item_projection = self.item_projection(items, training=training)
        if self.variant == "q":
            ids = {} if batch is None else {"user_ids": batch["user"],
                                            "item_ids": batch["item"]}
            return self.objective(user_projection, item_projection,
                                  update_queue=update_queue, **ids)
        return self.objective(self.user_prediction(user_projection, training=training),
                              item_projection,
                              self.item_prediction(item_projection, training=training),
                              user_projection)

    def write_cache(self, batch: Dict[str, tf.Tensor], users: tf.Tensor,
                    items: tf.Tensor) -> None:
        """Stores the batch's new representations (last occurrence of an id wins)."""
        self.cache.update(USER, batch["user"], tf.stop_gradient(users))
        self.cache.update(ITEM, batch["item"], tf.stop_gradient(items))

    def train_step(self, data: Any) -> Dict[str, tf.Tensor]:
        batch = self._batch(data)
        with tf.GradientTape() as tape:
            users, items = self.encode(batch, training=True)
            loss = self.loss_from_representations(users, items, training=True,
                                                  update_queue=True, batch=batch)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.write_cache(batch, users, items)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def make_train_function(self, force: bool = False) -> Any:
        """Keras's one-step train function, traced without autograph (`train_step`
        has no Python control flow on tensors; tracing is several times faster).
        One replica, one step per call: FELRec trains under the default strategy."""
        if self.train_function is not None and not force:
            return self.train_function

        def train_function(iterator: Any) -> Dict[str, tf.Tensor]:
            outputs = self.train_step(next(iterator))
            self._train_counter.assign_add(1)
            return outputs

        self.train_function = tf.function(train_function, autograph=False,
                                          reduce_retracing=True,
                                          jit_compile=bool(self._jit_compile))
        return self.train_function

    def test_step(self, data: Any) -> Dict[str, tf.Tensor]:
        """Online evaluation: encodes, scores the loss, keeps the cache up to date."""
        batch = self._batch(data)
        users, items = self.encode(batch, training=False)
        loss = self.loss_from_representations(users, items, training=False, batch=batch)
        self.write_cache(batch, users, items)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def call(self, inputs: Dict[str, tf.Tensor],
             training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
        """`{"user": [B, d], "item": [B, d]}` new representations; the cache is not
        written (use `train_step` / `test_step` / `write_cache` for that)."""
        users, items = self.encode(self._batch(inputs), training=training)
        return {"user": users, "item": items}

    def scores(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """`[B, K]` cosine similarities of cached users `[B]` and items `[K]` (§2.7)."""
        user_vectors = tf.math.l2_normalize(self.cache.lookup(USER, users), axis=-1)
        item_vectors = tf.math.l2_normalize(self.cache.lookup(ITEM, items), axis=-1)
        return tf.linalg.matmul(user_vectors, item_vectors, transpose_b=True)

    def reset_cache(self) -> None:
        """Empties the cache (every training epoch starts from scratch, §2.4)."""
        self.cache.reset()

    def ensure_capacity(self, num_users: int, num_items: int) -> None:
        """Grows the cache (eagerly) for new users and items."""
        self.cache.ensure_capacity(USER, num_users)
        self.cache.ensure_capacity(ITEM, num_items)

    def get_config(self) -> Dict[str, Any]:
        return dict(num_users=self.cache.num_users, num_items=self.cache.num_items,
                    variant=self.variant, dim=self.dim, queue_size=self.queue_size,
                    temperature=self.temperature, share_heads=self.share_heads,
                    normalization=self.normalization,
                    remove_queue_hits=self.remove_queue_hits, name=self.name,
                    **self._encoder_config)


class ResetCache(tf.keras.callbacks.Callback):
    """Calls `model.reset_cache()` at the start of every training epoch (§2.4).

    Example:

        model.fit(data, epochs=10, shuffle=False, callbacks=[ResetCache()])
    """

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self.model.reset_cache()


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of distinct rows of `[n, d]` vectors.

    1.0 means every row points the same way (collapsed representations), ~0 spread
    out; NaN with fewer than two rows. Zero rows count as cosine 0 with every row.
    Computed as `(||sum_i v_i||^2 - n) / (n (n - 1))` over the unit rows (O(n d)).

    Example:

        mean_pairwise_cosine(np.ones([3, 4]))  # 1.0
        mean_pairwise_cosine(np.eye(4))        # 0.0
    """
    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"mean_pairwise_cosine expects [n, d] vectors, got shape "
                         f"{vectors.shape}.")
    n = len(vectors)
    if n < 2:
        return float("nan")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    units = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return float((np.sum(units.sum(0) ** 2) - np.sum(units * units)) / (n * (n - 1)))


class CacheSpread(tf.keras.callbacks.Callback):
    """Logs, after each training epoch, how spread out the cached representations are:
    `cache_user_cosine` and `cache_item_cosine`, the mean pairwise cosine of (up to
    `sample` random) filled rows (`mean_pairwise_cosine`: 1 = collapsed).

    FELRec has no id features and empties its cache at every epoch start, so every
    entity starts from the encoder's output for zero vectors; these figures show
    whether training separates them. Place it before `OnlineValidation` (which
    writes validation representations into the cache).

    Example:

        model.fit(data, epochs=5, shuffle=False,
                  callbacks=[ResetCache(), CacheSpread(), validation])
    """

    def __init__(self, sample: int = 1024, seed: int = 0) -> None:
        super().__init__()
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 2:
            raise ValueError(f"CacheSpread sample must be an int >= 2, got {sample!r}.")
        self.sample, self.seed = sample, int(seed)

    def spread(self, kind: str) -> float:
        """The mean pairwise cosine of up to `sample` filled `kind` rows."""
        cache = self.model.cache
        rows = cache.filled_ids(kind)
        if len(rows) > self.sample:
            rows = np.random.default_rng(self.seed).choice(rows, self.sample, replace=False)
        return mean_pairwise_cosine(cache.lookup(kind, rows).numpy())

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if logs is not None:
            logs.update({f"cache_{kind}_cosine": self.spread(kind) for kind in (USER, ITEM)})
