"""Exclusion sets and uniform negative sampling for the sampled protocol.

Evaluation rows share their exclusion sets: every row of a user excludes the same
items (the user's history). `Exclusions` stores one sorted unique item set per
*owner* (CSR `indptr` / `items`) and a `row_owner` index, so that 35,737 MovieLens-1M
rows over 6,040 users hold ~1.0M (user, item) pairs instead of 13.4M per-row copies.
Internally, exclusions are looked up by owner-level keys `owner * V + item`; a row's
target is row-specific and handled on its own (never a negative, whatever the set).
"""

import warnings
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy.metrics.formulas import FIRST_ITEM, ArrayLike, _check_targets

# Rejection-sampling rounds before the remaining rows are drawn exactly.
_MAX_REJECTION_ROUNDS = 32
# Random priorities (or eligibility flags) held at once by the exact samplers.
_DENSE_BLOCK_ELEMENTS = 1 << 22
# Largest owner-level bitmap (32 MiB) used for exclusion lookups, else binary search.
_BITMAP_MAX_BITS = 1 << 28
# Keys looked up at once.
_LOOKUP_ELEMENTS = 1 << 20


def _integer_array(values: ArrayLike, name: str) -> np.ndarray:
    """`values` as int64; floats only when integral (an empty `np.array([])` is float)."""
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        bad = (np.flatnonzero(values != np.floor(values))
               if np.issubdtype(values.dtype, np.floating) else [0])
        if len(bad):
            raise ValueError(f"{name} must hold integer item indices; got "
                             f"{values.reshape(-1)[bad[0]].item()!r} ({values.dtype}).")
    return values.astype(np.int64, copy=False)


