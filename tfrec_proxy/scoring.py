"""Scorers: the swappable piece that turns query and candidate embeddings into scores.

TFRS's `Retrieval` task and its `TopK` indexes hard-code the dot product. Multi-interest
users (MUR, eq. 4 of the IDW paper) and session proxies (ProxySR) need other
affinities, so training, evaluation and retrieval all score through a `Scorer`:

* `score_matrix(queries, candidates)`: every query against every candidate,
  `[B, d]` or `[B, M, d]` x `[C, d]` -> `[B, C]` (batch-softmax logits, full ranking,
  brute-force retrieval).
* `score_candidates(queries, candidates)`: each query against its own candidate list,
  `[B, d]` or `[B, M, d]` x `[B, K, d]` -> `[B, K]` (sampled evaluation, the exact
  re-score after approximate retrieval).
* `probe_vectors(queries)`: `[B, P, d]` vectors whose dot-product neighbours (found by
  ScaNN) are the candidates to re-score exactly; by default the query vectors
  themselves.

Scorers are Keras layers (they may own weights, checkpointed with the model) and are
registered by name in `tfrec_proxy.registry.SCORERS` with their options dataclass;
`build_scorer` makes one from a run config.
"""

from typing import Any, Mapping, Optional

from tfrec_proxy._tf import tf
from tfrec_proxy.registry import SCORERS


class Scorer(tf.keras.layers.Layer):
    """Base class of scorers; subclasses implement `score_matrix` and `score_candidates`.

    Example:

        class NegativeL2(Scorer):
            def score_matrix(self, queries, candidates):
                return -tf.reduce_sum(tf.square(queries[:, None] - candidates[None]), -1)
            def score_candidates(self, queries, candidates):
                return -tf.reduce_sum(tf.square(queries[:, None] - candidates), -1)
    """

    def call(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """Same as `score_matrix`."""
        return self.score_matrix(queries, candidates)

    def score_matrix(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """Scores every query against every candidate.

        Args:
            queries: `[B, d]` or `[B, M, d]` query embeddings.
            candidates: `[C, d]` candidate embeddings.

        Returns:
            `[B, C]` scores.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score_matrix.")

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """Scores each query against its own list of candidates.

        Args:
            queries: `[B, d]` or `[B, M, d]` query embeddings.
            candidates: `[B, K, d]` candidate embeddings, one list per query.

        Returns:
            `[B, K]` scores.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score_candidates.")

    def probe_vectors(self, queries: tf.Tensor) -> tf.Tensor:
        """Vectors whose dot-product neighbours are the retrieval candidates.

        Args:
            queries: `[B, d]` or `[B, M, d]`.

        Returns:
            `[B, P, d]`: the query itself (P = 1) or each of its M vectors.
        """
        return queries if queries.shape.rank == 3 else queries[:, tf.newaxis, :]


@SCORERS.register("dot")
@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class DotScorer(Scorer):
    """Inner-product affinity `s(q, c) = q . c`.

    With multi-vector queries `[B, M, d]` the score is the maximum over the M query
    vectors ("maxsim", as TFRS's `Retrieval` does for 3-D queries). Paper-specific
    multi-interest scoring (MUR eq. 4) is a different scorer.

    Example:

        scorer = DotScorer()
        scores = scorer.score_matrix(tf.ones([2, 4]), tf.ones([5, 4]))  # [2, 5], all 4.0
    """

    def score_matrix(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 3:
            return tf.reduce_max(tf.einsum("bmd,cd->bmc", queries, candidates), axis=1)
        return tf.linalg.matmul(queries, candidates, transpose_b=True)

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 3:
            return tf.reduce_max(tf.einsum("bmd,bkd->bmk", queries, candidates), axis=1)
        return tf.einsum("bd,bkd->bk", queries, candidates)


def build_scorer(scorer: str, options: Optional[Mapping[str, Any]] = None,
                 **kwargs: Any) -> Scorer:
    """Builds the scorer registered as `name` with its (checked) options.

    Args:
        scorer: Registered scorer name, e.g. `"dot"`.
        options: The scorer's settings (`ModelConfig.scorer_options`).
        **kwargs: Passed to the layer (e.g. `name="scorer"`).

    Raises:
        ValueError: an unknown name or bad options.
    """
    entry = SCORERS.get(scorer)
    parsed = entry.parse_options(options, "config.model.scorer_options")
    settings = {} if parsed is None else {
        field: getattr(parsed, field) for field in parsed.__dataclass_fields__}
    return entry.target(**settings, **kwargs)


def get_scorer(scorer: str) -> Scorer:
    """A scorer by name with default options (`build_scorer(scorer)`)."""
    return build_scorer(scorer)
