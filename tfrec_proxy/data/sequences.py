"""User sequences, chunking (IDW §4.1) and leave-one-out examples.

Item sequences hold vocabulary indices (int32, `PAD = 0`, `OOV = 1`). The pipeline is

    user_sequences -> split_long_sequences -> leave_one_out
        -> make_dataset (per-prefix) / make_sequence_dataset (all positions)

with `item_frequencies`, `sampling_probabilities` and `head_item_mask` computed from the
training targets (logQ correction, head/tail metrics). The example containers live in
`tfrec_proxy.data.examples`, the `tf.data` builders in `tfrec_proxy.data.datasets`
(re-exported here).
"""

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy.data.datasets import make_dataset, make_sequence_dataset, sequences_per_batch
from tfrec_proxy.data.examples import Examples, SequenceExamples
from tfrec_proxy.data.frames import validate_interactions
from tfrec_proxy.data.vocab import Vocabulary

__all__ = ["Examples", "SequenceExamples", "SequenceSplit", "group_sequences",
           "head_item_mask", "item_frequencies", "leave_one_out", "make_dataset",
           "make_sequence_dataset", "sampling_probabilities", "sequences_per_batch",
           "split_long_sequences", "user_item_sets", "user_sequences"]


def _flatten(users: np.ndarray, sequences: Sequence[np.ndarray]
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks `(users, sequences)` and concatenates the sequences.

    Returns:
        `(users, lengths, items)`: int64 `[S]`, int64 `[S]` and the concatenated items
        `[sum(lengths)]`.
    """
    users = np.asarray(users)
    if users.ndim != 1 or len(users) != len(sequences):
        raise ValueError(f"users must be 1-D with one entry per sequence, got shape "
                         f"{users.shape} for {len(sequences)} sequences")
    for position, sequence in enumerate(sequences):
        if np.ndim(sequence) != 1:
            raise ValueError(f"sequence {position} (user {users[position]}) must be 1-D, "
                             f"got shape {np.shape(sequence)}")
    lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
    items = (np.concatenate(sequences) if len(sequences)
             else np.empty(0, dtype=np.int32))
    return users.astype(np.int64), lengths, items


def user_sequences(interactions: pd.DataFrame, vocab: Vocabulary
                   ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Groups interactions into one time-ordered item sequence per user.

    Args:
        interactions: frame with `user_id`, `item_id`, `timestamp` (see
            `validate_interactions`).
        vocab: item vocabulary; unknown items become `OOV` and are counted in a
            warning.

    Returns:
        `(users, sequences)`: int64 `[U]` raw user ids ascending, and per user an int32
        array of item indices sorted by timestamp (stable: equal timestamps keep row
        order).
    """
    return group_sequences(validate_interactions(interactions), vocab)


def group_sequences(frame: pd.DataFrame, vocab: Vocabulary
                    ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """`user_sequences` for a frame that `validate_interactions` already returned."""
    users = frame["user_id"].to_numpy()
    order = np.lexsort((frame["timestamp"].to_numpy(), users))  # stable
    unique_users, starts = np.unique(users[order], return_index=True)
    items, unknown = vocab.lookup_with_unknown(frame["item_id"].to_numpy()[order])
    if unknown:
        warnings.warn(f"{unknown} of {len(items)} interactions have item ids that are not in "
                      "the vocabulary; they were mapped to the out-of-vocabulary bucket.",
                      stacklevel=2)
    return unique_users, np.split(items, starts[1:])


def split_long_sequences(users: np.ndarray, sequences: Sequence[np.ndarray],
                         max_len: int = 30, min_len: int = 3
                         ) -> Tuple[np.ndarray, List[np.ndarray], int]:
    """Cuts sequences into chunks of at most `max_len` (IDW §4.1).

    Chunks are counted from the end of each sequence, so the most recent chunk is full
    and the oldest holds the remainder: a length-65 sequence with `max_len=30` gives
    chunks of 5, 30, 30 (oldest first). Chunks shorter than `min_len` are dropped.

    Args:
        users: int64 `[S]` owner of each sequence.
        sequences: S 1-D item-index arrays in time order.
        max_len: longest chunk.
        min_len: shortest chunk kept, in 1..max_len.

    Returns:
        `(owners, chunks, num_dropped)`: int64 `[N]` owner of each chunk, the N chunks
        (per owner, oldest first, same dtype as the input) and the number of
        interactions in dropped chunks.

    Raises:
        ValueError: bad lengths, or `users` and `sequences` do not match.
    """
    check_positive_int("max_len", max_len)
    check_positive_int("min_len", min_len)
    if min_len > max_len:
        raise ValueError(f"min_len must be <= max_len={max_len}, got {min_len}")
    users, lengths, items = _flatten(users, sequences)
    num_chunks = -(-lengths // max_len)
    chunk_lengths = np.full(int(num_chunks.sum()), max_len, dtype=np.int64)
    has_chunks = num_chunks > 0
    oldest = (np.cumsum(num_chunks) - num_chunks)[has_chunks]
    chunk_lengths[oldest] = (lengths - (num_chunks - 1) * max_len)[has_chunks]
    owners = np.repeat(users, num_chunks)
    chunks = np.split(items, np.cumsum(chunk_lengths)[:-1])
    keep = chunk_lengths >= min_len
    return (owners[keep], [chunk for chunk, k in zip(chunks, keep) if k],
            int(chunk_lengths[~keep].sum()))


def per_user_sequences(users: np.ndarray, sequences: Sequence[np.ndarray],
                       max_len: int = 200, min_len: int = 3
                       ) -> Tuple[np.ndarray, List[np.ndarray], int]:
    """The SASRec protocol's one sequence per user (RAM §6.3), as `leave_one_out`
    chunks: each user's most recent `max_len + 3` items, so that the test history is
    the last `max_len` items before the last one, validation the `max_len` before the
    second last, and training targets every item of the `max_len + 1` before those
    (SASRec trains on the last `max_len` positions of the training sequence).

    Args:
        users: int64 `[S]` owner of each sequence.
        sequences: S 1-D item-index arrays in time order (one per user).
        max_len: L, the history length.
        min_len: Users with fewer items are dropped (at least 3).

    Returns:
        `(owners, sequences, num_dropped)` like `split_long_sequences`; `num_dropped`
        counts the interactions of dropped users (older items cut off by the window
        are not counted).
    """
    check_positive_int("max_len", max_len)
    check_positive_int("min_len", min_len)
    users, lengths, items = _flatten(users, sequences)
    keep = lengths >= min_len
    kept = [np.asarray(s)[-(max_len + 3):] for s, k in zip(sequences, keep) if k]
    return users[keep], kept, int(lengths[~keep].sum())


@dataclass(frozen=True, eq=False)
class SequenceSplit:
    """Leave-one-out split of chunked sequences.

    Attributes:
        train: every earlier prefix -> next item.
        validation: all but the last two items -> second-to-last item.
        test: all but the last item -> last item.
        user_items: raw user id -> int32 sorted unique item indices over all the user's
            chunks (targets included): the items to exclude when sampling negatives.
        train_sequences: the `train` examples as whole sequences for all-positions
            training: the same (history, target) pairs, one causal pass per row.
    """

    train: Examples
    validation: Examples
    test: Examples
    user_items: Dict[int, np.ndarray]
    train_sequences: SequenceExamples


def leave_one_out(users: np.ndarray, sequences: Sequence[np.ndarray],
                  history_len: int = 30,
                  user_items: Optional[Dict[int, np.ndarray]] = None) -> SequenceSplit:
    """Builds leave-one-out train / validation / test examples from chunks.

    For a chunk `s` of length n >= 3: test is `s[:n-1] -> s[n-1]`, validation is
    `s[:n-2] -> s[n-2]` and train is `s[:t] -> s[t]` for t = 1..n-3. Each history holds
    the last `history_len` items of its prefix, left-padded with `PAD`. Examples are in
    chunk order, then time order. A user's chunks are taken to be listed oldest first
    (as `split_long_sequences` returns them): examples from the last chunk listed for
    a user get `last_chunk=True`.

    `train_sequences` holds the same training examples as whole sequences: a chunk with
    n >= 4 gives the row `history = s[0:n-3]`, `targets = s[1:n-2]`, left-padded to
    L = `history_len` (chunks with n == 3 have no training target and give no row).
    If n - 3 > L, the row keeps the first L items and targets (exact for t <= L), and
    each later target t = L+1..n-3 gets its own row `s[t-L:t]` with only its last
    column's target `s[t]` set, so that a causal pass over the rows sees exactly the
    histories of `train` (a chunk of `split_long_sequences(max_len=history_len)` never
    needs such rows).

    Args:
        users: int64 `[S]` owner of each chunk (raw user id).
        sequences: S 1-D item-index chunks, e.g. from `split_long_sequences`.
        history_len: L, the history width.
        user_items: the split's exclusion sets when they should cover more than
            these chunks (e.g. `user_item_sets` of the unsplit sequences); default
            built from the chunks.

    Returns:
        The split; see `SequenceSplit`.

    Raises:
        ValueError: there is no chunk, a chunk is shorter than 3, or the arguments do
            not match.
    """
    check_positive_int("history_len", history_len)
    owners, lengths, items = _flatten(users, sequences)
    if not len(lengths):
        raise ValueError("no chunks: leave_one_out needs at least one sequence")
    short = np.flatnonzero(lengths < 3)
    if short.size:
        position = short[0]
        raise ValueError(f"chunk {position} (user {owners[position]}) has "
                         f"{lengths[position]} item(s); leave_one_out needs >= 3 per chunk "
                         "(drop shorter ones with split_long_sequences(min_len=3))")
    items = items.astype(np.int32)
    num_sequences = len(lengths)
    starts = np.cumsum(lengths) - lengths
    # Each chunk is preceded by L padding slots, so the window of L slots before any
    # target holds only padding and earlier items of the target's own chunk.
    chunk_of_item = np.repeat(np.arange(num_sequences), lengths)
    padded = np.zeros(len(items) + history_len * num_sequences, dtype=np.int32)
    padded[np.arange(len(items)) + history_len * (chunk_of_item + 1)] = items
    windows = np.lib.stride_tricks.sliding_window_view(padded, history_len)
    # A chunk is its user's last when no later chunk in the list has the same owner.
    _, last_from_end = np.unique(owners[::-1], return_index=True)
    last_chunk = np.zeros(num_sequences, dtype=bool)
    last_chunk[num_sequences - 1 - last_from_end] = True

    # One example per (chunk, t) with t = 1..n-1.
    per_chunk = lengths - 1
    example_chunk = np.repeat(np.arange(num_sequences), per_chunk)
    t = np.arange(int(per_chunk.sum())) - np.repeat(np.cumsum(per_chunk) - per_chunk,
                                                    per_chunk) + 1
    target_slot = starts[example_chunk] + t + history_len * (example_chunk + 1)
    steps_from_end = lengths[example_chunk] - t  # 1 = test, 2 = validation

    def examples(mask: np.ndarray) -> Examples:
        slots = target_slot[mask]
        chunk = example_chunk[mask]
        return Examples(history=windows[slots - history_len], target=padded[slots],
                        user=owners[chunk], last_chunk=last_chunk[chunk])

    if user_items is None:
        user_items = _item_sets(owners[chunk_of_item], items)
    return SequenceSplit(train=examples(steps_from_end >= 3),
                         validation=examples(steps_from_end == 2),
                         test=examples(steps_from_end == 1), user_items=user_items,
                         train_sequences=_train_sequences(owners, lengths, starts, items,
                                                          history_len))


def _train_sequences(owners: np.ndarray, lengths: np.ndarray, starts: np.ndarray,
                     items: np.ndarray, history_len: int) -> SequenceExamples:
    """The rows of `SequenceSplit.train_sequences` (see `leave_one_out`), vectorised.

    Args:
        owners: int64 `[S]` owner of each chunk.
        lengths: int64 `[S]` chunk lengths (>= 3).
        starts: int64 `[S]` offset of each chunk in `items`.
        items: int32 `[sum(lengths)]` the concatenated chunks.
        history_len: L.
    """
    num_targets = lengths - 3  # training targets of each chunk: t = 1..n-3
    rows_per_chunk = (num_targets > 0) + np.maximum(num_targets - history_len, 0)
    row_chunk = np.repeat(np.arange(len(lengths)), rows_per_chunk)
    # Rank 0: the chunk's first row, items s[0:w]; rank e >= 1: items s[e:e+L], whose
    # last column predicts target t = L + e.
    rank = np.arange(len(row_chunk)) - np.repeat(np.cumsum(rows_per_chunk) - rows_per_chunk,
                                                 rows_per_chunk)
    width = np.where(rank == 0, np.minimum(num_targets[row_chunk], history_len), history_len)
    column = np.arange(history_len)
    position = column[None, :] - (history_len - width)[:, None]  # < 0: padding
    valid = position >= 0
    has_target = valid & ((rank == 0)[:, None] | (column == history_len - 1)[None, :])
    index = (starts[row_chunk] + rank)[:, None] + position  # item index in `items`
    last = max(len(items) - 1, 0)
    history = np.where(valid, items[np.clip(index, 0, last)], 0).astype(np.int32)
    targets = np.where(has_target, items[np.clip(index + 1, 0, last)], 0).astype(np.int32)
    return SequenceExamples(history=history.reshape(-1, history_len),
                            targets=targets.reshape(-1, history_len), user=owners[row_chunk])


def user_item_sets(users: np.ndarray, sequences: Sequence[np.ndarray]) -> Dict[int, np.ndarray]:
    """Each user's sorted unique item indices over all its sequences.

    Args:
        users: int64 `[S]` owner of each sequence.
        sequences: S 1-D item-index arrays.

    Returns:
        raw user id -> int32 sorted unique item indices.
    """
    owners, lengths, items = _flatten(users, sequences)
    return _item_sets(np.repeat(owners, lengths), items.astype(np.int32))


def _item_sets(item_owner: np.ndarray, items: np.ndarray) -> Dict[int, np.ndarray]:
    """Unique (owner, item) pairs grouped by owner, vectorised (no per-user loop)."""
    order = np.lexsort((items, item_owner))
    pair_owner, pair_item = item_owner[order], items[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (pair_owner[1:] != pair_owner[:-1]) | (pair_item[1:] != pair_item[:-1])
    pair_owner, pair_item = pair_owner[first], pair_item[first]
    user_ids, user_starts = np.unique(pair_owner, return_index=True)
    return dict(zip(user_ids.tolist(), np.split(pair_item, user_starts[1:])))


def item_frequencies(targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts how often each index occurs.

    Args:
        targets: int indices in 0..vocab_size-1, any shape.
        vocab_size: V.

    Returns:
        float64 `[V]` counts.
    """
    check_positive_int("vocab_size", vocab_size)
    targets = np.asarray(targets).ravel()
    if targets.size and targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer indices, got dtype {targets.dtype}")
    bad = (targets < 0) | (targets >= vocab_size)
    if np.any(bad):
        raise ValueError(f"target index {targets[bad][0]} is out of range: expected "
                         f"indices in 0..{vocab_size - 1}")
    return np.bincount(targets, minlength=vocab_size).astype(np.float64)


def check_counts(counts: np.ndarray) -> np.ndarray:
    """`[V]` per-item counts as float64, checked: 1-D over the vocabulary, finite, >= 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 3:
        raise ValueError(f"counts must be 1-D over the vocabulary (PAD, OOV and at least "
                         f"one item), got shape {counts.shape}")
    bad = ~(np.isfinite(counts) & (counts >= 0))
    if bad.any():
        position = int(np.argmax(bad))
        raise ValueError(f"counts must be finite and >= 0, got {counts[position]} at "
                         f"index {position}")
    return counts


def sampling_probabilities(counts: np.ndarray) -> np.ndarray:
    """Per-index probability of appearing as an in-batch candidate, for logQ correction.

    Args:
        counts: float `[V]` frequencies, e.g. from `item_frequencies`.

    Returns:
        float32 `[V]`: `counts / counts.sum()`, with zero-count entries set to
        `1 / counts.sum()` so that `log` is finite (the result then sums to slightly
        more than 1).

    Raises:
        ValueError: counts are negative, not finite, or all zero.
    """
    counts = check_counts(counts)
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts are all zero: no item frequency to turn into probabilities")
    return (np.where(counts > 0, counts, 1.0) / total).astype(np.float32)


def head_item_mask(counts: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Marks the most frequent items (the Pareto "head", IDW §4.2).

    The head is the `ceil(fraction * (V - 2))` items with the highest counts among
    indices 2..V-1, ties going to the lower index. PAD and OOV are never head.
    `fraction * (V - 2)` is rounded to 9 decimals first, so float noise such as
    `0.2 * 35 = 7.000000000000001` does not add an item.

    Args:
        counts: float `[V]` frequencies.
        fraction: head share of the items, in [0, 1].

    Returns:
        bool `[V]`.
    """
    counts = check_counts(counts)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    item_counts = counts[2:]
    num_head = math.ceil(round(fraction * len(item_counts), 9))
    ranked = np.lexsort((np.arange(len(item_counts)), -item_counts))
    mask = np.zeros(len(counts), dtype=bool)
    mask[ranked[:num_head] + 2] = True
    return mask
