"""Cross-replica in-batch negatives: every query scored against the global batch.

Under a `tf.distribute` strategy each replica runs the loss on its own slice of the
global batch, so TFRS's `Retrieval` (and `BatchSoftmax` as called per replica) scores
a replica's queries against that replica's candidates only: with R replicas the
softmax sees B / R negatives, not B, and the logQ correction is for a batch it does
not use. TFRS has no option to widen it, so `gather_candidates` does it here:
inside the replica function it all-gathers the candidate embeddings, their ids and
their sampling probabilities (`ReplicaContext.all_gather`, which is differentiable:
its gradient all-reduces the upstream gradients and hands each replica the slice of
its own candidates), then rotates the gathered rows so that the replica's own
candidates come first. Column i is then still row i's positive, as `BatchSoftmax`
expects, accidental hits are removed against every replica's ids, and logQ uses
every candidate's own probability.

Losses stay summed per replica and Keras sums the replicas' gradients, so R replicas
give the same loss and the same gradients as one replica on the concatenated batch
(pinned in `tests/test_cross_replica.py` with two logical CPU devices). Outside a
strategy, or with one replica, nothing changes.
"""

from typing import Optional, Tuple

from tfrec_proxy._tf import tf


def gather_candidates(candidates: tf.Tensor, candidate_ids: tf.Tensor,
                      sampling_probability: Optional[tf.Tensor] = None
                      ) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
    """The global batch's candidates, this replica's own first.

    Args:
        candidates: `[B_r, d]` this replica's candidate embeddings (B_r may differ
            between replicas, e.g. in a last, smaller batch).
        candidate_ids: `[B_r]` their item ids.
        sampling_probability: `[B_r]` their sampling probabilities, or None.

    Returns:
        `([B, d], [B], [B] or None)` with B the global batch, in replica order rotated
        so that rows `0..B_r-1` are this replica's inputs; the inputs themselves when
        there is no replica context or only one replica.

    Example:

        # inside the function a strategy runs per replica:
        candidates, ids, probability = gather_candidates(candidates, ids, probability)
        scores = scorer.score_matrix(queries, candidates)  # [B_r, B]
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return candidates, candidate_ids, sampling_probability
    values = {"candidates": candidates, "ids": candidate_ids}
    if sampling_probability is not None:
        values["probability"] = sampling_probability
    # One all-gather per tensor: a batched one refuses int ids (host memory) beside
    # float embeddings (compute device).
    gathered = {name: context.all_gather(value, axis=0) for name, value in values.items()}
    sizes = context.all_gather(tf.shape(candidate_ids)[:1], axis=0)  # [R]
    offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    rotated = {name: tf.roll(value, shift=-offset, axis=0)
               for name, value in gathered.items()}
    return rotated["candidates"], rotated["ids"], rotated.get("probability")
