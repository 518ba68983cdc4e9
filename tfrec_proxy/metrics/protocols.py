"""The sampled and full-ranking evaluation protocols.

The sampled one (IDW paper, section 4.2) ranks the ground-truth item among 99 random
items the user has not interacted with. The full one ranks it among the whole
catalogue, in `[query_batch, chunk]` tiles so that memory stays bounded for
million-item catalogues. Ranks are 0-based and ties count against the target (see
`tfrec_proxy.metrics.formulas`). `item_embeddings` is `[V, d]`, indexed by vocabulary
index; rows 0 (padding) and 1 (OOV) exist but are never candidates.
"""

import math
import warnings
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf
from tfrec_proxy.metrics.formulas import (FIRST_ITEM, ArrayLike, _check_targets,
                                          ranks_from_scores, summarize)
from tfrec_proxy.metrics.negatives import (ExclusionsLike, _as_exclusions, _OwnerIndex,
                                           sample_negatives)
from tfrec_proxy.scoring import DotScorer


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
        negatives: `[N, K]` integer negative items in `[2, V)`, or -1 for padding
            (e.g. from `sample_negatives(..., allow_fewer=True)`); padding never
            counts as beating the target.
        batch_size: queries scored per call.

    Returns:
        `[N]` int64 ranks: the number of (non-padding) negatives scoring `>=` the
        target.

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
    negatives = negatives.astype(np.int64)
    padding = negatives == -1
    bad = np.argwhere(~padding & ((negatives < FIRST_ITEM) | (negatives >= num_items)))
    if bad.size:
        row, column = bad[0]
        raise ValueError(
            f"negatives[{row}, {column}] = {negatives[row, column]}; expected a real item "
            f"in [{FIRST_ITEM}, {num_items}) or -1 (padding).")
    has_padding = bool(padding.any())
    # Padding is scored as the target itself (any valid row would do), then masked out.
    negatives = np.where(padding, targets[:, None], negatives) if has_padding else negatives
    candidates = np.concatenate([targets[:, None], negatives], axis=1)
    ranks = np.empty(targets.shape[0], dtype=np.int64)
    for start in range(0, targets.shape[0], batch_size):
        stop = start + batch_size
        embeddings = tf.gather(item_embeddings, candidates[start:stop])
        scores = scorer.score_candidates(queries[start:stop], embeddings).numpy()
        mask = ~padding[start:stop] if has_padding else None
        ranks[start:stop] = ranks_from_scores(scores[:, 0], scores[:, 1:], mask)
    return ranks


def _candidates(candidate_indices: Optional[ArrayLike], num_items: int) -> np.ndarray:
    """The validated `[C]` int64 candidate items (default all real items)."""
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
    return candidates


