"""Scorers: the swappable piece that turns query and candidate embeddings into scores.

TFRS's `Retrieval` task hard-codes the dot product. Multi-interest users (MUR, eq. 4 of
the IDW paper) and session proxies (ProxySR) need other affinities, so training,
evaluation and retrieval all score through a scorer object with two methods:

* `score_matrix(queries, candidates)`: every query against every candidate,
  `[B, d]` or `[B, M, d]` x `[C, d]` -> `[B, C]` (the batch-softmax logits, full
  ranking).
* `score_candidates(queries, candidates)`: each query against its own candidate list,
  `[B, d]` or `[B, M, d]` x `[B, K, d]` -> `[B, K]` (sampled-negative evaluation).
"""

from tfrec_proxy._tf import tf


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class DotScorer(tf.keras.layers.Layer):
    """Inner-product affinity `s(q, c) = q . c`.

    With multi-vector queries `[B, M, d]` the score is the maximum over the M query
    vectors ("maxsim", as TFRS's `Retrieval` does for 3-D queries). Paper-specific
    multi-interest scoring (MUR eq. 4) is a different scorer.
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
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 3:
            return tf.reduce_max(tf.einsum("bmd,cd->bmc", queries, candidates), axis=1)
        return tf.linalg.matmul(queries, candidates, transpose_b=True)

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """Scores each query against its own list of candidates.

        Args:
            queries: `[B, d]` or `[B, M, d]` query embeddings.
            candidates: `[B, K, d]` candidate embeddings, one list per query.

        Returns:
            `[B, K]` scores.
        """
        candidates = tf.cast(candidates, queries.dtype)
        if queries.shape.rank == 3:
            return tf.reduce_max(tf.einsum("bmd,bkd->bmk", queries, candidates), axis=1)
        return tf.einsum("bd,bkd->bk", queries, candidates)


def get_scorer(name: str) -> tf.keras.layers.Layer:
    """Returns a scorer by name (`"dot"`).

    Raises:
        ValueError: for an unknown name.
    """
    scorers = {"dot": DotScorer}
    if name not in scorers:
        raise ValueError(f"Unknown scorer {name!r}; expected one of {sorted(scorers)}.")
    return scorers[name]()
