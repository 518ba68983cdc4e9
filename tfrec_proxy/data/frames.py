"""The checked interaction frame: required columns, integer conversion, load reports.

Every source (text files, tables, pandas frames, the synthetic generator) ends in a
frame with int64 columns `user_id`, `item_id`, `timestamp` checked here.
"""

from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
ID_COLUMNS = ("user_id", "item_id")  # raw ids, >= 0

_INT64 = np.iinfo(np.int64)


def plain(value: object) -> object:
    """A numpy scalar as the Python value, for readable messages."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class LoadReport:
    """What a load read, kept and dropped.

    Attributes:
        source: the file read.
        rows_read: lines read, blank ones included (text formats), or data rows read
            (CSV/TSV/Parquet tables; the header and blank lines are not counted).
        rows_kept: interactions returned.
        rows_dropped: lines skipped, `rows_read - rows_kept`.
        dropped_reasons: number of skipped lines per reason, e.g. `{"blank line": 2}`.
    """

    source: str
    rows_read: int
    rows_kept: int
    rows_dropped: int
    dropped_reasons: Dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in self.dropped_reasons.items())
        return (f"{self.source}: read {self.rows_read:,} rows, kept {self.rows_kept:,}, "
                f"dropped {self.rows_dropped:,}" + (f" ({reasons})" if reasons else ""))


def integer_column(values: pd.Series, column: str, source: str,
                   rows: str = "") -> np.ndarray:
    """Converts one column to int64, naming the first bad value's row otherwise.

    Integers, integer-valued floats (3.0), numeric strings ("3") and datetimes (their
    integer value, so the order is kept) are accepted.

    Args:
        values: `[N]` the column.
        column: its name, for messages.
        source: where it came from, for messages.
        rows: how the row labels count, appended to the row in messages (e.g.
            `" (0-based data row)"`).

    Returns:
        int64 `[N]`.

    Raises:
        ValueError: a value is missing, not an integer, or does not fit in int64.
    """
    def where(position: int) -> str:
        return f"row {plain(values.index[position])!r}{rows}"

    missing = values.isna().to_numpy()
    if missing.any():
        raise ValueError(f"{source}: column {column!r} has a missing value (NaN/None) at "
                         f"{where(int(np.argmax(missing)))}; expected an integer in every row")
    kind = values.dtype.kind
    if kind in "iu":
        if kind == "u" and len(values) and values.max() > _INT64.max:
            position = int(np.argmax(values.to_numpy() > _INT64.max))
            raise ValueError(f"{source}: column {column!r} at {where(position)} has value "
                             f"{plain(values.iloc[position])!r}, which does not fit in int64")
        return values.to_numpy(dtype=np.int64)
    numbers = (pd.to_numeric(values, errors="coerce") if kind != "b"
               else pd.Series(np.nan, index=values.index))
    if numbers.dtype.kind in "iu":  # e.g. datetimes: exact, no float round trip
        return numbers.to_numpy(dtype=np.int64)
    as_float = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(as_float) | (as_float != np.floor(as_float)) | (
            np.abs(as_float) >= 2.0 ** 63)
    if bad.any():
        position = int(np.argmax(bad))
        raise ValueError(f"{source}: column {column!r} at {where(position)} has value "
                         f"{plain(values.iloc[position])!r}, which is not an integer; "
                         "expected integer ids and timestamps (3 and 3.0 are accepted; "
                         "string ids would need a vocabulary of strings, not supported)")
    return as_float.astype(np.int64)


def validate_interactions(df: pd.DataFrame, source: str = "interactions") -> pd.DataFrame:
    """Checks an interaction frame and returns a copy with int64 id/time columns.

    Args:
        df: a frame with at least the columns `user_id`, `item_id`, `timestamp` holding
            integers (integer-valued floats such as 3.0 and numeric strings are
            accepted). Other columns are kept unchanged.
        source: where the frame came from, used in error messages.

    Returns:
        A copy of `df` whose three required columns are int64.

    Raises:
        TypeError: `df` is not a DataFrame.
        ValueError: the frame is empty, a required column is missing, a required
            value is missing or not an integer, or an id is negative (the message
            names the column, the row index and the source).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [column for column in REQUIRED_COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns present: "
                         f"{list(df.columns)}; expected: {list(REQUIRED_COLUMNS)}")
    if df.empty:
        raise ValueError(f"{source}: no interactions (the frame has no rows)")
    out = df.copy()
    for column in REQUIRED_COLUMNS:
        out[column] = integer_column(df[column], column, source)
    for column in ID_COLUMNS:
        check_non_negative(out[column], column, source)
    return out


def check_non_negative(values: pd.Series, column: str, source: str, rows: str = "") -> None:
    """Raises for a negative id: -1 pads histories at serving time (an item -1 would
    be read as padding) and means "unknown user" there, so raw ids must be >= 0.

    Args:
        values: `[N]` int64 ids (`integer_column`'s output, with the frame's index).
        column, source, rows: for the message, as in `integer_column`.

    Raises:
        ValueError: naming the first negative value, its row, the column and source.
    """
    array = np.asarray(values)
    negative = array < 0
    if negative.any():
        position = int(np.argmax(negative))
        label = values.index[position] if isinstance(values, pd.Series) else position
        raise ValueError(f"{source}: column {column!r} at row {plain(label)!r}{rows} has "
                         f"value {int(array[position])}; expected ids >= 0 (-1 pads "
                         "histories and marks unknown users at serving time)")
