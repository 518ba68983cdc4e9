"""Training and evaluation example containers (numpy only).

* `Examples`: one next-item example per row (a history and its target).
* `SequenceExamples`: whole training sequences with a target at every position, for
  a model that encodes each sequence once with a causal mask.

Item indices are vocabulary indices (int32, `PAD = 0`, `OOV = 1`).
"""

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np


@dataclass(frozen=True, eq=False)
class Examples:
    """Next-item examples.

    Attributes:
        history: int32 `[N, L]` item indices, left-padded with `PAD` so the most recent
            item is the last column.
        target: int32 `[N]` next item index.
        user: int64 `[N]` raw user id.
        last_chunk: bool `[N]`, True when the example comes from its user's most recent
            chunk (no training target of the user follows it). Not given -> all True
            (every example counts as its user's latest).
        owner: int64 `[N]` raw id of the person a query tower's user embedding reads
            (the `"user_id"` query feature). Not given -> `user`. It differs in the
            session task, where `user` is the session (negatives and exclusions are
            per session) and `owner` the session's user (`-1`: anonymous).
    """

    history: np.ndarray
    target: np.ndarray
    user: np.ndarray
    last_chunk: Optional[np.ndarray] = None
    owner: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        n = len(self.target)
        if np.ndim(self.history) != 2 or len(self.history) != n or np.ndim(self.target) != 1:
            raise ValueError(f"Examples needs history [N, L] and target [N], got shapes "
                             f"{np.shape(self.history)} and {np.shape(self.target)}")
        if np.shape(self.user) != (n,):
            raise ValueError(f"Examples needs user [N] with N={n}, got shape "
                             f"{np.shape(self.user)}")
        if self.last_chunk is None:
            object.__setattr__(self, "last_chunk", np.ones(n, dtype=bool))
        elif np.shape(self.last_chunk) != (n,) or np.asarray(self.last_chunk).dtype != bool:
            raise ValueError(f"Examples needs last_chunk bool [N] with N={n}, got shape "
                             f"{np.shape(self.last_chunk)} and dtype "
                             f"{np.asarray(self.last_chunk).dtype}")
        if self.owner is None:
            object.__setattr__(self, "owner", self.user)
        elif np.shape(self.owner) != (n,):
            raise ValueError(f"Examples needs owner [N] with N={n}, got shape "
                             f"{np.shape(self.owner)}")

    def __len__(self) -> int:
        return len(self.target)

    def select(self, rows: Union[np.ndarray, slice]) -> "Examples":
        """The examples at `rows` (a bool `[N]` mask, integer positions or a slice)."""
        return Examples(history=self.history[rows], target=self.target[rows],
                        user=self.user[rows], last_chunk=self.last_chunk[rows],
                        owner=self.owner[rows])


@dataclass(frozen=True, eq=False)
class SequenceExamples:
    """Training sequences with a next-item target at every position.

    Row r stands for the per-prefix examples `(history[r, :j+1] without padding,
    left-padded to L) -> targets[r, j]` for every column j with a non-zero target;
    `leave_one_out` builds them so that these are exactly its `train` examples.

    Attributes:
        history: int32 `[S, L]` item indices, left-padded with `PAD` (0).
        targets: int32 `[S, L]` aligned with `history`: `targets[r, j]` is the item that
            follows `history[r, j]`; 0 (no target) where `history` is padding, and
            where that position is not a training example.
        user: int64 `[S]` raw user id of each row.
    """

    history: np.ndarray
    targets: np.ndarray
    user: np.ndarray

    def __post_init__(self) -> None:
        if np.ndim(self.history) != 2 or np.shape(self.targets) != np.shape(self.history):
            raise ValueError(f"SequenceExamples needs history and targets of one shape "
                             f"[S, L], got {np.shape(self.history)} and "
                             f"{np.shape(self.targets)}")
        if np.shape(self.user) != (len(self.history),):
            raise ValueError(f"SequenceExamples needs user [S] with S={len(self.history)}, "
                             f"got shape {np.shape(self.user)}")

    def __len__(self) -> int:
        return len(self.history)

    @property
    def num_targets(self) -> int:
        """Number of training targets (non-zero entries of `targets`)."""
        return int(np.count_nonzero(self.targets))
