"""Ranking metrics and the sampled / full-ranking evaluation protocols.

Conventions:

* Items are vocabulary indices: 0 is padding, 1 is OOV, real items are `2..V-1`.
  `item_embeddings` is `[V, d]`, indexed by vocabulary index; rows 0 and 1 exist but
  are never candidates.
* A rank is 0-based: the number of OTHER candidates (not the target itself, not
  excluded items) whose score is `>=` the target's score. Ties count against the
  target, so a constant model gets no credit.
* `HR@k = mean(rank < k)`, `NDCG@k = mean(1 / log2(rank + 2) if rank < k else 0)`,
  `MRR = mean(1 / (rank + 1))`.

Two protocols are provided. The sampled one (IDW paper, section 4.2) ranks the
ground-truth item among 99 random items the user has not interacted with. The full one
ranks it among the whole catalogue, in `[query_batch, chunk]` tiles so that memory
stays bounded for million-item catalogues.
"""

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf
from tfrec_proxy.scoring import DotScorer

ArrayLike = Union[np.ndarray, tf.Tensor, Sequence]

# Vocabulary indices below this (0 = padding, 1 = OOV) are never candidates.
FIRST_ITEM = 2
# Rejection-sampling rounds before the remaining rows are drawn exactly.
_MAX_REJECTION_ROUNDS = 32
# Random priorities held at once by the exact (dense) sampler.
_DENSE_BLOCK_ELEMENTS = 1 << 22


def _check_ranks(ranks: ArrayLike) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array; got shape {ranks.shape}.")
    if np.any(ranks < 0):
        raise ValueError(f"ranks must be >= 0; got minimum {ranks.min()}.")
    return ranks


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


def mrr(ranks: ArrayLike) -> float:
    """Mean reciprocal rank.

    Args:
        ranks: `[N]` integer 0-based ranks.

    Returns:
        `mean(1 / (rank + 1))`.

    Raises:
        ValueError: if `ranks` is empty, not 1-D or negative.
    """
    ranks = _check_ranks(ranks)
    return float(np.mean(1.0 / (ranks + 1.0)))


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


def _excluded_keys(
    exclude: Optional[Sequence[ArrayLike]], targets: np.ndarray, num_items: int
) -> np.ndarray:
    """Sorted unique `row * num_items + item` keys of each row's excluded items.

    Each row's target is included; padding and OOV are dropped (never candidates).
    """
    num_rows = targets.shape[0]
    rows = np.arange(num_rows, dtype=np.int64)
    items = targets
    if exclude is not None:
        if len(exclude) != num_rows:
            raise ValueError(
                f"exclude must have one array per row ({num_rows}); got {len(exclude)}.")
        arrays = [np.asarray(row, dtype=np.int64).reshape(-1) for row in exclude]
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=num_rows)
        excluded_items = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
        excluded_rows = np.repeat(rows, lengths)
        bad = np.flatnonzero((excluded_items < 0) | (excluded_items >= num_items))
        if bad.size:
            raise ValueError(
                f"exclude[{excluded_rows[bad[0]]}] contains {excluded_items[bad[0]]}; "
                f"expected vocabulary indices in [0, {num_items}).")
        rows = np.concatenate([rows, excluded_rows])
        items = np.concatenate([items, excluded_items])
    keep = items >= FIRST_ITEM
    # Sort + adjacent-difference is several times faster than np.unique's hashing here.
    keys = np.sort(rows[keep] * num_items + items[keep])
    first_of_run = np.ones(keys.size, dtype=bool)
    first_of_run[1:] = keys[1:] != keys[:-1]
    return keys[first_of_run]


