"""Sequence encoders: item-id histories to per-position hidden states.

The baseline user tower of the IDW paper (§4.4) is a self-attention encoder with two
multi-head attention layers of four heads; SASRec/RAM encoders arrive later beside it.
"""

from typing import Any, Dict, Optional

from tfrec_proxy._tf import tf


def embed_history_items(layer: tf.keras.layers.Layer, history: tf.Tensor,
                        training: Optional[bool] = None) -> tf.Tensor:
    """`[B, L]` history items through `layer.item_encoder` (a shared item tower taking
    `{"item_id": ...}`) when it has one, else its own `layer.item_embedding` table;
    in the layer's compute dtype. One lookup for every sequence encoder."""
    if layer.item_encoder is None:
        return layer.item_embedding(history)
    return tf.cast(layer.item_encoder({"item_id": history}, training=training),
                   layer.compute_dtype)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm self-attention block: `x + MHA(LN(x))`, then `x + FFN(LN(x))`.

    Args:
        dim: Model width d (input and output size).
        num_heads: Attention heads; each head has `dim // num_heads` (at least 1)
            dimensions.
        ff_dim: Hidden size of the position-wise feed-forward layer.
        dropout: Dropout rate on attention weights and residual branches.
        causal: Restrict each position to attend to itself and earlier positions.
    """

    def __init__(self, dim: int, num_heads: int = 4, ff_dim: Optional[int] = None,
                 dropout: float = 0.0, causal: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim and num_heads must be >= 1, got dim={dim}, "
                             f"num_heads={num_heads}.")
        self.dim = dim
        self.num_heads = num_heads
        self.ff_dim = ff_dim or 4 * dim
        self.dropout = dropout
        self.causal = causal
        self._attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=max(1, dim // num_heads), dropout=dropout)
        self._ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._ffn_hidden = tf.keras.layers.Dense(self.ff_dim, activation="relu")
        self._ffn_out = tf.keras.layers.Dense(dim)
        self._residual_dropout = tf.keras.layers.Dropout(dropout)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None,
             training: Optional[bool] = None) -> tf.Tensor:
        """Encodes a sequence.

        Args:
            inputs: `[B, L, d]` hidden states.
            mask: `[B, L]` bool, True at real (non-padding) positions.
            training: Keras training flag (dropout).

        Returns:
            `[B, L, d]` hidden states.
        """
        attention_mask = None
        if mask is not None:
            # Query i may attend key j when key j is a real item.
            attention_mask = mask[:, tf.newaxis, :]
        normed = self._attention_norm(inputs)
        attended = self._attention(normed, normed, attention_mask=attention_mask,
                                   use_causal_mask=self.causal, training=training)
        x = inputs + self._residual_dropout(attended, training=training)
        hidden = self._ffn_out(self._ffn_hidden(self._ffn_norm(x)))
        return x + self._residual_dropout(hidden, training=training)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, ff_dim=self.ff_dim,
                      dropout=self.dropout, causal=self.causal)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class SelfAttentionEncoder(tf.keras.__internal__.layers.BaseRandomLayer):
    """Item-id history -> hidden states: embedding + learned positions + blocks.

    Histories are left-padded with 0 (the padding index). Positions count forward
    from the oldest item in the window (the first real item is position 0), so a
    causal encoder gives item j the same position whether it is encoded inside a
    longer training sequence or as the end of its own prefix. Positions at or past
    `num_positions - 1` share the last position embedding: training histories are
    shorter than served ones (leave-one-out holds out the last two items), and every
    position a served history uses must be one that training updated.

    Args:
        vocab_size: Number of item indices (padding and OOV included).
        dim: Model width d.
        max_len: Longest history L.
        num_layers: Number of `TransformerBlock`s.
        num_heads: Attention heads per block.
        dropout: Dropout rate.
        causal: Causal attention inside the blocks (position i sees items <= i),
            which lets one forward pass give every prefix's representation.
        num_positions: Distinct position embeddings (default `max_len`).
        oov_rate: During training, the share of history items replaced by the OOV
            index (1), so the OOV embedding that serves unknown ids is trained.
        item_encoder: Optional layer embedding the history items instead of the
            encoder's own id table: `{"item_id": [B, L]}` -> `[B, L, dim]`, e.g. the
            model's item tower (shared weights; PIR §3.2.2 encodes the sequence's
            items with the candidates' item encoding layer).

    Example:

        encoder = SelfAttentionEncoder(vocab_size=100, dim=16, max_len=30, causal=True)
        hidden = encoder(tf.constant([[0, 0, 5, 7]]))  # [1, 4, 16]
    """

    def __init__(self, vocab_size: int, dim: int = 16, max_len: int = 30,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1,
                 causal: bool = False, num_positions: Optional[int] = None,
                 oov_rate: float = 0.0, item_encoder: Optional[tf.keras.layers.Layer] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (padding, OOV and one item), "
                             f"got {vocab_size}.")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}.")
        num_positions = max_len if num_positions is None else num_positions
        if not 1 <= num_positions <= max_len:
            raise ValueError(f"num_positions must be in [1, max_len={max_len}], got "
                             f"{num_positions}.")
        if not 0.0 <= oov_rate < 1.0:
            raise ValueError(f"oov_rate must be in [0, 1), got {oov_rate}.")
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.causal = causal
        self.num_positions = num_positions
        self.oov_rate = oov_rate
        self.item_encoder = item_encoder
        self.item_embedding = None
        if item_encoder is None:
            self.item_embedding = tf.keras.layers.Embedding(vocab_size, dim,
                                                            name="item_embedding")
        self.position_embedding = tf.keras.layers.Embedding(num_positions, dim,
                                                            name="position_embedding")
        self._input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [TransformerBlock(dim, num_heads, dropout=dropout, causal=causal,
                                        name=f"block_{i}") for i in range(num_layers)]
        self._output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    def positions(self, mask: tf.Tensor) -> tf.Tensor:
        """`[B, L]` position ids: 0 at the oldest real item, clamped to the table."""
        index = tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1
        return tf.clip_by_value(index, 0, self.num_positions - 1)

    def call(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """Encodes histories.

        Args:
            history: `[B, L]` int item indices, left-padded with 0, `L <= max_len`.
            training: Keras training flag.

        Returns:
            `[B, L, d]` hidden states; padded positions hold values that the
            extraction layer ignores through `compute_mask`.
        """
        mask = tf.not_equal(history, 0)
        if training and self.oov_rate > 0:
            replace = tf.logical_and(
                mask, self._random_generator.random_uniform(tf.shape(history))
                < self.oov_rate)
            history = tf.where(replace, tf.ones_like(history), history)
        items = embed_history_items(self, history, training)
        x = items + self.position_embedding(self.positions(mask))
        x = self._input_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, mask=mask, training=training)
        return self._output_norm(x)

    def compute_mask(self, history: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        return tf.not_equal(history, 0)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim, max_len=self.max_len,
                      num_layers=self.num_layers, num_heads=self.num_heads,
                      dropout=self.dropout, causal=self.causal,
                      num_positions=self.num_positions, oov_rate=self.oov_rate)
        if self.item_encoder is not None:
            config["item_encoder"] = tf.keras.layers.serialize(self.item_encoder)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "SelfAttentionEncoder":
        config = dict(config)
        if config.get("item_encoder") is not None:
            config["item_encoder"] = tf.keras.layers.deserialize(config["item_encoder"])
        return cls(**config)
