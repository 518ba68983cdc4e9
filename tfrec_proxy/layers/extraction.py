"""Representation extraction: per-position hidden states to one user vector.

The IDW paper's single user representation (SUR) takes the encoder's output at the
most recent step or a weighted aggregate. Multi-interest extraction (MUR parametric
attention, `[B, M, d]` outputs) is a sibling module.

An extraction layer may also implement `prefix_outputs(hidden, mask)`: the
representation of every prefix of the sequence at once (`[B, L, (M,) d]`), which
all-positions training uses over a causal encoder. Extractions are registered in
`tfrec_proxy.registry.EXTRACTIONS` as builders `(ModelConfig) -> layer`.
"""

from typing import Any, Dict, Optional

from tfrec_proxy._tf import tf
from tfrec_proxy.registry import EXTRACTIONS

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

    def prefix_outputs(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Every prefix's user vector: column j is `call` on columns `<= j`.

        Args:
            hidden: `[B, L, d]` outputs of a causal encoder.
            mask: `[B, L]` bool, True at real positions.

        Returns:
            `[B, L, d]`.
        """
        if self.mode == "last":
            return hidden
        weights = tf.cast(mask, hidden.dtype)[:, :, tf.newaxis]
        total = tf.cumsum(hidden * weights, axis=1)
        return total / tf.maximum(tf.cumsum(weights, axis=1), 1.0)

    def compute_mask(self, hidden: tf.Tensor, mask: Optional[tf.Tensor] = None) -> None:
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(mode=self.mode)
        return config


@EXTRACTIONS.register("last")
def build_last(config: Any) -> SequenceExtraction:
    """The most recent position's hidden state."""
    return SequenceExtraction("last", name="extraction")


@EXTRACTIONS.register("mean")
def build_mean(config: Any) -> SequenceExtraction:
    """The masked mean of the hidden states."""
    return SequenceExtraction("mean", name="extraction")
