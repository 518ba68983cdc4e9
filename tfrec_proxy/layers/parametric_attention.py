"""MUR: multi-interest user representations (IDW paper §3.1).

* `ParametricAttention` (registered as extraction `"mur"`, `ModelConfig.num_interests`
  vectors): M learned global query vectors attend over the sequence encoder's outputs
  (padding masked), giving M user vectors `[B, M, d]`; M = 1 is the paper's SUR. Over
  a causal encoder it also gives every prefix's vectors in one pass
  (`prefix_outputs`), so MUR trains on all positions like the baseline.
* `MultiInterestScorer` (eq. 4, registered as scorer `"mur"`): per candidate, a
  softmax over the M interest scores weights the interest vectors,
  `s(u, y) = sum_m w_m z_m . g(y)` with `w = softmax_m(z_m . g(y))`. TFRS's max-sim is
  the `"dot"` scorer.
"""

from typing import Any, Dict, Optional

from tfrec_proxy._tf import tf
from tfrec_proxy.registry import EXTRACTIONS, SCORERS
from tfrec_proxy.scoring import Scorer

_MASKED = -1e9


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ParametricAttention(tf.keras.layers.Layer):
    """`[B, L, d]` hidden states -> `[B, M, d]` interest vectors by global attention.

    `z_m = sum_i softmax_i(q_m . h_i) h_i` over the real (non-padding) positions i.

    Args:
        num_interests: M >= 1.

    Example:

        extraction = ParametricAttention(num_interests=5)
        interests = extraction(tf.random.normal([2, 30, 16]),
                               mask=tf.ones([2, 30], tf.bool))  # [2, 5, 16]
    """

    def __init__(self, num_interests: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_interests, bool) or not isinstance(num_interests, int) \
                or num_interests < 1:
            raise ValueError(f"num_interests (M) must be an integer >= 1, got "
                             f"{num_interests!r}.")
        self.num_interests = num_interests
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        self.queries = self.add_weight(
            name="queries", shape=[self.num_interests, int(input_shape[-1])],
            initializer="glorot_uniform", trainable=True)
        super().build(input_shape)

    def call(self, hidden: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Extracts the interests.

        Args:
            hidden: `[B, L, d]` encoder outputs.
            mask: `[B, L]` bool, True at real positions (all real when None).

        Returns:
            `[B, M, d]` user interest vectors.
        """
        logits = tf.einsum("md,bld->bml", tf.cast(self.queries, hidden.dtype), hidden)
        if mask is not None:
            logits = tf.where(mask[:, tf.newaxis, :], logits,
                              tf.cast(_MASKED, logits.dtype) * tf.ones_like(logits))
        weights = tf.nn.softmax(logits, axis=-1)
        return tf.einsum("bml,bld->bmd", weights, hidden)

    def prefix_outputs(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Every prefix's interests in one pass: column j attends over columns `<= j`.

        With a causal encoder, column j of `hidden` depends on columns `<= j` only, so
        row b, column j equals `call` on the history ending at column j.

        Args:
            hidden: `[B, L, d]` outputs of a causal encoder.
            mask: `[B, L]` bool, True at real positions.

        Returns:
            `[B, L, M, d]`; columns with no real position up to them are arbitrary
            (all-positions training never reads them).
        """
        if not self.built:  # called directly, not through __call__
            self.build(hidden.shape)
        logits = tf.einsum("md,bld->bml", tf.cast(self.queries, hidden.dtype), hidden)
        length = tf.shape(hidden)[1]
        # allowed[b, j, i]: key i is real and not after prefix end j.
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        allowed = tf.logical_and(causal[tf.newaxis], mask[:, tf.newaxis, :])
        logits = tf.where(allowed[:, :, tf.newaxis, :], logits[:, tf.newaxis, :, :],
                          tf.cast(_MASKED, logits.dtype))  # [B, L(j), M, L(i)]
        weights = tf.nn.softmax(logits, axis=-1)
        return tf.einsum("bjml,bld->bjmd", weights, hidden)

    def compute_mask(self, hidden: tf.Tensor, mask: Optional[tf.Tensor] = None) -> None:
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_interests=self.num_interests)
        return config


@EXTRACTIONS.register("mur", scorer="mur")
def build_mur(config: Any) -> ParametricAttention:
    """MUR parametric attention with `config.num_interests` (M) vectors."""
    return ParametricAttention(config.num_interests, name="extraction")


@SCORERS.register("mur")
@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class MultiInterestScorer(Scorer):
    """IDW eq. 4: per candidate, the interests weighted by a softmax of their scores.

    With `[B, d]` queries it is the dot product.

    Example:

        scorer = MultiInterestScorer()
        scores = scorer.score_matrix(tf.random.normal([2, 5, 16]),
                                     tf.random.normal([100, 16]))  # [2, 100]
    """

    def score_matrix(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        queries = tf.convert_to_tensor(queries)
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 2:
            return tf.linalg.matmul(queries, candidates, transpose_b=True)
        return eq4_combine(*[tf.linalg.matmul(queries[:, m], candidates, transpose_b=True)
                             for m in range(_num_interests(queries))])

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        queries = tf.convert_to_tensor(queries)
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 2:
            return tf.einsum("bd,bkd->bk", queries, candidates)
        return eq4_combine(*[tf.einsum("bd,bkd->bk", queries[:, m], candidates)
                             for m in range(_num_interests(queries))])


def _num_interests(queries: tf.Tensor) -> int:
    if queries.shape[1] is None:
        raise ValueError("MultiInterestScorer needs a static number of interests M "
                         f"(queries of shape [B, M, d]); got shape {queries.shape}.")
    return int(queries.shape[1])


@tf.custom_gradient
def eq4_combine(*interest_scores: tf.Tensor):
    """M per-interest score tensors s_m (same shape) -> `sum_m softmax_m(s) * s_m` (eq. 4).

    Written with its gradient, `d out / d s_m = p_m (1 + s_m - out)`, and with one
    2-D tensor per interest, because eq. 4 over a training batch's `[B, C]` scores is
    memory-bound: per-interest matmuls and this elementwise combination run a
    forward and backward pass of 1,605 x 1,605 x 5 scores 3.5x faster than autodiff of
    `softmax` over one `[B, M, C]` tensor, and 1.4x faster than autodiff of this same
    unrolled form (`pipelines/bench_eq4_scorer.py`, BENCHMARKS.md). M = 1 returns the
    scores unchanged.
    """
    if len(interest_scores) == 1:
        return interest_scores[0], lambda upstream: upstream
    top = interest_scores[0]
    for scores in interest_scores[1:]:
        top = tf.maximum(top, scores)
    exps = [tf.exp(scores - top) for scores in interest_scores]
    inverse_total = 1.0 / tf.add_n(exps)
    weights = [exp * inverse_total for exp in exps]
    combined = tf.add_n([w * scores for w, scores in zip(weights, interest_scores)])

    def gradient(upstream: tf.Tensor):
        return [upstream * w * (1.0 + scores - combined)
                for w, scores in zip(weights, interest_scores)]

    return combined, gradient
