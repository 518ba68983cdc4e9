"""Reading interaction files into a checked `user_id, item_id, timestamp` frame.

Two text formats are read, told apart by content:

* MovieLens `ratings.dat`: `UserID::MovieID::Rating::Timestamp` per line.
* SASRec `ml-1m.txt`: `user item` per line (whitespace-separated); the file order is
  the time order, so the 0-based line index becomes the timestamp.
"""

import io
import pathlib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")

# Files looked for, in order, when `load_interactions` is given a directory.
DATA_FILE_NAMES = ("ratings.dat", "ml-1m.txt")

_MOVIELENS_FORMAT = "MovieLens `UserID::MovieID::Rating::Timestamp` (four integers)"
_SASREC_FORMAT = "SASRec `user item` (two whitespace-separated integers)"
_MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_SASREC_COLUMNS = ("user_id", "item_id")
_INTEGER = re.compile(r"[+-]?\d+")
_INT64 = np.iinfo(np.int64)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value, for readable messages."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class LoadReport:
    """What a load read, kept and dropped.

    Attributes:
        source: the file read.
        rows_read: lines read, blank ones included.
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


def _integer_column(values: pd.Series, column: str, source: str) -> np.ndarray:
    """Converts one column to int64, naming the first bad value's row otherwise."""
    missing = values.isna().to_numpy()
    if missing.any():
        row = _plain(values.index[np.argmax(missing)])
        raise ValueError(f"{source}: column {column!r} has a missing value (NaN/None) at "
                         f"row {row!r}; expected an integer in every row")
    kind = values.dtype.kind
    if kind in "iu":
        if kind == "u" and len(values) and values.max() > _INT64.max:
            position = np.argmax(values.to_numpy() > _INT64.max)
            raise ValueError(f"{source}: column {column!r} at row "
                             f"{_plain(values.index[position])!r} has value "
                             f"{_plain(values.iloc[position])!r}, which does not fit in int64")
        return values.to_numpy(dtype=np.int64)
    numbers = (pd.to_numeric(values, errors="coerce") if kind != "b"
               else pd.Series(np.nan, index=values.index))
    as_float = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(as_float) | (as_float != np.floor(as_float)) | (
            np.abs(as_float) >= 2.0 ** 63)
    if bad.any():
        position = np.argmax(bad)
        raise ValueError(f"{source}: column {column!r} at row "
                         f"{_plain(values.index[position])!r} has value "
                         f"{_plain(values.iloc[position])!r}, which is not an integer; "
                         "expected integer ids and timestamps (3 and 3.0 are accepted)")
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
        ValueError: the frame is empty, a required column is missing, or a required
            value is missing or not an integer (the message names the column, the row
            index and the source).
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
        out[column] = _integer_column(df[column], column, source)
    return out


def _resolve(path: Union[str, pathlib.Path]) -> pathlib.Path:
    """The data file for `path`: the file itself, or the first known file in a folder."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interaction data not found: {path} does not exist")
    if not path.is_dir():
        return path
    for name in DATA_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no interaction file in directory {path}: looked for "
                            f"{', '.join(DATA_FILE_NAMES)}")


def _parse_slowly(path: pathlib.Path, lines: List[str], kept: Sequence[int],
                  movielens: bool) -> np.ndarray:
    """Parses line by line, raising on the first malformed line.

    Returns:
        int64 `[len(kept), fields]`.
    """
    expected = _MOVIELENS_FORMAT if movielens else _SASREC_FORMAT
    width = len(_MOVIELENS_COLUMNS if movielens else _SASREC_COLUMNS)
    rows = np.empty((len(kept), width), dtype=np.int64)
    for row, index in enumerate(kept):
        line = lines[index]
        fields = line.strip().split("::") if movielens else line.split()
        problem = None
        if len(fields) != width:
            problem = f"found {len(fields)} field(s)"
        else:
            for value in fields:
                if not _INTEGER.fullmatch(value) or not _INT64.min <= int(value) <= _INT64.max:
                    problem = f"field {value!r} is not an int64 integer"
                    break
        if problem:
            raise ValueError(f"{path}, line {index + 1}: malformed line {line!r} ({problem}); "
                             f"expected {expected}")
        rows[row] = [int(value) for value in fields]
    return rows


def _parse(path: pathlib.Path, lines: List[str], kept: List[int], movielens: bool) -> np.ndarray:
    """Parses the kept lines with pandas' C reader, or line by line where that fails.

    Returns:
        int64 `[len(kept), fields]`.
    """
    text = "\n".join(lines[index] for index in kept)
    if movielens:
        text = text.replace("::", "\t")
    width = len(_MOVIELENS_COLUMNS if movielens else _SASREC_COLUMNS)
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t" if movielens else r"\s+",
                            header=None, engine="c", low_memory=False)
    except (ValueError, pd.errors.ParserError):
        frame = None
    if (frame is not None and frame.shape == (len(kept), width)
            and all(dtype.kind == "i" for dtype in frame.dtypes)):
        return frame.to_numpy(dtype=np.int64)
    return _parse_slowly(path, lines, kept, movielens)


def load_interactions(path: Union[str, pathlib.Path]) -> Tuple[pd.DataFrame, LoadReport]:
    """Reads a MovieLens `ratings.dat` or SASRec `ml-1m.txt` interaction file.

    The format is chosen by content: if the first non-blank line contains `::` the file
    is MovieLens (`UserID::MovieID::Rating::Timestamp`, the rating kept as column
    `rating`), otherwise SASRec (`user item`; timestamp = 0-based line index in the
    file, so file order is time order). Blank lines are skipped and counted in the
    report.

    Args:
        path: a data file, or a directory holding `ratings.dat` or else `ml-1m.txt`.

    Returns:
        `(interactions, report)`: a frame with int64 columns `user_id`, `item_id`,
        `timestamp` (and `rating` for MovieLens) in file order, and what was read.

    Raises:
        FileNotFoundError: `path` does not exist, or a directory holds no known file.
        ValueError: the file has no interactions, or a line is malformed (the message
            gives the file, the 1-based line number, the line and the expected format).
    """
    file = _resolve(path)
    text = file.read_text(encoding="latin-1")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    kept = [index for index, line in enumerate(lines) if line.strip()]
    if not kept:
        raise ValueError(f"{file}: no interactions (the file has no non-blank line)")
    movielens = "::" in lines[kept[0]]
    values = _parse(file, lines, kept, movielens)
    if movielens:
        frame = pd.DataFrame(values, columns=list(_MOVIELENS_COLUMNS))
    else:
        frame = pd.DataFrame(values, columns=list(_SASREC_COLUMNS))
        frame["timestamp"] = np.asarray(kept, dtype=np.int64)
    frame = frame[list(REQUIRED_COLUMNS) + (["rating"] if movielens else [])]
    blank = len(lines) - len(kept)
    report = LoadReport(source=str(file), rows_read=len(lines), rows_kept=len(frame),
                        rows_dropped=blank,
                        dropped_reasons={"blank line": blank} if blank else {})
    return frame, report


def default_data_dir() -> Optional[pathlib.Path]:
    """The shared data folder `<repo root>/../shared/data`, or None if it is absent.

    The repo root is the folder holding the `tfrec_proxy` package.
    """
    data_dir = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return data_dir if data_dir.is_dir() else None
