"""Ranking metric formulas, their summary per group of rows, and popularity groups.

Conventions (shared by the whole `tfrec_proxy.metrics` package):

* Items are vocabulary indices: 0 is padding, 1 is OOV, real items are `2..V-1`
  (`FIRST_ITEM` is the first real item).
* A rank is 0-based: the number of OTHER candidates (not the target itself, not
  excluded items) whose score is `>=` the target's score. Ties count against the
  target, so a constant model gets no credit.
* `HR@k = mean(rank < k)`, `NDCG@k = mean(1 / log2(rank + 2) if rank < k else 0)`,
  `MRR = mean(1 / (rank + 1))`.
"""

import math
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf

ArrayLike = Union[np.ndarray, tf.Tensor, Sequence]

# Vocabulary indices below this (0 = padding, 1 = OOV) are never candidates.
FIRST_ITEM = 2


def _check_ranks(ranks: ArrayLike) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array; got shape {ranks.shape}.")
    if np.any(ranks < 0):
        raise ValueError(f"ranks must be >= 0; got minimum {ranks.min()}.")
    return ranks


def _check_targets(targets: ArrayLike, num_items: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"targets must be a 1-D integer array; got {targets.dtype} with shape "
            f"{targets.shape}.")
    bad = np.flatnonzero((targets < FIRST_ITEM) | (targets >= num_items))
    if bad.size:
        raise ValueError(
            f"targets[{bad[0]}] = {targets[bad[0]]} is not a real item; expected an index "
            f"in [{FIRST_ITEM}, {num_items}).")
    return targets.astype(np.int64)


def hit_rate(ranks: ArrayLike, k: int) -> float:
    """Hit rate at k: the fraction of rows whose target ranks in the top k.

    Args:
        ranks: `[N]` integer 0-based ranks.
        k: cut-off, >= 1.

    Returns:
        `mean(rank < k)`.

    Raises:
        ValueError: if `k < 1` or `ranks` is empty, not 1-D or negative.
    """
    check_positive_int("k", k)
    ranks = _check_ranks(ranks)
    return float(np.mean(ranks < k))


def ndcg(ranks: ArrayLike, k: int) -> float:
    """Normalised discounted cumulative gain at k with a single relevant item.

    Args:
        ranks: `[N]` integer 0-based ranks.
        k: cut-off, >= 1.

    Returns:
        `mean(1 / log2(rank + 2) if rank < k else 0)`.

    Raises:
        ValueError: if `k < 1` or `ranks` is empty, not 1-D or negative.
    """
    check_positive_int("k", k)
    ranks = _check_ranks(ranks)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: ArrayLike, k: Optional[int] = None) -> float:
    """Mean reciprocal rank, over the whole ranking or cut at k (MRR@k, the
    session-based metric: 0 for a target ranked k-th or lower).

    Args:
        ranks: `[N]` integer 0-based ranks.
        k: Cut-off, >= 1 (None: no cut).

    Returns:
        `mean(1 / (rank + 1))`, with `[rank < k]` as a factor when k is given.

    Raises:
        ValueError: if `k < 1` or `ranks` is empty, not 1-D or negative.
    """
    ranks = _check_ranks(ranks)
    reciprocal = 1.0 / (ranks + 1.0)
    if k is not None:
        check_positive_int("k", k)
        reciprocal = np.where(ranks < k, reciprocal, 0.0)
    return float(np.mean(reciprocal))


def ranks_from_scores(
    target_scores: ArrayLike,
    candidate_scores: ArrayLike,
    mask: Optional[ArrayLike] = None,
) -> np.ndarray:
    """Pessimistic 0-based ranks of targets among scored candidates.

    Args:
        target_scores: `[N]` score of each row's target.
        candidate_scores: `[N, K]` scores of each row's other candidates (the target
            itself must not be among them).
        mask: optional `[N, K]` bool, True where the candidate is counted.

    Returns:
        `[N]` int64: per row, the number of counted candidates scoring `>=` the target.

    Raises:
        ValueError: on mismatched shapes or a non-bool mask.
    """
    target_scores = np.asarray(target_scores)
    candidate_scores = np.asarray(candidate_scores)
    if target_scores.ndim != 1:
        raise ValueError(f"target_scores must be 1-D [N]; got shape {target_scores.shape}.")
    if candidate_scores.ndim != 2 or candidate_scores.shape[0] != target_scores.shape[0]:
        raise ValueError(
            f"candidate_scores must be [N={target_scores.shape[0]}, K]; "
            f"got shape {candidate_scores.shape}.")
    beats = candidate_scores >= target_scores[:, None]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != candidate_scores.shape:
            raise ValueError(
                f"mask must be bool with shape {candidate_scores.shape}; "
                f"got {mask.dtype} with shape {mask.shape}.")
        beats &= mask
    return beats.sum(axis=1, dtype=np.int64)