def _csr(owner: np.ndarray, items: np.ndarray, num_owners: int) -> Tuple[np.ndarray, np.ndarray]:
    """`(indptr, items)` of each owner's sorted unique items.

    `owner` must be non-decreasing and `items` in `[0, 2**31)`, so that the pairs sort
    as one int64 key `owner * 2**31 + item`.
    """
    if np.any((owner[1:] == owner[:-1]) & (items[1:] <= items[:-1])):
        keys = np.sort((owner << 31) + items)
        keep = np.ones(keys.size, dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        owner, items = keys[keep] >> 31, keys[keep] & (2 ** 31 - 1)
    indptr = np.zeros(num_owners + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=num_owners), out=indptr[1:])
    return indptr, items


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class Exclusions:
    """Per-row exclusion sets stored once per owner (e.g. per user).

    Row `r` excludes `items[indptr[o]:indptr[o + 1]]` with `o = row_owner[r]`. Items
    are vocabulary indices; padding/OOV entries are allowed and ignored (they are
    never candidates). The arrays are read-only int64 views (the constructor shares,
    not copies, int64 inputs).

    Attributes:
        indptr: `[num_owners + 1]` int64 CSR offsets, `indptr[0] == 0`, non-decreasing.
        items: `[indptr[-1]]` int64, each owner's items sorted ascending and distinct.
        row_owner: `[N]` int64 owner of each evaluation row, in `[0, num_owners)`.
        owner_ids: optional `[num_owners]` name of each owner (the raw user ids for
            `from_user_sets`), used in error messages; None for `from_rows`.
    """

    def __init__(self, indptr: ArrayLike, items: ArrayLike, row_owner: ArrayLike,
                 owner_ids: Optional[ArrayLike] = None) -> None:
        indptr = _integer_array(indptr, "indptr").reshape(-1)
        items, row_owner = _integer_array(items, "items"), _integer_array(row_owner, "row_owner")
        num_owners = indptr.size - 1
        if num_owners < 0 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError(f"indptr must be non-decreasing offsets starting at 0; got "
                             f"{indptr[:8]}.")
        if items.ndim != 1 or items.size != indptr[-1]:
            raise ValueError(f"items must be 1-D with indptr[-1] = {indptr[-1]} entries; "
                             f"got shape {items.shape}.")
        if row_owner.ndim != 1:
            raise ValueError(f"row_owner must be 1-D [N]; got shape {row_owner.shape}.")
        bad = np.flatnonzero((row_owner < 0) | (row_owner >= num_owners))
        if bad.size:
            raise ValueError(f"row_owner[{bad[0]}] = {row_owner[bad[0]]}; expected an owner "
                             f"in [0, {num_owners}).")
        owner = np.repeat(np.arange(num_owners), np.diff(indptr))
        unsorted = np.flatnonzero((owner[1:] == owner[:-1]) & (items[1:] <= items[:-1]))
        if unsorted.size:
            at = unsorted[0]
            raise ValueError(f"items of owner {owner[at]} must be sorted ascending and "
                             f"distinct; got {items[at]} then {items[at + 1]}.")
        if owner_ids is not None and len(owner_ids) != num_owners:
            raise ValueError(f"owner_ids must name {num_owners} owners; got {len(owner_ids)}.")
        # Read-only views: the arrays are shared, not copied, and must not change.
        self.indptr, self.items, self.row_owner = (_read_only(a)
                                                   for a in (indptr, items, row_owner))
        self.owner_ids = None if owner_ids is None else _read_only(np.asarray(owner_ids))

    @classmethod
    def from_user_sets(cls, user_items: Mapping[int, ArrayLike],
                       row_users: ArrayLike) -> "Exclusions":
        """One set per distinct user of `row_users`, shared by all of its rows.

        Args:
            user_items: raw user id -> 1-D integer item indices (e.g. a split's
                `user_items`); only the users in `row_users` are copied.
            row_users: `[N]` raw user id of each evaluation row (keys of `user_items`).

        Returns:
            Exclusions with `num_owners` = the number of distinct users (sorted by id)
            and `owner_ids` = those ids.

        Raises:
            ValueError: if `row_users` is not 1-D, or names a user absent from
                `user_items`.
        """
        row_users = np.asarray(row_users)
        if row_users.ndim != 1:
            raise ValueError(f"row_users must be 1-D [N]; got shape {row_users.shape}.")
        owner_ids, row_owner = np.unique(row_users, return_inverse=True)
        arrays = []
        for owner, user in enumerate(owner_ids.tolist()):
            if user not in user_items:
                row = np.flatnonzero(row_owner == owner)[0]
                raise ValueError(
                    f"row_users[{row}] = {user!r} is not a key of user_items; expected "
                    f"users that have an item set ({len(user_items)} users do).")
            arrays.append(np.asarray(user_items[user]).reshape(-1))
        return cls._from_arrays(arrays, row_owner.reshape(-1), owner_ids, "user_items")

    @classmethod
    def from_rows(cls, rows: Sequence[ArrayLike]) -> "Exclusions":
        """The per-row form: row `i` excludes `rows[i]` (owner `i`, no sharing).

        Args:
            rows: length-`N` sequence of 1-D integer arrays (repeats allowed).

        Returns:
            Exclusions with one owner per row.
        """
        arrays = [np.asarray(row).reshape(-1) for row in rows]
        return cls._from_arrays(arrays, np.arange(len(arrays)), None, "exclude")

    @classmethod
    def _from_arrays(cls, arrays: Sequence[np.ndarray], row_owner: np.ndarray,
                     owner_ids: Optional[np.ndarray], name: str) -> "Exclusions":
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        flat = _integer_array(np.concatenate(arrays) if lengths.sum() else [], name)
        owner = np.repeat(np.arange(len(arrays)), lengths)
        bad = np.flatnonzero((flat < 0) | (flat >= 2 ** 31))
        if bad.size:
            label = int(owner[bad[0]]) if owner_ids is None else owner_ids[owner[bad[0]]].item()
            raise ValueError(f"{name}[{label!r}] contains {flat[bad[0]]}; expected "
                             "vocabulary indices in [0, 2**31).")
        indptr, items = _csr(owner, flat, len(arrays))
        return cls(indptr, items, row_owner, owner_ids)

    @property
    def num_rows(self) -> int:
        """N, the number of evaluation rows."""
        return int(self.row_owner.size)

    @property
    def num_owners(self) -> int:
        """The number of stored sets."""
        return int(self.indptr.size - 1)

    def __len__(self) -> int:
        return self.num_rows

    def owner_items(self, owner: int) -> np.ndarray:
        """The sorted items of set `owner` (a read-only view)."""
        return self.items[self.indptr[owner]:self.indptr[owner + 1]]

    def row_items(self, row: int) -> np.ndarray:
        """The sorted items excluded for evaluation row `row` (a read-only view)."""
        return self.owner_items(int(self.row_owner[row]))

    def __repr__(self) -> str:
        return (f"Exclusions(num_rows={self.num_rows}, num_owners={self.num_owners}, "
                f"num_items={self.items.size})")