def _keys_of_rows(
    rows: np.ndarray, keys: np.ndarray, key_rows: np.ndarray, num_items: int
) -> Tuple[np.ndarray, np.ndarray]:
    """The excluded `(position in rows, item)` pairs of `rows`, from the sorted keys."""
    first = np.searchsorted(key_rows, rows)
    counts = np.searchsorted(key_rows, rows + 1) - first
    local_rows = np.repeat(np.arange(rows.size), counts)
    # Concatenated ranges first[j] .. first[j] + counts[j] - 1.
    key_index = np.arange(counts.sum()) + np.repeat(first - np.cumsum(counts) + counts,
                                                   counts)
    return local_rows, keys[key_index] - rows[local_rows] * num_items


def _invalid_draws(
    block: np.ndarray, local_rows: np.ndarray, items: np.ndarray, num_items: int
) -> np.ndarray:
    """`[R, K]` bool: draws excluded for their row, or repeating the previous draw.

    `block` must be sorted along axis 1, so that repeats are adjacent and its
    flattened `(row, item)` keys are globally sorted; the (fewer) excluded pairs
    `(local_rows, items)` are then looked up in it.
    """
    invalid = np.zeros(block.shape, dtype=bool)
    invalid[:, 1:] = block[:, 1:] == block[:, :-1]
    drawn = (np.arange(block.shape[0])[:, None] * num_items + block).reshape(-1)
    excluded = local_rows * num_items + items
    found = np.minimum(np.searchsorted(drawn, excluded), drawn.size - 1)
    invalid.reshape(-1)[found[drawn[found] == excluded]] = True
    return invalid


