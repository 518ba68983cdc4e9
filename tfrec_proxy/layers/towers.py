"""The two towers of the baseline retrieval model.

* `QueryTower`: query feature dict `{"history": [B, L], ...context}` -> user vector
  `[B, d]` or `[B, M, d]` (sequence encoder + extraction), the IDW paper's user tower
  f_theta. Context features (timestamps, a user id) are declared by the towers that
  use them and reach them through the same dict, in training and in the exported
  query SavedModel.
* `ItemTower`: candidate feature dict `{"item_id": [B]}` -> item vector `[B, d]`
  (id embedding + MLP), the item tower g_phi. It takes a feature dict so that
  attribute/context features (PIR) can join without changing its callers.

Both return float32 even under a mixed-precision policy, so scores and losses are
computed in float32.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from tfrec_proxy._tf import tf

ITEM_ID = "item_id"
HISTORY = "history"
USER_ID = "user_id"


def history_of(features: Union[tf.Tensor, Mapping[str, tf.Tensor]]) -> tf.Tensor:
    """The `[B, L]` history from a query feature dict (or a bare history tensor)."""
    if isinstance(features, Mapping):
        if HISTORY not in features:
            raise KeyError(f"Query features need {HISTORY!r}; got {sorted(features)}.")
        return features[HISTORY]
    return features


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class QueryTower(tf.keras.layers.Layer):
    """History of item indices -> user representation: a sequence encoder, then an
    extraction layer.

    Both parts are layers, so later towers swap one of them (multi-interest
    extraction, RAM/SASRec encoders) and keep the rest.

    `context_specs` names the query features beyond the history that the tower
    reads (none here); the exported query SavedModel takes exactly those inputs.

    Args:
        encoder: `[B, L]` item indices -> `[B, L, d]` hidden states (e.g.
            `SelfAttentionEncoder`).
        extraction: `[B, L, d]` hidden states (+ `[B, L]` mask) -> `[B, d]` or
            `[B, M, d]` (e.g. `SequenceExtraction`).
        user_embedding: Optional layer `[B]` raw user ids -> `[B, d]` added to every
            user vector (RAM's long-term preference u, eq. 5: `(h + u) . v`); the
            tower then reads the `"user_id"` query feature.
    """

    def __init__(self, encoder: tf.keras.layers.Layer, extraction: tf.keras.layers.Layer,
                 user_embedding: Optional[tf.keras.layers.Layer] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.extraction = extraction
        self.user_embedding = user_embedding

    @property
    def context_specs(self) -> Dict[str, tf.TensorSpec]:
        """The query features besides the history: `"user_id"` (int64 `[B]`) with a
        user embedding, else none."""
        if self.user_embedding is None:
            return {}
        return {USER_ID: tf.TensorSpec([None], tf.int64, name=USER_ID)}

    def _add_user(self, features: Union[tf.Tensor, Mapping[str, tf.Tensor]],
                  user: tf.Tensor) -> tf.Tensor:
        """`user` (`[B, ..., d]`) plus the user embedding broadcast over the middle axes."""
        if self.user_embedding is None:
            return user
        if not isinstance(features, Mapping) or USER_ID not in features:
            given = sorted(features) if isinstance(features, Mapping) else "a bare history"
            raise KeyError(f"This query tower has a user embedding and needs the feature "
                           f"{USER_ID!r}; got {given}.")
        vector = tf.cast(self.user_embedding(features[USER_ID]), user.dtype)  # [B, d]
        for _ in range(len(user.shape) - 2):
            vector = vector[:, tf.newaxis]
        return user + vector

    def call(self, features: Union[tf.Tensor, Mapping[str, tf.Tensor]],
             training: Optional[bool] = None) -> tf.Tensor:
        """Embeds histories.

        Args:
            features: `{"history": [B, L] int item indices, left-padded with 0}` (a
                bare `[B, L]` tensor is accepted too).
            training: Keras training flag.

        Returns:
            `[B, d]` (or `[B, M, d]`) float32 user vectors.
        """
        history = history_of(features)
        hidden = self.encoder(history, training=training)
        user = tf.cast(self.extraction(hidden, mask=tf.not_equal(history, 0)), tf.float32)
        return self._add_user(features, user)

    @property
    def supports_all_positions(self) -> bool:
        """Whether one forward pass gives every prefix's vector (`encode_positions`):
        a causal encoder and an extraction with `prefix_outputs`."""
        return (getattr(self.encoder, "causal", False)
                and hasattr(self.extraction, "prefix_outputs"))

    def encode_positions(self, features: Union[tf.Tensor, Mapping[str, tf.Tensor]],
                         training: Optional[bool] = None) -> tf.Tensor:
        """Every prefix's user vector in one pass.

        Args:
            features: As in `call`.
            training: Keras training flag.

        Returns:
            `[B, L, d]` (or `[B, L, M, d]`) float32: row b, column j is the
            representation of the history ending at column j (equal, up to float
            error, to `call` on that prefix).

        Raises:
            ValueError: the encoder is not causal or the extraction has no
                `prefix_outputs`.
        """
        if not self.supports_all_positions:
            raise ValueError("encode_positions needs a causal encoder and an extraction "
                             "with prefix_outputs; set ModelConfig.all_positions=False to "
                             "train on per-prefix examples instead.")
        history = history_of(features)
        hidden = self.encoder(history, training=training)
        user = tf.cast(self.extraction.prefix_outputs(hidden, tf.not_equal(history, 0)),
                       tf.float32)
        return self._add_user(features, user)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(encoder=tf.keras.layers.serialize(self.encoder),
                      extraction=tf.keras.layers.serialize(self.extraction))
        if self.user_embedding is not None:
            config["user_embedding"] = tf.keras.layers.serialize(self.user_embedding)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "QueryTower":
        config = dict(config)
        for name in ("encoder", "extraction", "user_embedding"):
            if config.get(name) is not None:
                config[name] = tf.keras.layers.deserialize(config[name])
        return cls(**config)


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
