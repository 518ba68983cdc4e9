"""Batch-softmax retrieval loss over a score matrix.

`tfrs.tasks.Retrieval` computes the `[B, B]` logits itself with a dot product (or
max-sim for 3-D queries). Multi-interest scoring (MUR eq. 4) and session-proxy
distances (ProxySR) need other affinities, so this task takes the score matrix from a
swappable scorer (`tfrec_proxy.scoring`) and applies the rest exactly as TFRS does,
as TFRS does: temperature, logQ correction, accidental-hit removal (TFRS's
`RemoveAccidentalHits`) and a summed categorical cross-entropy.

The logQ correction is `s - log p` written here rather than TFRS's
`SamplingProbablityCorrection`, which clips `p` at 1e-6: on catalogues with more than
about a million training targets every tail item falls below that floor and gets the
same correction, flattening exactly the tail correction logQ exists for. Where
`p >= 1e-6` the two agree (pinned in tests/test_tasks.py). It is also the one place where per-example loss
weights (density weighting, frequency balance) enter. With a dot-product scorer it
equals `tfrs.tasks.Retrieval` (pinned in tests/test_tasks.py).

Two imbalance baselines of the IDW paper (§4.3) change the loss itself, which TFRS
does not offer, so they are written here:

* `loss="focal"` (Lin et al.): each example's cross-entropy is scaled by
  `(1 - p)^gamma`, p being the (corrected) softmax probability of its positive;
* `loss="qmargin"` (Cao et al., LDAM): `positive_margin` is subtracted from each
  positive's logit before the softmax (the margins, `~ p(y)^(-1/4)`, come from
  `qmargin_margins`).
"""

from typing import Any, Dict, Optional

import numpy as np

from tfrec_proxy._tf import tf, tfrs

LOSSES = ("softmax", "focal", "qmargin")


def qmargin_margins(sampling_probability: np.ndarray, max_margin: float) -> np.ndarray:
    """Per-item margins `delta_y = C * p(y)^(-1/4)` with the largest equal to
    `max_margin` (the Qmargin baseline, IDW §4.3; Cao et al. eq. 12).

    Args:
        sampling_probability: `[V]` positive item probabilities (p > 0).
        max_margin: The margin of the rarest item (> 0).

    Returns:
        `[V]` float32 margins.
    """
    if not max_margin > 0:
        raise ValueError(f"qmargin_max must be > 0, got {max_margin}.")
    probability = np.asarray(sampling_probability, np.float64)
    if probability.ndim != 1 or not np.all(probability > 0):
        raise ValueError("sampling_probability must be a 1-D array of positive values.")
    raw = probability ** -0.25
    return (max_margin * raw / raw.max()).astype(np.float32)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class BatchSoftmax(tf.keras.layers.Layer):
    """In-batch softmax cross-entropy for retrieval (IDW eqs. 1-3).

    Row i of the score matrix holds query i against every candidate in the batch;
    candidate i is query i's positive, the others are its negatives.

    Args:
        remove_accidental_hits: Mask negatives whose id equals the row's positive.
        temperature: Divide logits by this value when set.
        focal_gamma: When set, the focal loss `-(1 - p)^gamma log p` (>= 0; 0 is
            the plain softmax cross-entropy).

    Example:

        task = BatchSoftmax()
        loss = task(tf.random.normal([4, 4]), candidate_ids=tf.constant([2, 3, 4, 5]))
    """

    def __init__(self, remove_accidental_hits: bool = True,
                 temperature: Optional[float] = None,
                 focal_gamma: Optional[float] = None, **kwargs: Any) -> None:
        # Losses stay in float32 under a mixed-precision policy (MIN_FLOAT masking
        # overflows float16).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if focal_gamma is not None and not focal_gamma >= 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}.")
        self.remove_accidental_hits = remove_accidental_hits
        self.temperature = temperature
        self.focal_gamma = focal_gamma
        self._remove_hits = tfrs.layers.loss.RemoveAccidentalHits(dtype="float32")
        self._loss = tf.keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM)

    def call(self, scores: tf.Tensor, candidate_ids: Optional[tf.Tensor] = None,
             candidate_sampling_probability: Optional[tf.Tensor] = None,
             sample_weight: Optional[tf.Tensor] = None,
             positive_margin: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Computes the summed loss of a batch.

        Args:
            scores: `[B, C]` logits, `C >= B`; column i < B is row i's positive.
            candidate_ids: `[C]` candidate ids (needed to remove accidental hits).
            candidate_sampling_probability: `[C]` probability of each candidate
                appearing in a batch; logits become `s - log p` (logQ correction).
            sample_weight: `[B]` per-example loss weights.
            positive_margin: `[B]` margins subtracted from each row's positive
                logit (Qmargin), before temperature and logQ correction.

        Returns:
            Scalar loss: the weighted sum over the batch of -log softmax at the
            positive (times `(1 - p)^gamma` for the focal loss).
        """
        scores = tf.cast(scores, tf.float32)
        num_queries = tf.shape(scores)[0]
        labels = tf.eye(num_queries, tf.shape(scores)[1])
        if positive_margin is not None:
            scores = scores - labels * tf.cast(positive_margin, tf.float32)[:, tf.newaxis]
        if self.temperature is not None:
            scores = scores / self.temperature
        if candidate_sampling_probability is not None:
            # Unclipped (see the module docstring); p > 0 is guaranteed by
            # `sampling_probabilities`, which gives unseen items 1 / total.
            scores = scores - tf.math.log(
                tf.cast(candidate_sampling_probability, tf.float32))[tf.newaxis, :]
        if self.remove_accidental_hits:
            if candidate_ids is None:
                raise ValueError("remove_accidental_hits=True needs candidate_ids.")
            scores = self._remove_hits(labels, scores, candidate_ids)
        if self.focal_gamma is None:
            return self._loss(y_true=labels, y_pred=scores, sample_weight=sample_weight)
        log_p = tf.reduce_sum(labels * tf.nn.log_softmax(scores, axis=-1), axis=-1)  # [B]
        losses = -tf.pow(1.0 - tf.exp(log_p), self.focal_gamma) * log_p
        if sample_weight is not None:
            losses = losses * tf.cast(sample_weight, tf.float32)
        return tf.reduce_sum(losses)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(remove_accidental_hits=self.remove_accidental_hits,
                      temperature=self.temperature, focal_gamma=self.focal_gamma)
        return config
