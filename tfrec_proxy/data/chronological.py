"""FELRec's data protocol (Weimann & Conrad, §2.6 and §3.1): one global time line.

`chronological_split` sorts the interactions by timestamp (stable: ties keep their
row order), cuts the first 80% for training, the next 10% for validation and the
last 10% for testing, and labels every validation and test interaction with the
paper's disjoint partitions, relative to the training interactions:

* "observed": user and item both occur in training;
* "new_users": the item occurs in training, the user does not;
* "new_items": the item does not occur in training, whatever the user ("new both",
  user and item both unseen, belongs here as in the paper, and is flagged in
  `ChronologicalSplit.new_both` for separate reporting).

Training interactions are "observed" by definition.

Users and items get contiguous indices in order of first appearance on the time
line, so the users seen in training are exactly the indices `< num_train_users`
(same for items), and the entities of validation and test get the indices after
them: a `RepresentationCache` sized for training grows for them.

For every interaction (in time order) it also builds FELRec's inputs: the last
`history_len` items of the user and the last `history_len` users of the item,
strictly before the interaction on the time line (same-timestamp interactions
earlier in row order count as before, as in the reference code), oldest first,
left-padded with -1 (index 0 is a real entity). A history never holds the
interaction itself or a later one. numpy and pandas only.
"""

import dataclasses
from typing import Dict, Optional

import numpy as np
import pandas as pd

COLUMNS = ("user_id", "item_id", "timestamp")
SPLITS = ("train", "validation", "test")
PARTITIONS = ("observed", "new_users", "new_items")
OBSERVED, NEW_USERS, NEW_ITEMS = 0, 1, 2
PAD = -1


def past_neighbours(owner: np.ndarray, other: np.ndarray, length: int,
                    rows: Optional[np.ndarray] = None) -> np.ndarray:
    """For interactions in time order, the last `length` `other`s of each `owner` before.

    Vectorised: the interactions are grouped by owner (stable, so each group stays in
    time order); row g of a group of rank r looks back at grouped rows g-1 .. g-length
    that belong to the same group (offset k valid iff k <= r).

    Args:
        owner: `[N]` int owner index per interaction (e.g. user index), in time order.
        other: `[N]` int index of the other side (e.g. item index).
        length: History length L >= 1.
        rows: Optional interaction rows (positions in time order) to compute, to build
            histories chunk by chunk; default all.

    Returns:
        `[len(rows), L]` int32, oldest first, left-padded with -1.

    Example:

        past_neighbours(np.array([0, 1, 0, 0]), np.array([5, 6, 7, 8]), 2)
        # [[-1, -1], [-1, -1], [-1, 5], [5, 7]]
    """
    owner, other = np.asarray(owner), np.asarray(other)
    if owner.shape != other.shape or owner.ndim != 1:
        raise ValueError(f"past_neighbours needs two [N] arrays, got shapes {owner.shape} "
                         f"and {other.shape}.")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"past_neighbours length must be an int >= 1, got {length!r}.")
    count = len(owner)
    order = np.argsort(owner, kind="stable")
    grouped_owner, grouped_other = owner[order], other[order].astype(np.int32)
    starts = np.ones(count, bool)
    starts[1:] = grouped_owner[1:] != grouped_owner[:-1]
    positions = np.arange(count)
    rank = positions - np.maximum.accumulate(np.where(starts, positions, 0))
    grouped_row = np.empty(count, np.int64)
    grouped_row[order] = positions
    selected = grouped_row if rows is None else grouped_row[np.asarray(rows)]
    offsets = np.arange(length, 0, -1)  # column j looks back length - j rows
    source = selected[:, None] - offsets[None, :]
    valid = offsets[None, :] <= rank[selected][:, None]
    return np.where(valid, grouped_other[np.maximum(source, 0)], PAD).astype(np.int32)


