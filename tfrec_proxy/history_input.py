"""Checking raw-id histories handed to a run (`Run.recommend`, `Run.embed`): one
history or a batch of them, each a sequence of int64 item ids (-1 = padding); errors
name the history at fault (`HistoryError.row`), unknown ids are warned about
(`UnknownItemsWarning`) or refused (`strict`). numpy only.
"""

import math
import warnings
from typing import Any, Iterable, List, Sequence

import numpy as np

from tfrec_proxy.run_format import PAD_ID

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_LISTED = 10  # ids or histories named in one message


class HistoryError(ValueError):
    """A bad history in a batch; `row` is its position in the batch.

    Attributes:
        row: 0-based position of the history in the batch.
        detail: What is wrong with it (the message without the `history N:` prefix).
    """

    def __init__(self, row: int, detail: str) -> None:
        super().__init__(f"history {row}: {detail}")
        self.row = row
        self.detail = detail


class UnknownItemsWarning(UserWarning):
    """History item ids the run's vocabulary lacks, served as out-of-vocabulary."""


def _listed(values: Sequence[Any]) -> str:
    shown = ", ".join(str(value) for value in values[:_LISTED])
    more = f", ... ({len(values) - _LISTED} more)" if len(values) > _LISTED else ""
    return f"[{shown}{more}]"


def _raise_unknown(unknown: List[List[int]], vocab_items: int) -> None:
    for row, ids in enumerate(unknown):
        if ids:
            raise HistoryError(
                row, f"item id(s) {_listed(ids)} are not in the run's vocabulary "
                f"({vocab_items} items); remove them, or pass strict=False (CLI: leave out "
                "--strict) to serve them through the out-of-vocabulary embedding.")


def _warn_unknown(batch: List[List[int]], unknown: List[List[int]]) -> None:
    distinct = set().union(*unknown)
    if not distinct:
        return
    blind = [row for row, (history, ids) in enumerate(zip(batch, unknown))
             if set(history) - {PAD_ID} <= set(ids)]
    message = (f"{len(distinct)} item id(s) {_listed(sorted(distinct))} in "
               f"{sum(map(bool, unknown))} of {len(batch)} histories are not in the run's "
               "vocabulary; they were mapped to the out-of-vocabulary embedding.")
    if blind:
        message += (f" Histories {_listed(blind)} have no known item id, so their "
                    "recommendations come from that embedding alone (mostly popular items).")
    # stacklevel 4: _warn_unknown <- _prepare <- Run method <- the caller.
    warnings.warn(message, UnknownItemsWarning, stacklevel=4)


def _as_batch(histories: Any) -> List[List[int]]:
    """Normalises one history or a batch to int lists; `HistoryError` names a bad one."""
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable):
        raise ValueError(f"history must be a sequence of integer item ids, got {histories!r}.")
    histories = list(histories)
    if not histories:
        raise ValueError("history is empty; expected at least one item id.")
    if not any(isinstance(h, (list, tuple, np.ndarray)) for h in histories):
        histories = [histories]
    batch = []
    for row, history in enumerate(histories):
        if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
            raise HistoryError(row, f"expected a sequence of item ids, got {history!r}.")
        ids = [_as_item_id(value, row) for value in history]
        if not ids:
            raise HistoryError(row, "empty; expected at least one item id.")
        if all(value == PAD_ID for value in ids):
            raise HistoryError(row, f"only padding ({PAD_ID}); expected at least one item "
                               f"id ({PAD_ID} marks padding).")
        batch.append(ids)
    return batch


def _as_item_id(value: Any, row: int) -> int:
    """One raw item id as a Python int in the int64 range."""
    if isinstance(value, (bool, np.bool_)):
        raise HistoryError(row, f"item id {value!r} is a boolean; expected an integer.")
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            raise HistoryError(row, "item id is NaN; expected an integer.")
        if not float(value).is_integer():
            raise HistoryError(row, f"item id {value!r} is not an integer; expected an "
                               "integer item id.")
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise HistoryError(row, f"item id {value!r} is not an integer; expected an integer "
                           "item id.")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise HistoryError(row, f"item id {value} is outside the int64 range "
                           f"[{INT64_MIN}, {INT64_MAX}]; expected an int64 item id.")
    return value
