"""FELRec (Weimann & Conrad, "Forget embedding layers", §2.3 and §2.5): encoder and heads.

* `FELRecEncoder` (§2.3, the shared f_u = f_x): a bidirectional Transformer encoder
  over a sequence of cached representations (a user's past items, or an item's past
  users), a type embedding telling the two apart, mean pooling over the real
  positions and a linear layer. Its output is the new representation that goes back
  into the `RepresentationCache` (`tfrec_proxy.layers.felrec_cache`), so it has no
  table sized by the number of users or items.
* `ProjectionHead` (§2.5, g_u / g_x): Dense -> BatchNorm -> ReLU -> Dense.
* `PredictionHead` (§2.5, FELRec-P's BYOL predictors h_u / h_x): the same MLP with
  the bottleneck sizes.

Where the paper is silent the reference code (github.com/kweimann/FELRec) decides:
inputs are scaled by sqrt(d) and get a fixed sinusoidal position encoding counted
from the most recent position (position 0 at the right end of a left-padded
sequence), then dropout and a LayerNorm; the blocks are post-norm (Vaswani et al.)
with bias-free attention projections; the type embedding is added before scaling;
every sequence with fewer than L real positions also covers one padding slot (a
zero vector plus the type embedding), the position just left of its oldest real one
(`padding_slot=True`, the reference's `BidirectionalMaskedSessionDataset` mask), so a
sequence with no real position is encoded from that slot alone and a first
interaction gets a learned "empty" representation. With `padding_slot=False` only
empty sequences get the slot.
"""

import math
from typing import Any, Dict, Optional, Union

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.registry import ENCODERS

ITEMS_OF_USER = 0  # sequence_type: the items of a user (its encoding is the user's)
USERS_OF_ITEM = 1  # sequence_type: the users of an item (its encoding is the item's)
VARIANTS = ("q", "p")  # FELRec-Q (InfoNCE with queues), FELRec-P (BYOL-style)
NORMALIZATIONS = ("batch", "layer")

SequenceType = Union[int, tf.Tensor]


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
    """`[num_positions, dim]` float32 Transformer position encoding (sin even, cos odd)."""
    position = np.arange(num_positions, dtype=np.float64)[:, None]
    rate = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(math.log(10000.0) / dim))
    table = np.zeros([num_positions, dim], np.float64)
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate)
    return table.astype(np.float32)


def _check_positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner} {name} must be an int >= 1, got {value!r}.")