@dataclasses.dataclass
class ChronologicalPart:
    """One split's interactions in time order (views into `ChronologicalSplit`).

    Attributes:
        name: "train", "validation" or "test".
        rows: Positions of these interactions on the global time line.
        user: `[n]` int32 user indices.
        item: `[n]` int32 item indices.
        user_history: `[n, L]` int32 item indices (user's past items, -1 padding).
        item_history: `[n, L]` int32 user indices (item's past users, -1 padding).
        partition: `[n]` int8 codes into `PARTITIONS`.
        new_both: `[n]` bool, user and item both unseen in training.
    """

    name: str
    rows: np.ndarray
    user: np.ndarray
    item: np.ndarray
    user_history: np.ndarray
    item_history: np.ndarray
    partition: np.ndarray
    new_both: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def features(self) -> Dict[str, np.ndarray]:
        """`{"user", "item", "user_history", "item_history"}`, e.g. for
        `tf.data.Dataset.from_tensor_slices` (do not shuffle: order is the protocol)."""
        return {"user": self.user, "item": self.item, "user_history": self.user_history,
                "item_history": self.item_history}

    def mask(self, partition: str) -> np.ndarray:
        """`[n]` bool rows of one partition ("observed", "new_users", "new_items",
        or "new_both")."""
        if partition == "new_both":
            return self.new_both
        if partition not in PARTITIONS:
            raise ValueError(f"Unknown partition {partition!r}; expected one of "
                             f"{PARTITIONS + ('new_both',)}.")
        return self.partition == PARTITIONS.index(partition)


