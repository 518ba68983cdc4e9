"""Ranking metrics and the sampled / full-ranking evaluation protocols.

Conventions:

* Items are vocabulary indices: 0 is padding, 1 is OOV, real items are `2..V-1`
  (`FIRST_ITEM`). `item_embeddings` is `[V, d]`, indexed by vocabulary index; rows 0
  and 1 exist but are never candidates.
* A rank is 0-based: the number of OTHER candidates (not the target itself, not
  excluded items) whose score is `>=` the target's score. Ties count against the
  target, so a constant model gets no credit.
* `HR@k = mean(rank < k)`, `NDCG@k = mean(1 / log2(rank + 2) if rank < k else 0)`,
  `MRR = mean(1 / (rank + 1))`.

Modules:

* `formulas`: the metrics (`hit_rate`, `ndcg`, `mrr`), `ranks_from_scores`,
  `summarize`, `popularity_groups` and `frequency_groups`.
* `negatives`: `Exclusions` (one item set per user, shared by the user's rows) and
  `sample_negatives`.
* `protocols`: `sampled_ranks`, `full_ranks` (bounded-memory tiles over the whole
  catalogue) and `evaluate_embeddings`, which runs both.
* `clustering`: `silhouette_score` of item vectors against ground-truth clusters
  (IDW §3.2).
"""

from tfrec_proxy.metrics.clustering import silhouette_score
from tfrec_proxy.metrics.formulas import (FIRST_ITEM, ArrayLike, frequency_groups, hit_rate,
                                          mrr, ndcg, popularity_groups, ranks_from_scores,
                                          summarize)
from tfrec_proxy.metrics.negatives import Exclusions, ExclusionsLike, sample_negatives
from tfrec_proxy.metrics.protocols import evaluate_embeddings, full_ranks, sampled_ranks

__all__ = [
    "FIRST_ITEM", "ArrayLike", "Exclusions", "ExclusionsLike", "evaluate_embeddings",
    "frequency_groups", "full_ranks", "hit_rate", "mrr", "ndcg", "popularity_groups", "ranks_from_scores",
    "sample_negatives", "sampled_ranks", "silhouette_score", "summarize",
]
