"""SASRec (Kang & McAuley 2018): causal self-attention over scaled item embeddings.

* `AttentionBlock`: one attention block whose queries come from the hidden states
  and whose keys/values are a separate `[B, L, d]` tensor, then a position-wise
  feed-forward layer. SASRec's block is its self-attention case (keys/values = the
  block's own input); RAM (`tfrec_proxy.layers.ram`) passes the reused item
  representations E instead.
* `BlockEncoder`: `SelfAttentionEncoder`'s inputs (item ids, forward positions,
  OOV replacement, `item_encoder`), masks and config, with the blocks left to
  subclasses.
* `SASRecEncoder`: SASRec's encoder: `sqrt(d)`-scaled item embeddings + learned
  positions, dropout, blocks, padded positions zeroed after each, final LayerNorm.
"""

import math
from typing import Any, Dict, Optional, Tuple

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.encoders import SelfAttentionEncoder, embed_history_items
from tfrec_proxy.layers.proxy_geometry import UnitBallConstraint
from tfrec_proxy.registry import ENCODERS, ITEM_TOWERS


def zero_padding(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """`[B, L, d]` x with the rows where the `[B, L]` bool mask is False set to 0."""
    return x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class AttentionBlock(tf.keras.layers.Layer):
    """`x = base + MHA(LN(h), kv, kv)`, then `x' + FFN(LN(x))`, padded rows zeroed.

    `base` is `LN(h)` when `residual_from_normed_query` (SASRec's code: the
    residual starts from the layer-normed queries) and `h` otherwise (RAM's
    `g = h + attention`). `x'` is `LN(x)` when `ffn_residual_from_normed` (SASRec's
    code, `feedforward(normalize(seq))` adds its input, which is normed; the paper
    writes `x + FFN(LN(x))`) and `x` otherwise. Keys/values are not layer-normed (SASRec's
    `multihead_attention(queries=normalize(seq), keys=seq)`). Keras's
    `MultiHeadAttention` divides the logits by `sqrt(d / num_heads)` and has biases
    on its projections; with one head the scaling is RAM eq. 3's `sqrt(d)`.

    The feed-forward layer is two Dense layers of width d with ReLU between them
    (SASRec's two width-d convolutions, RAM eq. 4); dropout (SASRec's placement)
    acts on the attention weights, after the ReLU and after the second Dense layer.

    Args:
        dim: Model width d (input and output size).
        num_heads: Attention heads; each has `dim // num_heads` (at least 1)
            dimensions.
        dropout: Dropout rate.
        causal: Query i attends to keys `<= i` only.
        residual_from_normed_query: Start the attention residual from `LN(h)`
            (SASRec) instead of `h` (RAM).
        ffn_residual_from_normed: Start the feed-forward residual from `LN(x)`
            (SASRec's reference code) instead of `x`.

    Example:

        block = AttentionBlock(dim=16, num_heads=2, causal=True)
        hidden = tf.random.normal([2, 5, 16])
        out = block(hidden, hidden, mask=tf.ones([2, 5], tf.bool))  # [2, 5, 16]
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.0,
                 causal: bool = True, residual_from_normed_query: bool = True,
                 ffn_residual_from_normed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be >= 1, got dim={dim}, "
                             f"num_heads={num_heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.causal = causal
        self.residual_from_normed_query = residual_from_normed_query
        self.ffn_residual_from_normed = ffn_residual_from_normed
        self._attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=max(1, dim // num_heads), dropout=dropout)
        self._ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._ffn_hidden = tf.keras.layers.Dense(dim, activation="relu")
        self._ffn_out = tf.keras.layers.Dense(dim)
        self._hidden_dropout = tf.keras.layers.Dropout(dropout)
        self._residual_dropout = tf.keras.layers.Dropout(dropout)

    def call(self, hidden: tf.Tensor, keys_values: tf.Tensor,
             mask: Optional[tf.Tensor] = None, training: Optional[bool] = None) -> tf.Tensor:
        """Refines the hidden states by attending over `keys_values`.

        Args:
            hidden: `[B, L, d]` query-side states h.
            keys_values: `[B, L, d]` states attended over (h itself for
                self-attention, the item representations E for RAM).
            mask: `[B, L]` bool, True at real (non-padding) positions.
            training: Keras training flag (dropout).

        Returns:
            `[B, L, d]`; rows of padded positions are 0.
        """
        attention_mask = None if mask is None else mask[:, tf.newaxis, :]
        queries = self._attention_norm(hidden)
        attended = self._attention(queries, value=keys_values, key=keys_values,
                                   attention_mask=attention_mask,
                                   use_causal_mask=self.causal, training=training)
        x = (queries if self.residual_from_normed_query else hidden) + attended
        normed = self._ffn_norm(x)
        ffn = self._hidden_dropout(self._ffn_hidden(normed), training=training)
        base = normed if self.ffn_residual_from_normed else x
        x = base + self._residual_dropout(self._ffn_out(ffn), training=training)
        return x if mask is None else zero_padding(x, mask)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, dropout=self.dropout,
                      causal=self.causal,
                      residual_from_normed_query=self.residual_from_normed_query,
                      ffn_residual_from_normed=self.ffn_residual_from_normed)
        return config


class BlockEncoder(SelfAttentionEncoder):
    """Base of encoders that share `SelfAttentionEncoder`'s inputs, not its blocks.

    It keeps the parent's item table (or `item_encoder`), position embedding and
    its convention (position 0 at the oldest real item, clamped at
    `num_positions - 1`), OOV replacement, `compute_mask`, final LayerNorm and
    config, builds none of its `TransformerBlock`s, and adds `embed`. It builds
    `num_layers` `AttentionBlock`s with the subclass's `block_options`; subclasses
    define `call`. Arguments are `SelfAttentionEncoder`'s, except that `causal`
    defaults to True and `num_layers` must be >= 1.
    """

    block_options: Dict[str, Any] = {}  # AttentionBlock residual settings

    def __init__(self, vocab_size: int, dim: int = 16, max_len: int = 30,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1,
                 causal: bool = True, num_positions: Optional[int] = None,
                 oov_rate: float = 0.0, item_encoder: Optional[tf.keras.layers.Layer] = None,
                 **kwargs: Any) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        # num_layers=0: the parent creates no TransformerBlock; subclasses set blocks.
        super().__init__(vocab_size, dim, max_len, 0, num_heads, dropout, causal,
                         num_positions, oov_rate, item_encoder, **kwargs)
        self.num_layers = num_layers
        self.blocks = [AttentionBlock(dim, num_heads, dropout, causal, **self.block_options,
                                      name=f"block_{i}") for i in range(num_layers)]

    @property
    def embedding_scale(self) -> float:
        """Factor on the item embeddings before positions are added (1 here)."""
        return 1.0

    def call(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define call.")

    def embed(self, history: tf.Tensor,
              training: Optional[bool] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """Item embeddings (times `embedding_scale`) + positions, dropout, padding 0.

        Args:
            history: `[B, L]` int item indices, left-padded with 0, `L <= max_len`.
            training: Keras training flag (OOV replacement and dropout).

        Returns:
            (`[B, L, d]` embedded sequence with zero rows at padding, `[B, L]` bool
            mask, True at real items).
        """
        mask = self.compute_mask(history)
        if training and self.oov_rate > 0:
            replace = tf.logical_and(
                mask, self._random_generator.random_uniform(tf.shape(history))
                < self.oov_rate)
            history = tf.where(replace, tf.ones_like(history), history)
        items = embed_history_items(self, history, training)
        if self.embedding_scale != 1.0:
            items = items * tf.cast(self.embedding_scale, items.dtype)
        x = items + self.position_embedding(self.positions(mask))
        return zero_padding(self._input_dropout(x, training=training), mask), mask


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class SASRecEncoder(BlockEncoder):
    """SASRec's encoder: item-id history -> `[B, L, d]` hidden states.

    `x = (sqrt(d) V[b] + P) * mask` after dropout; then per block
    `Q = LN(x)`, `x = Q + MHA(Q, x, x)` (causal and padding mask), `Q' = LN(x)`,
    `x = Q' + FFN(Q')`, `x = x * mask`; finally `LN(x)`. Both residuals start from
    the normed inputs, as in SASRec's reference TensorFlow code (its paper writes the
    feed-forward step as `x + Dropout(FFN(LN(x)))`), since the published figures come
    from that code. With `item_encoder`, its outputs are scaled by `sqrt(d)` as the
    id embeddings are.

    Positions follow `SelfAttentionEncoder` (0 at the oldest real item), not
    SASRec's absolute slots, so a prefix encoded alone equals the same prefix inside
    a longer sequence. `causal=True` (the default) is SASRec; `causal=False` gives
    a bidirectional variant that cannot serve all-positions training.

    Args:
        vocab_size: Number of item indices (padding and OOV included).
        dim: Model width d.
        max_len: Longest history L.
        num_layers: Number of SASRec blocks.
        num_heads: Attention heads per block (SASRec's default is 1).
        dropout: Dropout rate.
        causal: Causal attention (position i sees items <= i).
        num_positions: Distinct position embeddings (default `max_len`).
        oov_rate: Training-time share of history items replaced by the OOV index 1.
        item_encoder: Optional layer `{"item_id": [B, L]}` -> `[B, L, dim]` used
            instead of the own id table (e.g. the shared item tower).

    Example:

        encoder = SASRecEncoder(vocab_size=100, dim=16, max_len=30, num_heads=1)
        hidden = encoder(tf.constant([[0, 0, 5, 7]]))  # [1, 4, 16]
    """

    # Both residuals as SASRec's reference code has them (from the normed inputs).
    block_options = {"residual_from_normed_query": True, "ffn_residual_from_normed": True}

    @property
    def embedding_scale(self) -> float:
        """SASRec multiplies the item embeddings by `sqrt(d)`."""
        return math.sqrt(self.dim)

    def call(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """Encodes histories.

        Args:
            history: `[B, L]` int item indices, left-padded with 0, `L <= max_len`.
            training: Keras training flag.

        Returns:
            `[B, L, d]` hidden states (padded positions hold the final LayerNorm's
            bias; the extraction ignores them through `compute_mask`).
        """
        x, mask = self.embed(history, training=training)
        for block in self.blocks:
            x = block(x, x, mask=mask, training=training)
        return self._output_norm(x)


def build_block_encoder(cls: type, config: Any, context: Any,
                        item_encoder: Optional[tf.keras.layers.Layer]) -> BlockEncoder:
    """A causal `BlockEncoder` subclass `cls` (SASRec, RAM) from a `ModelConfig` and the
    registry's build context: `ModelConfig.num_layers` blocks, positions for the
    trained history length."""
    return cls(context.vocab_size, config.embedding_dim, context.max_len,
               config.num_layers, config.num_heads, config.dropout, causal=True,
               num_positions=context.trained_positions or context.max_len,
               oov_rate=config.history_oov_rate, item_encoder=item_encoder, name="encoder")


@ENCODERS.register("sasrec")
def build_sasrec_encoder(config: Any, context: Any,
                         item_encoder: Optional[tf.keras.layers.Layer]) -> SASRecEncoder:
    """The `"sasrec"` encoder: `ModelConfig.num_layers` blocks (SASRec: 2)."""
    return build_block_encoder(SASRecEncoder, config, context, item_encoder)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ItemEmbedding(tf.keras.layers.Layer):
    """Candidate features -> a plain item embedding table (no MLP): SASRec's tied
    input/output embeddings, as item tower `"shared"`, whose table the encoder also
    embeds history items with.

    Args:
        vocab_size: V (padding and OOV included).
        dim: d.
        unit_ball: Keep every row in the unit ball after each update (ProxySR's
            constraint, which its eq. 7 distance and ANN probe assume).

    Example:

        tower = ItemEmbedding(vocab_size=100, dim=16)
        vectors = tower({"item_id": tf.constant([2, 3])})  # [2, 16]
    """

    def __init__(self, vocab_size: int, dim: int, unit_ball: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.dim = dim
        self.unit_ball = bool(unit_ball)
        self.embedding = tf.keras.layers.Embedding(
            vocab_size, dim, name="item_embedding",
            embeddings_constraint=UnitBallConstraint() if unit_ball else None)

    def call(self, features: Dict[str, tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """`{"item_id": int [...]}` -> `[..., d]` float32."""
        if "item_id" not in features:
            raise KeyError(f"ItemEmbedding needs the feature 'item_id'; got {sorted(features)}.")
        return tf.cast(self.embedding(features["item_id"]), tf.float32)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim, unit_ball=self.unit_ball)
        return config


@ITEM_TOWERS.register("shared", shares_history=True)
def build_shared_item_tower(config: Any, context: Any) -> ItemEmbedding:
    """`"shared"`: one item table for candidates and history items (SASRec); in the
    unit ball when the encoder's registry entry asks for it (`unit_ball_items`:
    ProxySR)."""
    unit_ball = ENCODERS.get(config.encoder).metadata.get("unit_ball_items", False)
    return ItemEmbedding(context.vocab_size, config.embedding_dim, unit_ball=unit_ball,
                         name="candidate_tower")
