"""Representation extraction: per-position hidden states to one user vector.

The IDW paper's single user representation (SUR) takes the encoder's output at the
most recent step or a weighted aggregate. Multi-interest extraction (MUR parametric
attention, `[B, M, d]` outputs) is a sibling module.
"""

from typing import Any, Dict, Optional

from tfrec_proxy._tf import tf

EXTRACTION_MODES = ("last", "mean")


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class SequenceExtraction(tf.keras.layers.Layer):
    """Reduces `[B, L, d]` hidden states to `[B, d]`.

    Args:
        mode: `"last"`: the hidden state of the last column (the most recent item,
            histories being left-padded); `"mean"`: the mean over real positions.
    """

    def __init__(self, mode: str = "last", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in EXTRACTION_MODES:
            raise ValueError(f"Unknown extraction mode {mode!r}; expected one of "
                             f"{EXTRACTION_MODES}.")
        self.mode = mode
        self.supports_masking = True

    def call(self, hidden: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Extracts the user vector.

        Args:
            hidden: `[B, L, d]` encoder outputs.
            mask: `[B, L]` bool, True at real positions (needed for `"mean"`).

        Returns:
            `[B, d]` user representations.
        """
        if self.mode == "last":
            return hidden[:, -1, :]
        if mask is None:
            return tf.reduce_mean(hidden, axis=1)
        weights = tf.cast(mask, hidden.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(hidden * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)

    def compute_mask(self, hidden: tf.Tensor, mask: Optional[tf.Tensor] = None) -> None:
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(mode=self.mode)
        return config