def full_ranks(
    scorer: Optional[tf.keras.layers.Layer],
    queries: ArrayLike,
    item_embeddings: ArrayLike,
    targets: ArrayLike,
    exclude: Optional[ExclusionsLike] = None,
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
    rather than building a second dense mask. Exclusion sets are expanded to
    (row, item) pairs only for the current query batch. The target is never excluded
    even if listed in `exclude`; a target absent from `candidate_indices` is ranked
    against those candidates all the same.

    The target score is `scorer.score_candidates(q, item_embeddings[targets][:, None])`;
    in exact arithmetic it equals the target's `score_matrix` column, but float
    reductions may differ in the last bit, which only matters for near-exact ties.

    Args:
        scorer: a scorer (see `tfrec_proxy.scoring`); None means `DotScorer()`.
        queries: `[N, d]` or `[N, M, d]` query embeddings (numpy or tf).
        item_embeddings: `[V, d]` item embeddings indexed by vocabulary index.
        targets: `[N]` integer target items in `[2, V)`.
        exclude: optional `Exclusions` with N rows, or a length-`N` sequence of
            integer arrays: items not to count for row `i` (e.g. the user's history).
        candidate_indices: optional distinct items in `[2, V)` to rank against;
            default all real items `2..V-1`.
        query_batch_size: queries per tile.
        chunk_size: candidates per tile.

    Returns:
        `[N]` int64 ranks: the number of counted candidates scoring `>=` the target.

    Raises:
        ValueError: on bad shapes, out-of-vocabulary items, repeated or empty
            candidates, `exclude` not covering N rows, or batch sizes < 1.
    """
    check_positive_int("query_batch_size", query_batch_size)
    check_positive_int("chunk_size", chunk_size)
    scorer = DotScorer() if scorer is None else scorer
    queries, item_embeddings, targets = _prepare(queries, item_embeddings, targets)
    num_items = int(item_embeddings.shape[0])
    candidates = _candidates(candidate_indices, num_items)
    num_rows = targets.shape[0]
    index = _OwnerIndex(_as_exclusions(exclude, num_rows), num_rows, num_items)
    position = np.full(num_items, -1, dtype=np.int64)
    position[candidates] = np.arange(candidates.size)

    num_chunks = math.ceil(candidates.size / chunk_size)
    ranks = np.zeros(num_rows, dtype=np.int64)
    for start in range(0, num_rows, query_batch_size):
        stop = min(start + query_batch_size, num_rows)
        query_batch = queries[start:stop]
        batch_targets = targets[start:stop]
        target_embeddings = tf.gather(item_embeddings, batch_targets)[:, None, :]
        target_scores = scorer.score_candidates(query_batch, target_embeddings)

        # Masked (row in batch, candidate position) pairs: the batch rows' excluded
        # items other than their targets, then each target once.
        rows, items = index.pairs(index.row_owner[start:stop])
        not_target = items != batch_targets[rows]
        rows = np.concatenate([rows[not_target], np.arange(stop - start)])
        positions = position[np.concatenate([items[not_target], batch_targets])]
        by_position = np.argsort(positions, kind="stable")
        rows, positions = rows[by_position], positions[by_position]
        first_counted = np.searchsorted(positions, 0)
        rows, positions = rows[first_counted:], positions[first_counted:]
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


def _item_mask(mask: ArrayLike, num_items: int, argument: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (num_items,):
        raise ValueError(
            f"{argument} must be a bool array of shape ({num_items},); got "
            f"{mask.dtype} with shape {mask.shape}.")
    return mask


def _row_groups(targets: np.ndarray, num_items: int, head_items: Optional[ArrayLike],
                item_groups: Optional[Mapping[str, ArrayLike]]
                ) -> Optional[Dict[str, np.ndarray]]:
    """`[N]` bool row masks, by each row's target, from `[V]` bool item masks."""
    item_groups = dict(item_groups or {})
    item_masks = {}
    if head_items is not None:
        clash = sorted({"head", "tail"} & set(item_groups))
        if clash:
            raise ValueError(
                f"item_groups[{clash[0]!r}] clashes with the 'head'/'tail' groups of "
                "head_items; expected other group names.")
        head = _item_mask(head_items, num_items, "head_items")
        item_masks = {"head": head, "tail": ~head}
    for name, mask in item_groups.items():
        item_masks[name] = _item_mask(mask, num_items, f"item_groups[{name!r}]")
    return {name: mask[targets] for name, mask in item_masks.items()} or None


def evaluate_embeddings(
    queries: ArrayLike,
    item_embeddings: ArrayLike,
    targets: ArrayLike,
    *,
    scorer: Optional[tf.keras.layers.Layer] = None,
    ks: Sequence[int] = (5, 20),
    head_items: Optional[np.ndarray] = None,
    item_groups: Optional[Mapping[str, np.ndarray]] = None,
    exclude: Optional[ExclusionsLike] = None,
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
        item_groups: optional mapping from group name to a `[V]` bool item mask
            (e.g. `popularity_groups(counts)`); each adds a group of the rows whose
            target is in the mask, e.g. keys `full/pop3/hr@20`.
        exclude: optional `Exclusions` with N rows (e.g.
            `Exclusions.from_user_sets(user_items, row_users)`), or a length-`N`
            sequence of integer arrays, the items each row's user interacted with.
            Never drawn as sampled negatives; removed from the full ranking only when
            `exclude_seen_in_full`.
        num_negatives: sampled negatives per row; rows with fewer eligible items
            (small catalogues) are ranked among all of them, with a `UserWarning`.
        seed: seed of the negative sampler.
        sampled: whether to compute the sampled metrics (keys prefixed "sampled/").
        full: whether to compute the full-ranking metrics (keys prefixed "full/").
        exclude_seen_in_full: whether the full ranking skips the `exclude` items.
        chunk_size: candidates per tile in the full ranking (see `full_ranks`).

    Returns:
        The `summarize` keys under "sampled/" and/or "full/", with "head/" and "tail/"
        groups when `head_items` is given and one group per `item_groups` entry.

    Raises:
        ValueError: if neither protocol is requested, `head_items` or an `item_groups`
            mask is not bool `[V]`, an `item_groups` name is "head" or "tail" while
            `head_items` is given, or as raised by `sample_negatives`,
            `sampled_ranks`, `full_ranks`.
    """
    if not (sampled or full):
        raise ValueError("Nothing to evaluate: set sampled=True and/or full=True.")
    scorer = DotScorer() if scorer is None else scorer
    queries, item_embeddings, targets = _prepare(queries, item_embeddings, targets)
    num_items = int(item_embeddings.shape[0])
    groups = _row_groups(targets, num_items, head_items, item_groups)
    exclusions = _as_exclusions(exclude, targets.shape[0])

    results = {}
    if sampled:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            negatives = sample_negatives(num_items, targets, exclusions, num_negatives,
                                         seed, allow_fewer=True)
        for warning in caught:  # re-raised at the caller of evaluate_embeddings
            warnings.warn(warning.message, warning.category, stacklevel=2)
        ranks = sampled_ranks(scorer, queries, item_embeddings, targets, negatives)
        results.update(summarize(ranks, ks, groups, prefix="sampled/"))
    if full:
        ranks = full_ranks(
            scorer, queries, item_embeddings, targets,
            exclude=exclusions if exclude_seen_in_full else None, chunk_size=chunk_size)
        results.update(summarize(ranks, ks, groups, prefix="full/"))
    return results
