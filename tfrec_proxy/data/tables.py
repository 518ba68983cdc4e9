"""Interaction tables with named columns: CSV, TSV, Parquet files and pandas frames.

A table holds one interaction per row; the caller names its user, item and (optional)
time columns, e.g. MovieLens' newer `ratings.csv` (`userId,movieId,rating,timestamp`)
with `user_column="userId", item_column="movieId"`. The result is the checked
`user_id, item_id, timestamp` frame of `tfrec_proxy.data.frames` (plus `rating` when
the table has a column of that name).
"""

import pathlib
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_proxy.data.frames import REQUIRED_COLUMNS, LoadReport, integer_column

TABLE_FORMATS = ("csv", "tsv", "parquet")

_RATING = "rating"


def _needed(user_column: str, item_column: str, time_column: Optional[str]
            ) -> List[Tuple[str, str]]:
    """`(column, DataConfig field)` pairs the table must have."""
    needed = [(user_column, "user_column"), (item_column, "item_column")]
    if time_column is not None:
        needed.append((time_column, "time_column"))
    return needed


def _check_present(columns: List[str], user_column: str, item_column: str,
                   time_column: Optional[str], source: str, hint: str = "") -> None:
    """Raises a ValueError naming every named column that `columns` lacks."""
    for name, value in (("user_column", user_column), ("item_column", item_column),
                        ("time_column", time_column)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{source}: {name} must be a column name (str), got {value!r}")
    missing = [f"{column!r} ({field})"
               for column, field in _needed(user_column, item_column, time_column)
               if column not in columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; columns present: "
                         f"{columns}; name the columns with user_column / item_column / "
                         f"time_column (time_column=None uses the row order){hint}")
    duplicated = sorted({column for column in columns if columns.count(column) > 1}
                        & {column for column, _ in _needed(user_column, item_column,
                                                           time_column)})
    if duplicated:
        raise ValueError(f"{source}: column(s) {duplicated} occur more than once; expected "
                         "unique column names")


def select_columns(table: pd.DataFrame, user_column: str = "user_id",
                   item_column: str = "item_id", time_column: Optional[str] = "timestamp",
                   source: str = "interactions DataFrame", rows: str = "") -> pd.DataFrame:
    """Picks and renames a table's columns into the checked interaction frame.

    Args:
        table: `[N]` rows, one interaction each.
        user_column: column of integer user ids.
        item_column: column of integer item ids.
        time_column: column of integer (or datetime) timestamps; None uses the row
            order as time order (timestamp = 0-based row position).
        source: where the table came from, for messages.
        rows: how row labels count in messages (see `frames.integer_column`).

    Returns:
        A frame with int64 columns `user_id`, `item_id`, `timestamp` `[N]` in row order
        (fresh 0..N-1 index), plus the table's `rating` column unchanged when it has one.

    Raises:
        TypeError: `table` is not a DataFrame.
        ValueError: a named column is missing (the message lists the columns present),
            the table has no rows, or an id/timestamp is missing or not an integer (the
            message names the table's column and the row).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    columns = list(table.columns)
    _check_present(columns, user_column, item_column, time_column, source)
    if table.empty:
        raise ValueError(f"{source}: no interactions (the table has no rows)")
    out = pd.DataFrame({
        "user_id": integer_column(table[user_column], user_column, source, rows),
        "item_id": integer_column(table[item_column], item_column, source, rows),
        "timestamp": (np.arange(len(table), dtype=np.int64) if time_column is None
                      else integer_column(table[time_column], time_column, source, rows)),
    })
    if _RATING in columns and columns.count(_RATING) == 1:
        out[_RATING] = table[_RATING].to_numpy()
    return out[list(REQUIRED_COLUMNS) + ([_RATING] if _RATING in out.columns else [])]


def _delimiter(path: pathlib.Path, file_format: str) -> str:
    """Tab for TSV; for CSV `,`, or `;` when the header has `;` and no `,`."""
    if file_format == "tsv":
        return "\t"
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    return ";" if ";" in header and "," not in header else ","


def read_table(path: pathlib.Path, file_format: str, user_column: str = "user_id",
               item_column: str = "item_id", time_column: Optional[str] = "timestamp"
               ) -> Tuple[pd.DataFrame, LoadReport]:
    """Reads a CSV, TSV or Parquet interaction table with a header.

    Only the named columns (and `rating`, when present) are read. CSV files are
    comma-separated, or semicolon-separated when the header line holds `;` and no `,`.

    Args:
        path: the file.
        file_format: `"csv"`, `"tsv"` or `"parquet"`.
        user_column, item_column, time_column: as in `select_columns`.

    Returns:
        `(interactions, report)`: see `select_columns`; the report counts data rows
        (nothing is dropped).

    Raises:
        ValueError: unknown `file_format`, a file that cannot be parsed, a missing
            column, no rows, or a bad id/timestamp (the message gives the file, the
            column and the 0-based data row).
    """
    if file_format not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format {file_format!r}; expected one of "
                         f"{list(TABLE_FORMATS)}")
    source = str(path)
    wanted = [column for column, _ in _needed(user_column, item_column, time_column)]
    if file_format == "parquet":
        import pyarrow.parquet as pq  # only for Parquet files

        try:
            columns = [name for name in pq.read_schema(path).names
                       if not name.startswith("__index_level_")]
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
            raise ValueError(f"{source}: not a readable Parquet file ({error})") from error
        _check_present(columns, user_column, item_column, time_column, source)
        usecols = list(dict.fromkeys(wanted + ([_RATING] if _RATING in columns else [])))
        table = pd.read_parquet(path, columns=usecols)
        rows = " (0-based row)"
    else:
        sep = _delimiter(path, file_format)
        expected = f"a {file_format.upper()} file with a header row"
        try:
            columns = list(pd.read_csv(path, sep=sep, nrows=0,
                                       encoding_errors="replace").columns)
        except (ValueError, pd.errors.ParserError) as error:  # EmptyDataError included
            raise ValueError(f"{source}: cannot read the header ({error}); expected "
                             f"{expected}") from error
        _check_present(columns, user_column, item_column, time_column, source,
                       hint=f"; expected {expected}")
        usecols = list(dict.fromkeys(wanted + ([_RATING] if _RATING in columns else [])))
        try:
            table = pd.read_csv(path, sep=sep, usecols=usecols, low_memory=False,
                                encoding_errors="replace")
        except (ValueError, pd.errors.ParserError) as error:
            raise ValueError(f"{source}: cannot parse the table ({error}); expected "
                             f"{expected}") from error
        rows = " (0-based data row, header not counted)"
    frame = select_columns(table, user_column, item_column, time_column, source, rows)
    report = LoadReport(source=source, rows_read=len(table), rows_kept=len(frame),
                        rows_dropped=0)
    return frame, report