def _sample_dense(
    rows: np.ndarray,
    keys: np.ndarray,
    key_rows: np.ndarray,
    num_items: int,
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Samples `rows` exactly: `[len(rows), num_negatives]` int32, sorted per row.

    Each row takes the items with the `num_negatives` smallest of uniform random
    priorities over the whole pool, excluded items set to +inf. Rows go in blocks of
    at most `_DENSE_BLOCK_ELEMENTS` priorities.
    """
    pool_size = num_items - FIRST_ITEM
    rows_per_block = max(1, _DENSE_BLOCK_ELEMENTS // pool_size)
    negatives = np.empty((rows.size, num_negatives), dtype=np.int32)
    for start in range(0, rows.size, rows_per_block):
        block_rows = rows[start:start + rows_per_block]
        priorities = rng.random((block_rows.size, pool_size))
        local_rows, items = _keys_of_rows(block_rows, keys, key_rows, num_items)
        priorities[local_rows, items - FIRST_ITEM] = np.inf
        chosen = np.argpartition(priorities, num_negatives - 1, axis=1)[:, :num_negatives]
        negatives[start:start + rows_per_block] = np.sort(chosen, axis=1) + FIRST_ITEM
    return negatives


def sample_negatives(
    num_items_total: int,
    targets: ArrayLike,
    exclude: Optional[Sequence[ArrayLike]] = None,
    num_negatives: int = 99,
    seed: int = 0,
) -> np.ndarray:
    """Samples negatives per row, uniformly without replacement.

    Row `i` draws from the real items `2..V-1` minus `exclude[i]` and `targets[i]`
    (IDW paper, section 4.2: "pair the ground-truth item with 99 randomly sampled
    negative items that the user has not previously interacted with").

    Vectorised rejection sampling: all rows are drawn in bulk, each row is sorted,
    and draws that are excluded (binary search of the row's excluded items among its
    sorted draws) or repeated are redrawn, for at most `_MAX_REJECTION_ROUNDS`
    rounds. Rows whose pool is nearly exhausted (a last draw would be accepted with
    probability < 1/4), and rows still invalid after the last round, are drawn
    exactly instead, as the smallest of random priorities over the whole catalogue.
    Either way each row is a uniform random subset of its pool. 100k rows x 99
    negatives with ~10 excluded items per row take well under 1 s.

    Args:
        num_items_total: vocabulary size `V` (including padding and OOV).
        targets: `[N]` integer target items in `[2, V)`.
        exclude: optional length-`N` sequence of integer arrays, the items row `i`
            interacted with (padding/OOV entries are ignored); None excludes only the
            targets.
        num_negatives: negatives per row, >= 1.
        seed: seed of `np.random.default_rng`; the output is deterministic per seed.

    Returns:
        `[N, num_negatives]` int32 item indices, distinct and sorted ascending within
        each row.

    Raises:
        ValueError: for `num_negatives < 1`, `V >= 2**31`, targets or excluded items
            outside the vocabulary, or a row with fewer than `num_negatives` eligible
            items.
    """
    check_positive_int("num_negatives", num_negatives)
    num_items = int(num_items_total)
    if num_items > np.iinfo(np.int32).max:
        raise ValueError(
            f"num_items_total must fit int32 (< 2**31); got {num_items_total}.")
    targets = _check_targets(targets, num_items)
    num_rows = targets.shape[0]
    if num_rows == 0:
        return np.empty((0, num_negatives), dtype=np.int32)
    keys = _excluded_keys(exclude, targets, num_items)
    key_rows = keys // num_items
    pool_size = num_items - FIRST_ITEM
    eligible = pool_size - np.bincount(key_rows, minlength=num_rows)
    short = np.flatnonzero(eligible < num_negatives)
    if short.size:
        row = short[0]
        raise ValueError(
            f"Row {row} has only {eligible[row]} eligible negative items (items "
            f"{FIRST_ITEM}..{num_items - 1} minus its target and excluded items); "
            f"expected at least num_negatives={num_negatives}.")

    rng = np.random.default_rng(seed)
    # A rejection row keeps accepting its last draw with probability >= 1/4.
    dense = 4 * (eligible - num_negatives) < pool_size
    negatives = np.empty((num_rows, num_negatives), dtype=np.int32)
    rows = np.flatnonzero(~dense)
    negatives[rows] = rng.integers(
        FIRST_ITEM, num_items, size=(rows.size, num_negatives), dtype=np.int32)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if rows.size == 0:
            break
        block = np.sort(negatives[rows], axis=1)
        local_rows, items = _keys_of_rows(rows, keys, key_rows, num_items)
        invalid = _invalid_draws(block, local_rows, items, num_items)
        block[invalid] = rng.integers(
            FIRST_ITEM, num_items, size=int(invalid.sum()), dtype=np.int32)
        negatives[rows] = block
        rows = rows[invalid.any(axis=1)]
    dense_rows = np.union1d(np.flatnonzero(dense), rows)
    negatives[dense_rows] = _sample_dense(
        dense_rows, keys, key_rows, num_items, num_negatives, rng)
    return negatives


def _as_float(tensor: tf.Tensor) -> tf.Tensor:
    return tensor if tensor.dtype.is_floating else tf.cast(tensor, tf.float32)


def _prepare(
    queries: ArrayLike, item_embeddings: ArrayLike, targets: ArrayLike
) -> Tuple[tf.Tensor, tf.Tensor, np.ndarray]:
    """Converts and validates the inputs shared by the ranking functions."""
    # Integer inputs would make the scorer truncate float embeddings to integers.
    queries = _as_float(tf.convert_to_tensor(queries, dtype_hint=tf.float32))
    item_embeddings = _as_float(tf.convert_to_tensor(item_embeddings, dtype_hint=tf.float32))
    if queries.shape.rank not in (2, 3):
        raise ValueError(f"queries must be [N, d] or [N, M, d]; got shape {queries.shape}.")
    if item_embeddings.shape.rank != 2:
        raise ValueError(
            f"item_embeddings must be [V, d]; got shape {item_embeddings.shape}.")
    targets = _check_targets(targets, int(item_embeddings.shape[0]))
    if queries.shape[0] != targets.shape[0]:
        raise ValueError(
            f"queries has {queries.shape[0]} rows but targets has {targets.shape[0]}.")
    return queries, item_embeddings, targets


def sampled_ranks(
    scorer: Optional[tf.keras.layers.Layer],
    queries: ArrayLike,
    item_embeddings: ArrayLike,
    targets: ArrayLike,
    negatives: ArrayLike,
    batch_size: int = 4096,
) -> np.ndarray:
    """Ranks each target among its own sampled negatives.

    Per query batch, the target and its negatives are gathered into one
    `[b, 1 + K, d]` tensor and scored by a single `scorer.score_candidates` call, so
    target and negatives go through the same op.

    Args:
        scorer: a scorer (see `tfrec_proxy.scoring`); None means `DotScorer()`.
        queries: `[N, d]` or `[N, M, d]` query embeddings (numpy or tf).
        item_embeddings: `[V, d]` item embeddings indexed by vocabulary index.
        targets: `[N]` integer target items in `[2, V)`.
        negatives: `[N, K]` integer negative items in `[2, V)` (e.g. from
            `sample_negatives`).
        batch_size: queries scored per call.

    Returns:
        `[N]` int64 ranks: the number of negatives scoring `>=` the target.

    Raises:
        ValueError: on bad shapes, out-of-vocabulary items or `batch_size < 1`.
    """
    check_positive_int("batch_size", batch_size)
    scorer = DotScorer() if scorer is None else scorer
    queries, item_embeddings, targets = _prepare(queries, item_embeddings, targets)
    num_items = int(item_embeddings.shape[0])
    negatives = np.asarray(negatives)
    if negatives.ndim != 2 or negatives.shape[0] != targets.shape[0]:
        raise ValueError(
            f"negatives must be [N={targets.shape[0]}, K]; got shape {negatives.shape}.")
    if negatives.size and (negatives.min() < FIRST_ITEM or negatives.max() >= num_items):
        raise ValueError(
            f"negatives must be real items in [{FIRST_ITEM}, {num_items}); got values in "
            f"[{negatives.min()}, {negatives.max()}].")
    candidates = np.concatenate([targets[:, None], negatives.astype(np.int64)], axis=1)
    ranks = np.empty(targets.shape[0], dtype=np.int64)
    for start in range(0, targets.shape[0], batch_size):
        stop = start + batch_size
        embeddings = tf.gather(item_embeddings, candidates[start:stop])
        scores = scorer.score_candidates(queries[start:stop], embeddings).numpy()
        ranks[start:stop] = ranks_from_scores(scores[:, 0], scores[:, 1:])
    return ranks


def full_ranks(
    scorer: Optional[tf.keras.layers.Layer],
    queries: ArrayLike,
    item_embeddings: ArrayLike,
    targets: ArrayLike,
    exclude: Optional[Sequence[ArrayLike]] = None,
    candidate_indices: Optional[ArrayLike] = None,
    query_batch_size: int = 256,
    chunk_size: int = 65536,
) -> np.ndarray:
    """Ranks each target against the whole candidate set, in bounded memory.

    Never materialises `[N, V]` nor `[query_batch_size, V]` scores (TFRS's factorized
    top-k evaluation does, a known OOM trap for large catalogues). It loops over query
    batches and, for each, over candidate chunks: `scorer.score_matrix(q_batch,
    item_embeddings[chunk])` yields a `[query_batch_size, chunk_size]` tile, whose
    count of scores `>=` the target score is accumulated. Peak memory is therefore
    one tile of `query_batch_size x chunk_size` floats plus its bool comparison
    (256 x 65536 float32 = 64 MiB by default, whatever the catalogue size; a
    multi-vector scorer may hold `M` such tiles before its max).

    The target's own column and each row's excluded items are then taken out of the
    count: their (few) entries of the comparison tile are gathered and subtracted,
    rather than building a second dense mask. The target is never excluded even if
    listed in `exclude`; a target absent from `candidate_indices` is ranked against
    those candidates all the same.

    The target score is `scorer.score_candidates(q, item_embeddings[targets][:, None])`;
    in exact arithmetic it equals the target's `score_matrix` column, but float
    reductions may differ in the last bit, which only matters for near-exact ties.

    Args:
        scorer: a scorer (see `tfrec_proxy.scoring`); None means `DotScorer()`.
        queries: `[N, d]` or `[N, M, d]` query embeddings (numpy or tf).
        item_embeddings: `[V, d]` item embeddings indexed by vocabulary index.
        targets: `[N]` integer target items in `[2, V)`.
        exclude: optional length-`N` sequence of integer arrays, items not to count
            for row `i` (e.g. the user's history).
        candidate_indices: optional distinct items in `[2, V)` to rank against;
            default all real items `2..V-1`.
        query_batch_size: queries per tile.
        chunk_size: candidates per tile.

    Returns:
        `[N]` int64 ranks: the number of counted candidates scoring `>=` the target.

    Raises:
        ValueError: on bad shapes, out-of-vocabulary items, repeated or empty
            candidates, or batch sizes < 1.
    """
    check_positive_int("query_batch_size", query_batch_size)
    check_positive_int("chunk_size", chunk_size)
    scorer = DotScorer() if scorer is None else scorer
    queries, item_embeddings, targets = _prepare(queries, item_embeddings, targets)
    num_items = int(item_embeddings.shape[0])
    if candidate_indices is None:
        candidates = np.arange(FIRST_ITEM, num_items, dtype=np.int64)
    else:
        candidates = np.asarray(candidate_indices, dtype=np.int64)
        if candidates.ndim != 1:
            raise ValueError(
                f"candidate_indices must be 1-D; got shape {candidates.shape}.")
        if candidates.size and (candidates.min() < FIRST_ITEM
                                or candidates.max() >= num_items):
            raise ValueError(
                f"candidate_indices must be real items in [{FIRST_ITEM}, {num_items}); "
                f"got values in [{candidates.min()}, {candidates.max()}].")
        if np.unique(candidates).size != candidates.size:
            raise ValueError("candidate_indices must not repeat an item.")
    if candidates.size == 0:
        raise ValueError(f"No candidates to rank against (vocabulary size {num_items}).")

    # Masked (row, candidate position) pairs, sorted by row.
    position = np.full(num_items, -1, dtype=np.int64)
    position[candidates] = np.arange(candidates.size)
    keys = _excluded_keys(exclude, targets, num_items)
    masked_rows, masked_positions = keys // num_items, position[keys % num_items]
    in_candidates = masked_positions >= 0
    masked_rows = masked_rows[in_candidates]
    masked_positions = masked_positions[in_candidates]

    num_chunks = math.ceil(candidates.size / chunk_size)
    ranks = np.zeros(targets.shape[0], dtype=np.int64)
    for start in range(0, targets.shape[0], query_batch_size):
        stop = min(start + query_batch_size, targets.shape[0])
        query_batch = queries[start:stop]
        target_embeddings = tf.gather(item_embeddings, targets[start:stop])[:, None, :]
        target_scores = scorer.score_candidates(query_batch, target_embeddings)

        first, last = np.searchsorted(masked_rows, [start, stop])
        rows = masked_rows[first:last] - start
        positions = masked_positions[first:last]
        by_position = np.argsort(positions)
        rows, positions = rows[by_position], positions[by_position]
        chunk_bounds = np.searchsorted(positions, np.arange(num_chunks + 1) * chunk_size)

        for chunk in range(num_chunks):
            offset = chunk * chunk_size
            chunk_embeddings = tf.gather(
                item_embeddings, candidates[offset:offset + chunk_size])
            scores = scorer.score_matrix(query_batch, chunk_embeddings)
            beats = scores >= target_scores
            counts = tf.reduce_sum(tf.cast(beats, tf.int64), axis=1).numpy()
            lo, hi = chunk_bounds[chunk], chunk_bounds[chunk + 1]
            if hi > lo:
                tile_indices = np.stack([rows[lo:hi], positions[lo:hi] - offset], axis=1)
                masked_beats = tf.gather_nd(beats, tile_indices).numpy()
                counts -= np.bincount(rows[lo:hi][masked_beats], minlength=stop - start)
            ranks[start:stop] += counts
    return ranks


def _metrics(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> Dict[str, float]:
    """HR/NDCG at each k, MRR and count; NaN metrics when `ranks` is empty."""
    empty = ranks.size == 0
    result = {}
    for k in ks:
        result[f"{prefix}hr@{k}"] = math.nan if empty else hit_rate(ranks, k)
        result[f"{prefix}ndcg@{k}"] = math.nan if empty else ndcg(ranks, k)
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
        `{prefix}hr@{k}`, `{prefix}ndcg@{k}` for each k, `{prefix}mrr` and
        `{prefix}count`, plus the same keys under `{prefix}{group}/` for each group.
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


def evaluate_embeddings(
    queries: ArrayLike,
    item_embeddings: ArrayLike,
    targets: ArrayLike,
    *,
    scorer: Optional[tf.keras.layers.Layer] = None,
    ks: Sequence[int] = (5, 20),
    head_items: Optional[np.ndarray] = None,
    exclude: Optional[Sequence[ArrayLike]] = None,
    num_negatives: int = 99,
    seed: int = 0,
    sampled: bool = True,
    full: bool = True,
    exclude_seen_in_full: bool = False,
    chunk_size: int = 65536,
) -> Dict[str, float]:
    """Evaluates query and item embeddings under the sampled and full protocols.

    Args:
        queries: `[N, d]` or `[N, M, d]` query embeddings (numpy or tf).
        item_embeddings: `[V, d]` item embeddings indexed by vocabulary index.
        targets: `[N]` integer target items in `[2, V)`.
        scorer: a scorer (see `tfrec_proxy.scoring`); None means `DotScorer()`.
        ks: cut-offs for HR and NDCG.
        head_items: optional `[V]` bool, True for head items (the IDW paper's 20% most
            frequent items); adds groups "head" (target is a head item) and "tail".
        exclude: optional length-`N` sequence of integer arrays, the items each row's
            user interacted with. Never drawn as sampled negatives; removed from the
            full ranking only when `exclude_seen_in_full`.
        num_negatives: sampled negatives per row.
        seed: seed of the negative sampler.
        sampled: whether to compute the sampled metrics (keys prefixed "sampled/").
        full: whether to compute the full-ranking metrics (keys prefixed "full/").
        exclude_seen_in_full: whether the full ranking skips the `exclude` items.
        chunk_size: candidates per tile in the full ranking (see `full_ranks`).

    Returns:
        The `summarize` keys under "sampled/" and/or "full/", with "head/" and "tail/"
        groups when `head_items` is given.

    Raises:
        ValueError: if neither protocol is requested, `head_items` is not bool `[V]`,
            or as raised by `sample_negatives`, `sampled_ranks`, `full_ranks`.
    """
    if not (sampled or full):
        raise ValueError("Nothing to evaluate: set sampled=True and/or full=True.")
    scorer = DotScorer() if scorer is None else scorer
    queries, item_embeddings, targets = _prepare(queries, item_embeddings, targets)
    num_items = int(item_embeddings.shape[0])
    groups = None
    if head_items is not None:
        head_items = np.asarray(head_items)
        if head_items.dtype != bool or head_items.shape != (num_items,):
            raise ValueError(
                f"head_items must be a bool array of shape ({num_items},); got "
                f"{head_items.dtype} with shape {head_items.shape}.")
        head = head_items[targets]
        groups = {"head": head, "tail": ~head}

    results = {}
    if sampled:
        negatives = sample_negatives(num_items, targets, exclude, num_negatives, seed)
        ranks = sampled_ranks(scorer, queries, item_embeddings, targets, negatives)
        results.update(summarize(ranks, ks, groups, prefix="sampled/"))
    if full:
        ranks = full_ranks(
            scorer, queries, item_embeddings, targets,
            exclude=exclude if exclude_seen_in_full else None, chunk_size=chunk_size)
        results.update(summarize(ranks, ks, groups, prefix="full/"))
    return results
