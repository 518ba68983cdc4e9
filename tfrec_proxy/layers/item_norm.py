"""Item-norm baselines (IDW paper §4.3): L2-normalised item representations.

* `"train"` (Kim & Kim, "Adjusting decision boundary for class imbalanced learning"):
  the item vectors are normalised in training and serving, so a rare item's score is
  not held down by a small norm.
* `"posthoc"` (Kang et al., "Decoupling representation and classifier"): the model is
  trained as usual and the item vectors are normalised only at inference (evaluation,
  export, serving).

`ItemNormalization` wraps any candidate tower (id + MLP, PIR, ...), so the baselines
compose with every item tower. `ModelConfig.item_norm` selects it.
"""

from typing import Any, Dict, Mapping, Optional

from tfrec_proxy._tf import tf

ITEM_NORM_MODES = ("none", "train", "posthoc")


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ItemNormalization(tf.keras.layers.Layer):
    """A candidate tower whose `[B, d]` outputs are L2-normalised.

    Args:
        tower: The candidate tower: a feature dict -> `[B, d]`.
        mode: `"train"` normalises always; `"posthoc"` only when `training` is not
            True (inference: evaluation, item embeddings, exported SavedModels).
        epsilon: Added under the square root of the norm.

    Example:

        tower = ItemNormalization(ItemTower(vocab_size=100, hidden_units=(16, 16)))
        vectors = tower({"item_id": tf.constant([2, 3])})  # [2, 16], unit norm
    """

    def __init__(self, tower: tf.keras.layers.Layer, mode: str = "train",
                 epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ITEM_NORM_MODES[1:]:
            raise ValueError(f"Unknown item_norm mode {mode!r}; expected one of "
                             f"{ITEM_NORM_MODES[1:]}.")
        self.tower = tower
        self.mode = mode
        self.epsilon = epsilon

    def call(self, features: Mapping[str, tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Embeds candidates.

        Args:
            features: The wrapped tower's feature dict.
            training: Keras training flag; with `mode="posthoc"` outputs are
                normalised unless it is True.

        Returns:
            `[B, d]` float32 item vectors.
        """
        vectors = tf.cast(self.tower(features, training=training), tf.float32)
        if self.mode == "posthoc" and training:
            return vectors
        return tf.math.l2_normalize(vectors, axis=-1, epsilon=self.epsilon)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(tower=tf.keras.layers.serialize(self.tower), mode=self.mode,
                      epsilon=self.epsilon)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "ItemNormalization":
        config = dict(config)
        config["tower"] = tf.keras.layers.deserialize(config["tower"])
        return cls(**config)
