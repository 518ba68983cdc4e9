"""Cold items: items held out of training entirely, to measure how well an item tower
embeds items it never saw (PIR §4.4's new items; `DataConfig.cold_items`).

A share of the catalogue is drawn at random (seeded); every interaction with those
items is removed from the sequences the model trains and is validated on, and each
user's first interaction with each of them becomes a cold example: the user's warm
items before it (the most recent `max_len`) -> the cold item. The cold items stay in
the vocabulary, so the candidate tower embeds them like any item: an id tower can only
give their untrained initial vectors, an attribute tower (PIR) embeds them from their
attributes.
"""

from typing import List, Sequence, Tuple

import numpy as np

from tfrec_proxy.data.examples import Examples
from tfrec_proxy.data.vocab import PAD


def choose_cold_items(sequences: Sequence[np.ndarray], vocab_size: int, fraction: float,
                      seed: int = 0) -> np.ndarray:
    """A random `fraction` of the items that occur in `sequences`.

    Args:
        sequences: Per-user int item-index arrays.
        vocab_size: V.
        fraction: Share of the occurring items to hold out, in [0, 1).
        seed: Seed of the draw.

    Returns:
        bool `[V]`, True for the cold items.

    Raises:
        ValueError: `fraction` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold_items must be a share in [0, 1), got {fraction!r}.")
    occurring = np.unique(np.concatenate(list(sequences))) if len(sequences) else []
    occurring = np.asarray(occurring, np.int64)
    occurring = occurring[occurring >= 2]
    count = int(round(fraction * len(occurring)))
    cold = np.zeros(vocab_size, bool)
    if count:
        cold[np.random.default_rng(seed).choice(occurring, count, replace=False)] = True
    return cold


def hold_out_items(users: np.ndarray, sequences: Sequence[np.ndarray], cold: np.ndarray,
                   history_len: int) -> Tuple[List[np.ndarray], Examples]:
    """Removes the cold items from the sequences and builds the cold examples.

    Args:
        users: `[U]` raw user ids.
        sequences: Per-user time-ordered int item-index arrays.
        cold: bool `[V]` cold items.
        history_len: L of the examples' histories.

    Returns:
        `(warm_sequences, cold_examples)`: the sequences without cold items (in the
        same order, possibly shorter) and one example per user and cold item (its
        first interaction, when at least one warm item precedes it).
    """
    warm_sequences, histories, targets, owners = [], [], [], []
    for user, sequence in zip(users, sequences):
        sequence = np.asarray(sequence)
        is_cold = cold[sequence]
        warm_sequences.append(sequence[~is_cold])
        seen = set()
        warm_before = np.cumsum(~is_cold) - ~is_cold  # warm items before each position
        warm = sequence[~is_cold]
        for position in np.flatnonzero(is_cold):
            item = int(sequence[position])
            if item in seen or warm_before[position] == 0:
                seen.add(item)
                continue
            seen.add(item)
            history = warm[:warm_before[position]][-history_len:]
            row = np.full(history_len, PAD, np.int32)
            row[history_len - len(history):] = history
            histories.append(row)
            targets.append(item)
            owners.append(user)
    examples = Examples(
        history=np.asarray(histories, np.int32).reshape(len(histories), history_len),
        target=np.asarray(targets, np.int32), user=np.asarray(owners, np.int64))
    return warm_sequences, examples