@dataclasses.dataclass
class ChronologicalSplit:
    """FELRec's split of one interaction log (build it with `chronological_split`).

    Attributes:
        interactions: The frame sorted on the time line, with added columns `row`
            (original position), `user_index`, `item_index`, `split` (name) and
            `partition` (name).
        user: `[N]` int32 user index per interaction, in time order.
        item: `[N]` int32 item index per interaction.
        user_history: `[N, L]` int32 the user's previous items (oldest first, -1 pad).
        item_history: `[N, L]` int32 the item's previous users.
        partition: `[N]` int8 codes into `PARTITIONS` (training rows: observed).
        new_both: `[N]` bool, neither user nor item seen in training.
        user_ids: Raw user id of each user index.
        item_ids: Raw item id of each item index.
        num_train: Training interactions (rows `[0, num_train)`).
        num_validation: Validation interactions (the next rows); test is the rest.
        num_train_users: Users in training (indices `[0, num_train_users)`).
        num_train_items: Items in training.
        history_len: L.
    """

    interactions: pd.DataFrame
    user: np.ndarray
    item: np.ndarray
    user_history: np.ndarray
    item_history: np.ndarray
    partition: np.ndarray
    new_both: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    num_train: int
    num_validation: int
    num_train_users: int
    num_train_items: int
    history_len: int

    @property
    def num_users(self) -> int:
        """All users (training, validation and test)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """All items."""
        return len(self.item_ids)

    def _bounds(self, name: str) -> slice:
        ends = {"train": (0, self.num_train),
                "validation": (self.num_train, self.num_train + self.num_validation),
                "test": (self.num_train + self.num_validation, len(self.user))}
        if name not in ends:
            raise ValueError(f"Unknown split {name!r}; expected one of {SPLITS}.")
        return slice(*ends[name])

    def part(self, name: str) -> ChronologicalPart:
        """The "train", "validation" or "test" interactions, in time order."""
        bounds = self._bounds(name)
        return ChronologicalPart(name, np.arange(len(self.user))[bounds], self.user[bounds],
                                 self.item[bounds], self.user_history[bounds],
                                 self.item_history[bounds], self.partition[bounds],
                                 self.new_both[bounds])

    @property
    def train(self) -> ChronologicalPart:
        return self.part("train")

    @property
    def validation(self) -> ChronologicalPart:
        return self.part("validation")

    @property
    def test(self) -> ChronologicalPart:
        return self.part("test")

    def partition_counts(self) -> Dict[str, Dict[str, int]]:
        """`{split: {partition: count}}` for validation and test (plus "new_both")."""
        counts = {}
        for name in SPLITS[1:]:
            part = self.part(name)
            counts[name] = {p: int(part.mask(p).sum()) for p in PARTITIONS + ("new_both",)}
        return counts


def _check_frame(interactions: pd.DataFrame) -> None:
    if not isinstance(interactions, pd.DataFrame):
        raise ValueError(f"chronological_split needs a pandas DataFrame, got "
                         f"{type(interactions).__name__}.")
    missing = [c for c in COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions lack column(s) {missing}; expected {list(COLUMNS)}, "
                         f"got {list(interactions.columns)}.")
    for column in COLUMNS:
        empty = interactions[column].isna().to_numpy()
        if empty.any():
            first = int(np.flatnonzero(empty)[0])
            raise ValueError(f"interactions column {column!r} has {int(empty.sum())} "
                             f"missing value(s), first at row {first}.")
    if len(interactions) == 0:
        raise ValueError("interactions are empty.")


def chronological_split(interactions: pd.DataFrame, train_fraction: float = 0.8,
                        validation_fraction: float = 0.1,
                        history_len: int = 64) -> ChronologicalSplit:
    """Sorts, splits 80/10/10 and partitions interactions; builds the histories.

    The first `floor(N * train_fraction)` interactions on the time line train, the
    next `floor(N * (train_fraction + validation_fraction)) - num_train` validate,
    the rest test. Cuts are by position, so equal timestamps may straddle a cut.

    Args:
        interactions: Frame with `user_id`, `item_id` (any hashable ids) and
            `timestamp` (anything pandas sorts: numbers, datetimes); other columns
            are kept.
        train_fraction: Share of training interactions, in (0, 1].
        validation_fraction: Share of validation interactions, >= 0.
        history_len: L, the longest history (paper: 64).

    Returns:
        The `ChronologicalSplit`.

    Raises:
        ValueError: a missing column or value, bad fractions or history length, or
            no training interaction.

    Example:

        frame = pd.DataFrame({"user_id": [1, 2, 1], "item_id": [7, 7, 8],
                              "timestamp": [30, 10, 20]})
        split = chronological_split(frame, 2 / 3, 0.0, history_len=2)
        split.user_history  # [[-1, -1], [-1, -1], [-1, 1]]: user 1 saw item 8 (index 1)
    """
    _check_frame(interactions)
    if not (0.0 < train_fraction <= 1.0 and 0.0 <= validation_fraction
            and train_fraction + validation_fraction <= 1.0 + 1e-12):
        raise ValueError(f"Need 0 < train_fraction <= 1, validation_fraction >= 0 and a sum "
                         f"<= 1; got {train_fraction!r} and {validation_fraction!r}.")
    if not isinstance(history_len, (int, np.integer)) or history_len < 1:
        raise ValueError(f"history_len must be an int >= 1, got {history_len!r}.")
    count = len(interactions)
    frame = interactions.reset_index(drop=True)
    frame.insert(0, "row", np.arange(count))
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    num_train = int(np.floor(count * train_fraction + 1e-9))
    num_seen = int(np.floor(count * (train_fraction + validation_fraction) + 1e-9))
    num_seen = min(max(num_seen, num_train), count)
    if num_train < 1:
        raise ValueError(f"train_fraction={train_fraction} of {count} interactions leaves "
                         f"no training interaction.")
    user, user_ids = pd.factorize(frame["user_id"], sort=False)
    item, item_ids = pd.factorize(frame["item_id"], sort=False)
    user, item = user.astype(np.int32), item.astype(np.int32)
    # First-appearance order: the training entities are the smallest indices.
    num_train_users = int(user[:num_train].max()) + 1
    num_train_items = int(item[:num_train].max()) + 1
    new_user, new_item = user >= num_train_users, item >= num_train_items
    partition = np.where(new_item, NEW_ITEMS, np.where(new_user, NEW_USERS, OBSERVED))
    split = np.repeat(np.arange(3), [num_train, num_seen - num_train, count - num_seen])
    frame["user_index"], frame["item_index"] = user, item
    frame["split"] = np.asarray(SPLITS)[split]
    frame["partition"] = np.asarray(PARTITIONS)[partition]
    return ChronologicalSplit(
        interactions=frame, user=user, item=item,
        user_history=past_neighbours(user, item, int(history_len)),
        item_history=past_neighbours(item, user, int(history_len)),
        partition=partition.astype(np.int8), new_both=new_user & new_item,
        user_ids=np.asarray(user_ids), item_ids=np.asarray(item_ids),
        num_train=num_train, num_validation=num_seen - num_train,
        num_train_users=num_train_users, num_train_items=num_train_items,
        history_len=int(history_len))