def _metrics(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> Dict[str, float]:
    """HR/NDCG at each k, MRR and count; NaN metrics when `ranks` is empty."""
    empty = ranks.size == 0
    result = {}
    for k in ks:
        result[f"{prefix}hr@{k}"] = math.nan if empty else hit_rate(ranks, k)
        result[f"{prefix}ndcg@{k}"] = math.nan if empty else ndcg(ranks, k)
        result[f"{prefix}mrr@{k}"] = math.nan if empty else mrr(ranks, k)
    result[f"{prefix}mrr"] = math.nan if empty else mrr(ranks)
    result[f"{prefix}count"] = float(ranks.size)
    return result


def summarize(
    ranks: ArrayLike,
    ks: Sequence[int] = (5, 20),
    groups: Optional[Mapping[str, ArrayLike]] = None,
    prefix: str = "",
) -> Dict[str, float]:
    """Summarises ranks into named metrics, overall and per group of rows.

    Args:
        ranks: `[N]` integer 0-based ranks.
        ks: cut-offs for HR and NDCG, each >= 1.
        groups: optional mapping from group name to a `[N]` bool row mask.
        prefix: prepended to every key (e.g. `"full/"`).

    Returns:
        `{prefix}hr@{k}`, `{prefix}ndcg@{k}`, `{prefix}mrr@{k}` for each k,
        `{prefix}mrr` and `{prefix}count`, plus the same keys under `{prefix}{group}/` for each group.
        An empty set of rows gives count 0 and NaN metrics.

    Raises:
        ValueError: for an empty `ks`, a k < 1, non-1-D or negative ranks, or a group
            mask that is not bool `[N]`.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be 1-D; got shape {ranks.shape}.")
    if np.any(ranks < 0):
        raise ValueError(f"ranks must be >= 0; got minimum {ranks.min()}.")
    if len(ks) == 0:
        raise ValueError("ks must name at least one cut-off.")
    for k in ks:
        check_positive_int("k", k)
    result = _metrics(ranks, ks, prefix)
    for name, mask in (groups or {}).items():
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != ranks.shape:
            raise ValueError(
                f"groups[{name!r}] must be a bool mask of shape {ranks.shape}; got "
                f"{mask.dtype} with shape {mask.shape}.")
        result.update(_metrics(ranks[mask], ks, f"{prefix}{name}/"))
    return result


def popularity_groups(counts: np.ndarray, num_groups: int = 5) -> Dict[str, np.ndarray]:
    """Splits the real items into popularity groups of near-equal size.

    The real items `2..V-1` are ranked by descending count, ties going to the lower
    index, and the ranking is cut into `num_groups` consecutive slices whose sizes
    differ by at most one (the first `(V - 2) % num_groups` slices hold the extra
    item, as `np.array_split` does). `"pop1"` holds the most popular items. Padding
    (0) and OOV (1) are in no group. With more groups than real items the last groups
    are empty. Pass the result as `evaluate_embeddings(item_groups=...)` to get
    metrics per popularity group of the target.

    Args:
        counts: `[V]` non-negative item counts (e.g. training-target frequencies)
            indexed by vocabulary index; entries 0 and 1 are ignored.
        num_groups: number of groups, >= 1.

    Returns:
        `{"pop1": bool[V], ..., f"pop{num_groups}": bool[V]}`, disjoint masks whose
        union is the real items.

    Raises:
        ValueError: if `num_groups < 1`, `counts` is not 1-D numeric of length >= 2,
            or holds a negative or non-finite count.
    """
    check_positive_int("num_groups", num_groups)
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] < FIRST_ITEM or not (
            np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(
            f"counts must be a 1-D numeric [V] array with V >= {FIRST_ITEM}; got "
            f"{counts.dtype} with shape {counts.shape}.")
    real = counts[FIRST_ITEM:].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(real) | (real < 0))
    if bad.size:
        index = bad[0] + FIRST_ITEM
        raise ValueError(
            f"counts[{index}] = {counts[index]}; expected finite counts >= 0.")
    # A stable sort of the negated counts keeps tied items in index order.
    ranked = np.argsort(-real, kind="stable") + FIRST_ITEM
    groups = {}
    for group, items in enumerate(np.array_split(ranked, num_groups), start=1):
        mask = np.zeros(counts.shape[0], dtype=bool)
        mask[items] = True
        groups[f"pop{group}"] = mask
    return groups


def frequency_groups(counts: np.ndarray, num_groups: int = 10) -> Dict[str, np.ndarray]:
    """Splits the real items into groups of equal interaction mass (PIR §4.3).

    Items are ranked by descending count (ties to the lower index) and cut where
    the running share of all interactions crosses `g / num_groups`: item i goes to
    group `floor(num_groups * (mass before i) / total)`, so `"freq0"` holds the few
    most frequent items and the last group the long tail (items never seen, count 0,
    included). Each group holds about `1 / num_groups` of the interactions (exactly,
    up to one item's count at each boundary).

    Args:
        counts: `[V]` non-negative counts by vocabulary index; 0 and 1 ignored.
        num_groups: G >= 1.

    Returns:
        `{"freq0": bool[V], ..., f"freq{G-1}": bool[V]}`, disjoint masks whose union
        is the real items (a group may be empty when one item holds more than
        `1 / G` of the mass).

    Raises:
        ValueError: as `popularity_groups`, or all counts zero.
    """
    check_positive_int("num_groups", num_groups)
    popularity_groups(counts, 1)  # validates counts
    real = np.asarray(counts, np.float64)[FIRST_ITEM:]
    total = real.sum()
    if total <= 0:
        raise ValueError("counts are all zero; frequency groups need interactions.")
    ranked = np.argsort(-real, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(real[ranked])[:-1]])
    group_of = np.minimum((num_groups * before / total).astype(np.int64), num_groups - 1)
    groups = {}
    for group in range(num_groups):
        mask = np.zeros(len(counts), dtype=bool)
        mask[ranked[group_of == group] + FIRST_ITEM] = True
        groups[f"freq{group}"] = mask
    return groups
