"""The two towers of the baseline retrieval model.

* `QueryTower`: item-id history `[B, L]` -> user vector `[B, d]` (self-attention
  encoder + extraction), the IDW paper's user tower f_theta.
* `ItemTower`: candidate feature dict `{"item_id": [B]}` -> item vector `[B, d]`
  (id embedding + MLP), the item tower g_phi. It takes a feature dict so that
  attribute/context features (PIR) can join without changing its callers.

Both return float32 even under a mixed-precision policy, so scores and losses are
computed in float32.
"""

from typing import Any, Dict, Mapping, Optional, Sequence

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.encoders import SelfAttentionEncoder
from tfrec_proxy.layers.extraction import SequenceExtraction

ITEM_ID = "item_id"


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class QueryTower(tf.keras.layers.Layer):
    """History of item indices -> one user representation.

    Args:
        vocab_size: Item vocabulary size (padding 0 and OOV 1 included).
        dim: Output size d.
        max_len: Longest history L.
        num_layers: Self-attention blocks.
        num_heads: Attention heads per block.
        dropout: Dropout rate in the encoder.
        extraction: `SequenceExtraction` mode (`"last"` or `"mean"`).
    """

    def __init__(self, vocab_size: int, dim: int = 16, max_len: int = 30,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1,
                 extraction: str = "last", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.extraction = extraction
        self.encoder = SelfAttentionEncoder(vocab_size, dim, max_len, num_layers,
                                            num_heads, dropout, name="encoder")
        self.extractor = SequenceExtraction(extraction, name="extraction")

    def call(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """Embeds histories.

        Args:
            history: `[B, L]` int item indices, left-padded with 0.
            training: Keras training flag.

        Returns:
            `[B, d]` float32 user vectors.
        """
        hidden = self.encoder(history, training=training)
        user = self.extractor(hidden, mask=tf.not_equal(history, 0))
        return tf.cast(user, tf.float32)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim, max_len=self.max_len,
                      num_layers=self.num_layers, num_heads=self.num_heads,
                      dropout=self.dropout, extraction=self.extraction)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ItemTower(tf.keras.layers.Layer):
    """Candidate features -> item representation: id embedding then an MLP.

    Args:
        vocab_size: Item vocabulary size (padding 0 and OOV 1 included).
        hidden_units: Dense layer sizes; ReLU between them, the last is linear and
            gives the output size d. IDW §4.4: two layers of 16.
    """

    def __init__(self, vocab_size: int, hidden_units: Sequence[int] = (16, 16),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hidden_units = tuple(int(units) for units in hidden_units)
        if not hidden_units or min(hidden_units) < 1:
            raise ValueError(f"hidden_units must be non-empty positive sizes, got "
                             f"{hidden_units}.")
        self.vocab_size = vocab_size
        self.hidden_units = hidden_units
        self.item_embedding = tf.keras.layers.Embedding(vocab_size, hidden_units[0],
                                                        name="item_embedding")
        self.mlp = [tf.keras.layers.Dense(units, activation="relu", name=f"dense_{i}")
                    for i, units in enumerate(hidden_units[:-1])]
        self.mlp.append(tf.keras.layers.Dense(hidden_units[-1], name="output"))

    @property
    def dim(self) -> int:
        return self.hidden_units[-1]

    def call(self, features: Mapping[str, tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Embeds candidates.

        Args:
            features: `{"item_id": [B] int item indices}`.
            training: Keras training flag.

        Returns:
            `[B, d]` float32 item vectors.
        """
        if ITEM_ID not in features:
            raise KeyError(f"ItemTower needs the feature {ITEM_ID!r}; got "
                           f"{sorted(features)}.")
        x = self.item_embedding(features[ITEM_ID])
        for layer in self.mlp:
            x = layer(x)
        return tf.cast(x, tf.float32)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, hidden_units=list(self.hidden_units))
        return config