ExclusionsLike = Union[Exclusions, Sequence[ArrayLike]]


def _as_exclusions(exclude: Optional[ExclusionsLike], num_rows: int) -> Optional[Exclusions]:
    """`exclude` as `Exclusions` for `num_rows` rows (per-row lists via `from_rows`)."""
    if exclude is None:
        return None
    if isinstance(exclude, Exclusions):
        if exclude.num_rows != num_rows:
            raise ValueError(
                f"exclude covers {exclude.num_rows} rows (len(row_owner)); expected one "
                f"per row ({num_rows}).")
        return exclude
    if len(exclude) != num_rows:
        raise ValueError(
            f"exclude must have one array per row ({num_rows}); got {len(exclude)}.")
    return Exclusions.from_rows(exclude)


class _OwnerIndex:
    """Owner-level lookups of the real excluded items, sized by the sets, not the rows.

    Attributes:
        keys: sorted int64 `owner * V + item` of each owner's excluded real items.
        indptr: `[num_owners + 1]` offsets of each owner's keys.
        row_owner: `[N]` owner of each row (all 0, one empty set, without exclusions).
    """

    def __init__(self, exclusions: Optional[Exclusions], num_rows: int, num_items: int):
        self.num_items, self._bits = num_items, None
        if exclusions is None:
            self.keys, self.indptr = np.empty(0, np.int64), np.zeros(2, np.int64)
            self.row_owner = np.zeros(num_rows, np.int64)
            return
        items, indptr = exclusions.items, exclusions.indptr
        bad = np.flatnonzero((items < 0) | (items >= num_items))
        if bad.size:
            owner = int(np.searchsorted(indptr, bad[0], side="right")) - 1
            rows = np.flatnonzero(exclusions.row_owner == owner)
            where = f"exclude[{rows[0]}]" if rows.size else f"exclusion set {owner}"
            if exclusions.owner_ids is not None:
                where += f" (the set of {exclusions.owner_ids[owner].item()!r})"
            raise ValueError(f"{where} contains {items[bad[0]]}; expected vocabulary "
                             f"indices in [0, {num_items}).")
        owner = np.repeat(np.arange(exclusions.num_owners), np.diff(indptr))
        real = items >= FIRST_ITEM
        self.indptr = np.zeros(exclusions.num_owners + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner[real], minlength=exclusions.num_owners),
                  out=self.indptr[1:])
        # Owners ascending, items sorted within each owner: the keys come out sorted.
        self.keys = owner[real] * num_items + items[real]
        self.row_owner = exclusions.row_owner

    def pairs(self, owners: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """`(position in owners, item)` of every excluded item of `owners` (a batch)."""
        first = self.indptr[owners]
        counts = self.indptr[owners + 1] - first
        local_rows = np.repeat(np.arange(owners.size), counts)
        # Concatenated ranges first[j] .. first[j] + counts[j] - 1.
        key_index = np.arange(counts.sum()) + np.repeat(first - np.cumsum(counts) + counts,
                                                       counts)
        return local_rows, self.keys[key_index] - owners[local_rows] * self.num_items

    def contains(self, owners: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`items`-shaped bool: is `items[r, ...]` excluded for owner `owners[r]`?

        A packed bitmap of all `num_owners * V` keys answers with one gather when it
        has at most `_BITMAP_MAX_BITS` bits (2.6 MB for MovieLens-1M's 6,040 users),
        else each key is binary-searched. Lookups go `_LOOKUP_ELEMENTS` at a time.
        """
        found = np.zeros(items.shape, dtype=bool)
        if self.keys.size == 0 or items.size == 0:
            return found
        num_bits = (self.indptr.size - 1) * self.num_items
        if self._bits is None and num_bits <= _BITMAP_MAX_BITS:
            byte = self.keys >> 3
            starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            self._bits = np.zeros(-(-num_bits // 8), dtype=np.uint8)
            self._bits[byte[starts]] = np.bitwise_or.reduceat(
                np.left_shift(1, self.keys & 7).astype(np.uint8), starts)
        step = max(1, _LOOKUP_ELEMENTS // items[0].size)
        for start in range(0, items.shape[0], step):
            stop = start + step
            keys = (owners[start:stop].reshape((-1,) + (1,) * (items.ndim - 1))
                    * self.num_items + items[start:stop])
            if self._bits is not None:
                found[start:stop] = (self._bits[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1
            else:
                index = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
                found[start:stop] = self.keys[index] == keys
        return found

    def eligible_blocks(self, rows: np.ndarray, targets: np.ndarray
                        ) -> Iterator[Tuple[int, np.ndarray]]:
        """Yields `(start, [b, V - 2] bool)`: the eligible items of `rows[start:start + b]`.

        Ineligible: the row's excluded items and its target. Blocks hold at most
        `_DENSE_BLOCK_ELEMENTS` flags (at least one row).
        """
        pool_size = self.num_items - FIRST_ITEM
        rows_per_block = max(1, _DENSE_BLOCK_ELEMENTS // pool_size)
        for start in range(0, rows.size, rows_per_block):
            block_rows = rows[start:start + rows_per_block]
            eligible = np.ones((block_rows.size, pool_size), dtype=bool)
            local_rows, items = self.pairs(self.row_owner[block_rows])
            eligible[local_rows, items - FIRST_ITEM] = False
            eligible[np.arange(block_rows.size), targets[block_rows] - FIRST_ITEM] = False
            yield start, eligible


def _sample_dense(index: _OwnerIndex, rows: np.ndarray, targets: np.ndarray,
                  num_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """Samples `rows` exactly: `[len(rows), num_negatives]` int32, sorted per row.

    Each row takes the items with the `num_negatives` smallest of uniform random
    priorities over the whole pool, ineligible items set to +inf.
    """
    negatives = np.empty((rows.size, num_negatives), dtype=np.int32)
    for start, eligible in index.eligible_blocks(rows, targets):
        priorities = rng.random(eligible.shape)
        priorities[~eligible] = np.inf
        chosen = np.argpartition(priorities, num_negatives - 1, axis=1)[:, :num_negatives]
        negatives[start:start + eligible.shape[0]] = np.sort(chosen, axis=1) + FIRST_ITEM
    return negatives


def _all_eligible(index: _OwnerIndex, rows: np.ndarray, targets: np.ndarray,
                  num_negatives: int) -> np.ndarray:
    """Every eligible item of `rows` (each has < num_negatives), sorted, -1 padded."""
    negatives = np.full((rows.size, num_negatives), -1, dtype=np.int32)
    for start, eligible in index.eligible_blocks(rows, targets):
        local_rows, items = np.nonzero(eligible)  # row-major: sorted within each row
        counts = np.bincount(local_rows, minlength=eligible.shape[0])
        column = np.arange(local_rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        negatives[start + local_rows, column] = items + FIRST_ITEM
    return negatives


def sample_negatives(
    num_items_total: int,
    targets: ArrayLike,
    exclude: Optional[ExclusionsLike] = None,
    num_negatives: int = 99,
    seed: int = 0,
    allow_fewer: bool = False,
) -> np.ndarray:
    """Samples negatives per row, uniformly without replacement.

    Row `i` draws from the real items `2..V-1` minus its excluded items and
    `targets[i]` (IDW paper, section 4.2: "pair the ground-truth item with 99 randomly
    sampled negative items that the user has not previously interacted with").

    Vectorised rejection sampling: all rows are drawn in bulk, each row is sorted,
    and draws that are excluded (owner-level keys `owner * V + item`, looked up in a
    bitmap or by binary search), equal to the target or repeated are redrawn, for at most
    `_MAX_REJECTION_ROUNDS` rounds. Rows whose pool is nearly exhausted (a last draw
    would be accepted with probability < 1/4), and rows still invalid after the last
    round, are drawn exactly instead, as the smallest of random priorities over the
    whole catalogue. Either way each row is a uniform random subset of its pool. The
    draws depend only on each row's set of excluded items, so `Exclusions` and the
    equivalent per-row lists give the same negatives for the same seed.

    Args:
        num_items_total: vocabulary size `V` (including padding and OOV).
        targets: `[N]` integer target items in `[2, V)`.
        exclude: optional `Exclusions` with N rows, or the per-row form, a length-`N`
            sequence of integer arrays (the items row `i` interacted with; converted
            with `Exclusions.from_rows`). Padding/OOV entries are ignored; None
            excludes only the targets.
        num_negatives: negatives per row, K >= 1.
        seed: seed of `np.random.default_rng`; the output is deterministic per seed.
        allow_fewer: if True, a row with fewer than K eligible items gets all of
            them, followed by -1 padding, and one `UserWarning` reports how many rows
            were short; if False such a row is an error.

    Returns:
        `[N, K]` int32 item indices, distinct and sorted ascending within each row
        (short rows: their real items sorted ascending, then -1s).

    Raises:
        ValueError: for `num_negatives < 1`, `V >= 2**31`, targets or excluded items
            outside the vocabulary, `exclude` not covering N rows, or (unless
            `allow_fewer`) a row with fewer than `num_negatives` eligible items.
    """
    check_positive_int("num_negatives", num_negatives)
    num_items = int(num_items_total)
    if num_items > np.iinfo(np.int32).max:
        raise ValueError(
            f"num_items_total must fit int32 (< 2**31); got {num_items_total}.")
    targets = _check_targets(targets, num_items)
    num_rows = targets.shape[0]
    index = _OwnerIndex(_as_exclusions(exclude, num_rows), num_rows, num_items)
    if num_rows == 0:
        return np.empty((0, num_negatives), dtype=np.int32)
    row_owner = index.row_owner
    pool_size = num_items - FIRST_ITEM
    target_excluded = index.contains(row_owner, targets)
    eligible = (pool_size - np.diff(index.indptr)[row_owner]
                - (~target_excluded).astype(np.int64))
    short = eligible < num_negatives
    if short.any() and not allow_fewer:
        row = np.flatnonzero(short)[0]
        raise ValueError(
            f"Row {row} has only {eligible[row]} eligible negative items (items "
            f"{FIRST_ITEM}..{num_items - 1} minus its target and excluded items); "
            f"expected at least num_negatives={num_negatives} (or allow_fewer=True).")

    rng = np.random.default_rng(seed)
    # A rejection row keeps accepting its last draw with probability >= 1/4.
    dense = (4 * (eligible - num_negatives) < pool_size) & ~short
    negatives = np.empty((num_rows, num_negatives), dtype=np.int32)
    rows = np.flatnonzero(~dense & ~short)
    negatives[rows] = rng.integers(
        FIRST_ITEM, num_items, size=(rows.size, num_negatives), dtype=np.int32)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if rows.size == 0:
            break
        block = np.sort(negatives[rows], axis=1)
        invalid = np.zeros(block.shape, dtype=bool)
        invalid[:, 1:] = block[:, 1:] == block[:, :-1]
        invalid |= block == targets[rows, None]
        invalid |= index.contains(row_owner[rows], block)
        block[invalid] = rng.integers(
            FIRST_ITEM, num_items, size=int(invalid.sum()), dtype=np.int32)
        negatives[rows] = block
        rows = rows[invalid.any(axis=1)]
    dense_rows = np.union1d(np.flatnonzero(dense), rows)
    negatives[dense_rows] = _sample_dense(index, dense_rows, targets, num_negatives, rng)
    if short.any():
        short_rows = np.flatnonzero(short)
        negatives[short_rows] = _all_eligible(index, short_rows, targets, num_negatives)
        warnings.warn(
            f"{short_rows.size} of {num_rows} rows have fewer than num_negatives="
            f"{num_negatives} eligible negative items; they get all of them, padded with "
            f"-1 (the fewest negatives of any row: {eligible[short_rows].min()}).",
            UserWarning, stacklevel=2)
    return negatives