def _check_dropout(owner: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner} dropout must be in [0, 1), got {dropout!r}.")


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class FELRecEncoderLayer(tf.keras.layers.Layer):
    """One post-norm Transformer encoder layer, bidirectional, padding keys masked.

    `x = LN(x + Dropout(MHA(x, x, x)))`, then `LN(x + Dropout(W2 Dropout(ReLU(W1 x))))`.

    Args:
        dim: Model width d (input and output size); divisible by `num_heads`.
        num_heads: Attention heads h.
        ff_dim: Inner width d_ff of the feed-forward layer.
        dropout: Dropout rate P_drop.

    Shapes:
        `[B, L, d]` states and `[B, L]` bool mask (True at real positions) ->
        `[B, L, d]`.

    Example:

        layer = FELRecEncoderLayer(dim=16, num_heads=4, ff_dim=32)
        out = layer(tf.random.normal([2, 5, 16]), mask=tf.ones([2, 5], tf.bool))
    """

    def __init__(self, dim: int = 128, num_heads: int = 4, ff_dim: int = 256,
                 dropout: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive("FELRecEncoderLayer", dim=dim, num_heads=num_heads, ff_dim=ff_dim)
        _check_dropout("FELRecEncoderLayer", dropout)
        if dim % num_heads:
            raise ValueError(f"FELRecEncoderLayer dim={dim} must be divisible by "
                             f"num_heads={num_heads}.")
        self.dim, self.num_heads, self.ff_dim, self.dropout = dim, num_heads, ff_dim, dropout
        self._attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=dim // num_heads, use_bias=False)
        self._attention_dropout = tf.keras.layers.Dropout(dropout)
        self._attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-5)
        self._ffn_hidden = tf.keras.layers.Dense(ff_dim, activation="relu")
        self._ffn_hidden_dropout = tf.keras.layers.Dropout(dropout)
        self._ffn_out = tf.keras.layers.Dense(dim)
        self._ffn_dropout = tf.keras.layers.Dropout(dropout)
        self._ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-5)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None,
             training: Optional[bool] = None) -> tf.Tensor:
        """Encodes `[B, L, d]` states; each position attends to every real position."""
        attention_mask = None if mask is None else mask[:, tf.newaxis, :]
        attended = self._attention(inputs, inputs, attention_mask=attention_mask,
                                   training=training)
        attended = self._attention_dropout(attended, training=training)
        x = self._attention_norm(inputs + attended)
        hidden = self._ffn_hidden_dropout(self._ffn_hidden(x), training=training)
        return self._ffn_norm(x + self._ffn_dropout(self._ffn_out(hidden), training=training))

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, ff_dim=self.ff_dim,
                      dropout=self.dropout)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class FELRecEncoder(tf.keras.layers.Layer):
    """FELRec's shared encoder: `[B, L, d]` cached vectors -> `[B, d]` representation.

    `x = (v * m + type) * sqrt(d) + PE_reversed`, dropout, LayerNorm, `num_layers`
    `FELRecEncoderLayer`s, `mean over real positions`, Dense(d). `m` zeroes the
    padded positions; `type` is the learned type embedding of `sequence_type`
    (`ITEMS_OF_USER` = 0 for a user's items, `USERS_OF_ITEM` = 1 for an item's users);
    `PE_reversed[j]` is the sinusoidal encoding of position `L - 1 - j` (0 = most
    recent). Its weights (type embedding, blocks, output Dense) do not depend on how
    many users or items exist.

    Args:
        dim: Model width d (also the cached representation size), default 128.
        num_layers: Encoder layers N, default 3.
        num_heads: Attention heads h, default 4.
        ff_dim: Feed-forward width d_ff, default 256.
        dropout: P_drop, default 0.1.
        num_positions: Longest sequence the position encoding covers (the paper's
            inputs have up to 64 entities).
        positional_encoding: Add the sinusoidal position encoding (reference code).
        type_embedding: Add the type embedding (off: the paper's FELRec-Q-noType).
        padding_slot: A sequence with fewer than L real positions also attends to and
            pools one padding slot, just left of its oldest real position (the
            reference code's mask; default). False: only a sequence with no real
            position gets it (its last position).

    Shapes:
        vectors `[B, L, d]`, mask `[B, L]` bool (True at real positions, None = all),
        sequence_type int or `[B]` int in {0, 1} -> `[B, d]`.

    Example:

        encoder = FELRecEncoder(dim=16, num_layers=1, num_heads=2, ff_dim=32)
        vectors = tf.random.normal([2, 4, 16])
        mask = tf.constant([[False, True, True, True], [False, False, False, False]])
        users = encoder(vectors, mask, ITEMS_OF_USER)  # [2, 16]; row 1: empty history
    """

    def __init__(self, dim: int = 128, num_layers: int = 3, num_heads: int = 4,
                 ff_dim: int = 256, dropout: float = 0.1, num_positions: int = 512,
                 positional_encoding: bool = True, type_embedding: bool = True,
                 padding_slot: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive("FELRecEncoder", dim=dim, num_layers=num_layers,
                        num_heads=num_heads, ff_dim=ff_dim, num_positions=num_positions)
        _check_dropout("FELRecEncoder", dropout)
        if positional_encoding and dim % 2:
            raise ValueError(f"FELRecEncoder dim must be even with the sinusoidal "
                             f"positional_encoding, got dim={dim}.")
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.ff_dim, self.dropout, self.num_positions = ff_dim, dropout, num_positions
        self.positional_encoding = bool(positional_encoding)
        self.type_embedding = bool(type_embedding)
        self.padding_slot = bool(padding_slot)
        # numpy, not a tensor: a constant of whatever graph calls the layer.
        self._positions = sinusoidal_positions(num_positions, dim) \
            if positional_encoding else None
        self._type_embedding = tf.keras.layers.Embedding(
            2, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=1.0),
            name="type_embedding") if type_embedding else None
        self._input_dropout = tf.keras.layers.Dropout(dropout)
        self._input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-5)
        self.blocks = [FELRecEncoderLayer(dim, num_heads, ff_dim, dropout, name=f"layer_{i}")
                       for i in range(num_layers)]
        self._output = tf.keras.layers.Dense(dim, name="output")

    def _type_ids(self, sequence_type: SequenceType, batch: tf.Tensor) -> tf.Tensor:
        if isinstance(sequence_type, (int, np.integer)) and not isinstance(sequence_type,
                                                                           bool):
            if sequence_type not in (ITEMS_OF_USER, USERS_OF_ITEM):
                raise ValueError(f"FELRecEncoder sequence_type must be {ITEMS_OF_USER} "
                                 f"(items of a user) or {USERS_OF_ITEM} (users of an "
                                 f"item), got {sequence_type!r}.")
            return tf.fill([batch], tf.constant(int(sequence_type), tf.int32))
        types = tf.convert_to_tensor(sequence_type)
        if not types.dtype.is_integer or types.shape.rank not in (0, 1):
            raise ValueError(f"FELRecEncoder sequence_type must be an int or an int [B] "
                             f"tensor, got dtype {types.dtype.name} shape {types.shape}.")
        types = tf.cast(types, tf.int32)
        if tf.executing_eagerly():
            bad = np.setdiff1d(types.numpy().reshape(-1), [ITEMS_OF_USER, USERS_OF_ITEM])
            if bad.size:
                raise ValueError(f"FELRecEncoder sequence_type values must be 0 or 1, "
                                 f"got {bad[:10].tolist()}.")
        else:
            check = tf.debugging.assert_equal(
                tf.reduce_all((types == 0) | (types == 1)), True,
                message="FELRecEncoder sequence_type values must be 0 or 1")
            with tf.control_dependencies([check]):
                types = tf.identity(types)
        return types if types.shape.rank == 1 else tf.fill([batch], types)

    def _checked(self, vectors: tf.Tensor, mask: Optional[tf.Tensor]) -> Any:
        vectors = tf.convert_to_tensor(vectors)
        if vectors.shape.rank != 3 or vectors.shape[-1] not in (None, self.dim):
            raise ValueError(f"FELRecEncoder expects vectors of shape [B, L, {self.dim}], "
                             f"got {vectors.shape}.")
        length = vectors.shape[1]
        if self.positional_encoding and length is not None and length > self.num_positions:
            raise ValueError(f"FELRecEncoder got sequences of length {length}; its "
                             f"position encoding covers num_positions="
                             f"{self.num_positions}.")
        if mask is None:
            mask = tf.ones(tf.shape(vectors)[:2], tf.bool)
        mask = tf.convert_to_tensor(mask)
        if mask.shape.rank != 2 or not mask.shape.is_compatible_with(vectors.shape[:2]):
            raise ValueError(f"FELRecEncoder mask must be [B, L] = {vectors.shape[:2]}, got "
                             f"{mask.shape}.")
        return tf.cast(vectors, self.compute_dtype), tf.cast(mask, tf.bool)

    def call(self, vectors: tf.Tensor, mask: Optional[tf.Tensor] = None,
             sequence_type: SequenceType = ITEMS_OF_USER,
             training: Optional[bool] = None) -> tf.Tensor:
        """Encodes sequences of cached representations into new representations.

        Args:
            vectors: `[B, L, d]` cached representations, left-padded.
            mask: `[B, L]` bool, True at real positions (padding False), real
                positions at the right end. A row with no real position is encoded
                from its last position alone; with `padding_slot` a row with fewer
                than L real positions also covers the position left of its first.
            sequence_type: `ITEMS_OF_USER` (0) or `USERS_OF_ITEM` (1), one for all
                rows or a `[B]` int tensor.
            training: Keras training flag (dropout).

        Returns:
            `[B, d]` representations.
        """
        vectors, mask = self._checked(vectors, mask)
        batch, length = tf.shape(vectors)[0], tf.shape(vectors)[1]
        x = vectors * tf.cast(mask, vectors.dtype)[:, :, tf.newaxis]  # padding -> 0
        mask = tf.logical_or(mask, self._slot(mask, length))
        weights = tf.cast(mask, vectors.dtype)[:, :, tf.newaxis]
        if self._type_embedding is not None:
            types = self._type_embedding(self._type_ids(sequence_type, batch))
            x = x + tf.cast(types, x.dtype)[:, tf.newaxis, :]
        x = x * tf.cast(math.sqrt(self.dim), x.dtype)
        if self._positions is not None:
            positions = tf.constant(self._positions, dtype=x.dtype)[:length]
            x = x + tf.reverse(positions, [0])
        x = self._input_norm(self._input_dropout(x, training=training))
        for block in self.blocks:
            x = block(x, mask=mask, training=training)
        pooled = tf.reduce_sum(x * weights, axis=1) / tf.reduce_sum(weights, axis=1)
        return self._output(pooled)

    def _slot(self, mask: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        """`[B, L]` bool: the padding slot of each row (at most one True)."""
        empty = tf.logical_not(tf.reduce_any(mask, axis=1, keepdims=True))
        if not self.padding_slot:  # the "empty" slot only: the last position
            return tf.logical_and(empty, tf.equal(tf.range(length), length - 1)[None, :])
        # Left of the first real position (argmax finds the first True); -1 (none)
        # when the row is full.
        first = tf.argmax(tf.cast(mask, tf.int32), axis=1, output_type=tf.int32)
        slot = tf.where(empty[:, 0], length - 1, first - 1)
        return tf.equal(tf.range(length)[tf.newaxis, :], slot[:, tf.newaxis])

    def compute_mask(self, vectors: tf.Tensor, mask: Optional[tf.Tensor] = None) -> None:
        return None  # one vector per sequence: nothing left to mask

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_layers=self.num_layers, num_heads=self.num_heads,
                      ff_dim=self.ff_dim, dropout=self.dropout,
                      num_positions=self.num_positions,
                      positional_encoding=self.positional_encoding,
                      type_embedding=self.type_embedding,
                      padding_slot=self.padding_slot)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProjectionHead(tf.keras.layers.Layer):
    """FELRec's projection MLP g (§2.5): Dense -> BatchNorm -> ReLU -> Dense.

    FELRec-Q: hidden = output = d (the defaults, d = 128). FELRec-P: hidden 2d,
    output d / 2 (`projection_head("p", d)`). BatchNorm follows PyTorch's defaults
    (momentum 0.1 there = 0.9 here, epsilon 1e-5); `normalization="layer"` is the
    paper's -LN ablation.

    Args:
        hidden_dim: Width of the hidden layer.
        output_dim: Width of the output.
        normalization: "batch" (paper) or "layer".

    Shapes:
        `[B, d_in]` -> `[B, output_dim]`.

    Example:

        head = ProjectionHead(hidden_dim=16, output_dim=8)
        z = head(tf.random.normal([4, 16]), training=True)  # [4, 8]
    """

    def __init__(self, hidden_dim: int = 128, output_dim: int = 128,
                 normalization: str = "batch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        _check_positive(name, hidden_dim=hidden_dim, output_dim=output_dim)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"{name} normalization must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}.")
        self.hidden_dim, self.output_dim = hidden_dim, output_dim
        self.normalization = normalization
        self._hidden = tf.keras.layers.Dense(hidden_dim, name="hidden")
        self._norm = (tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
                      if normalization == "batch"
                      else tf.keras.layers.LayerNormalization(epsilon=1e-5))
        self._out = tf.keras.layers.Dense(output_dim, name="out")

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """`[B, d_in]` -> `[B, output_dim]` (batch statistics when training)."""
        if inputs.shape.rank != 2:
            raise ValueError(f"{type(self).__name__} expects [B, d] inputs, got shape "
                             f"{inputs.shape}.")
        hidden = self._norm(self._hidden(inputs), training=training)
        return self._out(tf.nn.relu(hidden))

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, output_dim=self.output_dim,
                      normalization=self.normalization)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class PredictionHead(ProjectionHead):
    """FELRec-P's BYOL predictor h (§2.5): the projection MLP, bottleneck sizes.

    Same layers as `ProjectionHead`; defaults are the paper's (d = 128): input
    d / 2 = 64 (a projection), hidden 2d = 256, output d / 2 = 64.

    Example:

        predictor = PredictionHead(hidden_dim=16, output_dim=4)
        p = predictor(tf.random.normal([4, 4]), training=True)  # [4, 4]
    """

    def __init__(self, hidden_dim: int = 256, output_dim: int = 64,
                 normalization: str = "batch", **kwargs: Any) -> None:
        super().__init__(hidden_dim, output_dim, normalization, **kwargs)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"FELRec variant must be one of {VARIANTS}, got {variant!r}.")


def projection_head(variant: str, dim: int = 128, normalization: str = "batch",
                    **kwargs: Any) -> ProjectionHead:
    """The paper's projection MLP for `variant` "q" (d -> d -> d) or "p" (2d, d/2)."""
    _check_variant(variant)
    if variant == "q":
        return ProjectionHead(dim, dim, normalization, **kwargs)
    return ProjectionHead(2 * dim, max(1, dim // 2), normalization, **kwargs)


def prediction_head(dim: int = 128, normalization: str = "batch",
                    **kwargs: Any) -> PredictionHead:
    """FELRec-P's predictor for model width `dim`: hidden 2d, output d / 2."""
    return PredictionHead(2 * dim, max(1, dim // 2), normalization, **kwargs)


@ENCODERS.register("felrec", trainer="tfrec_proxy.felrec_training")
def build_felrec_encoder(config: Any, context: Any, item_encoder: Any) -> None:
    """FELRec is not a query-tower encoder: its towers read a cache, not embedding
    tables, so it has its own training path (`tfrec_proxy.felrec_training`), which
    `tfrec_proxy.training.train` dispatches to for `--encoder felrec`."""
    raise ValueError("encoder 'felrec' has no two-tower query tower; train it with "
                     "tfrec_proxy.training.train (which dispatches to "
                     "tfrec_proxy.felrec_training) rather than build_model.")
