"""Reading interaction files into a checked `user_id, item_id, timestamp` frame.

Formats (`load_interactions(file_format=...)`):

* `"movielens"`: MovieLens `ratings.dat`, `UserID::MovieID::Rating::Timestamp` per line.
* `"sasrec"`: SASRec `ml-1m.txt`, `user item` per line (whitespace-separated); the file
  order is the time order, so the 0-based line index becomes the timestamp.
* `"csv"`, `"tsv"`, `"parquet"`: tables with a header and named columns
  (`tfrec_proxy.data.tables`), e.g. MovieLens' newer `ratings.csv`.
* `"auto"`: by extension (`.csv`, `.tsv`, `.parquet`/`.pq`), otherwise by content
  (`::` in the first non-blank line -> MovieLens, an integer first field -> SASRec).
"""

import io
import pathlib
import re
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_proxy.data.frames import REQUIRED_COLUMNS, LoadReport, validate_interactions
from tfrec_proxy.data.tables import TABLE_FORMATS, read_table

__all__ = ["DATA_FILE_NAMES", "FILE_FORMATS", "REQUIRED_COLUMNS", "LoadReport",
           "default_data_dir", "load_interactions", "validate_interactions"]

FILE_FORMATS = ("auto", "movielens", "sasrec") + TABLE_FORMATS

# Files looked for, in order, when `load_interactions` is given a directory, and the
# format each one is read in.
DATA_FILE_NAMES = ("ratings.dat", "ratings.csv", "ml-1m.txt")
_FORMAT_OF_NAME = {"ratings.dat": "movielens", "ratings.csv": "csv", "ml-1m.txt": "sasrec"}

_EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
# Extensions of other table formats, refused by "auto" before reading their content.
_OTHER_EXTENSIONS = (".json", ".jsonl", ".ndjson", ".xlsx", ".xls", ".ods", ".feather",
                     ".arrow", ".orc", ".avro", ".h5", ".hdf5", ".pkl", ".pickle", ".npy",
                     ".npz", ".xml", ".html", ".db", ".sqlite")
ACCEPTED_FORMATS = (
    "movielens (`UserID::MovieID::Rating::Timestamp` lines, e.g. ratings.dat), sasrec "
    "(`user item` lines, e.g. ml-1m.txt), or a table with a header row: csv (.csv), tsv "
    "(.tsv) or parquet (.parquet, .pq)")

_MOVIELENS_FORMAT = "MovieLens `UserID::MovieID::Rating::Timestamp` (four integers)"
_SASREC_FORMAT = "SASRec `user item` (two whitespace-separated integers)"
_MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_SASREC_COLUMNS = ("user_id", "item_id")
_INTEGER = re.compile(r"[+-]?\d+")
_INT64 = np.iinfo(np.int64)


def _resolve(path: Union[str, pathlib.Path], file_format: str) -> pathlib.Path:
    """The data file for `path`: the file itself, or the first known file in a folder.

    In a folder, only the known names that `file_format` reads are looked for.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interaction data not found: {path} does not exist")
    if not path.is_dir():
        return path
    names = [name for name in DATA_FILE_NAMES
             if file_format in ("auto", _FORMAT_OF_NAME[name])]
    for name in names:
        if (path / name).is_file():
            return path / name
    if not names:
        raise FileNotFoundError(f"{path} is a directory and file_format={file_format!r} has "
                                "no known file name; give the path of the file itself")
    raise FileNotFoundError(f"no interaction file in directory {path}: looked for "
                            f"{', '.join(names)}")


def _text_format(file: pathlib.Path, first_line: str) -> str:
    """`"movielens"` or `"sasrec"` from the first non-blank line, for `"auto"`."""
    if "::" in first_line:
        return "movielens"
    fields = first_line.split()
    if fields and _INTEGER.fullmatch(fields[0]):
        return "sasrec"
    shown = first_line if len(first_line) <= 80 else first_line[:77] + "..."
    raise ValueError(f"{file}: unrecognised interaction file format: the first line {shown!r} "
                     f"is neither {_MOVIELENS_FORMAT} nor {_SASREC_FORMAT}; accepted formats: "
                     f"{ACCEPTED_FORMATS}. Pass file_format= to choose one.")


def _format_of(file: pathlib.Path, file_format: str) -> Optional[str]:
    """The format to read `file` in; None for `"auto"` on a text file (decided by content)."""
    if file_format != "auto":
        return file_format
    suffix = file.suffix.lower()
    if suffix in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[suffix]
    if suffix in _OTHER_EXTENSIONS:
        raise ValueError(f"{file}: unrecognised interaction file format {suffix!r}; accepted "
                         f"formats: {ACCEPTED_FORMATS}. Convert the file to one of them.")
    return None


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


def load_interactions(path: Union[str, pathlib.Path], file_format: str = "auto",
                      user_column: str = "user_id", item_column: str = "item_id",
                      time_column: Optional[str] = "timestamp"
                      ) -> Tuple[pd.DataFrame, LoadReport]:
    """Reads an interaction file: MovieLens, SASRec, CSV, TSV or Parquet.

    With `file_format="auto"`, `.csv`, `.tsv`, `.parquet` and `.pq` files are tables;
    other files are told apart by content: if the first non-blank line contains `::`
    the file is MovieLens (`UserID::MovieID::Rating::Timestamp`, the rating kept as
    column `rating`), if its first field is an integer SASRec (`user item`; timestamp =
    0-based line index in the file, so file order is time order). In the text formats
    blank lines are skipped and counted in the report.

    Tables (`tfrec_proxy.data.tables.read_table`) need a header row; their user, item
    and time columns are named by `user_column`, `item_column` and `time_column`, and a
    `rating` column is kept. The column names do not apply to the text formats, except
    that `time_column=None` also makes a MovieLens file's line order its time order.

    Args:
        path: a data file, or a directory holding `ratings.dat`, `ratings.csv` or
            `ml-1m.txt` (the first found, in that order, among those `file_format`
            reads).
        file_format: `"auto"`, `"movielens"`, `"sasrec"`, `"csv"`, `"tsv"` or
            `"parquet"`.
        user_column: a table's integer user id column.
        item_column: a table's integer item id column.
        time_column: a table's integer (or datetime) timestamp column; None uses the
            row order as time order.

    Returns:
        `(interactions, report)`: a frame with int64 columns `user_id`, `item_id`,
        `timestamp` `[N]` (and `rating` when the source has one) in file order, and
        what was read.

    Raises:
        FileNotFoundError: `path` does not exist, or a directory holds no known file.
        ValueError: an unknown `file_format`; a file in an unrecognised format (the
            message lists the accepted ones); no interactions; a malformed text line
            (the message gives the file, the 1-based line number, the line and the
            expected format); a missing table column (named, with the columns
            present); or a non-integer id or timestamp (the column and row are named).
    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}; expected one of "
                         f"{list(FILE_FORMATS)}")
    file = _resolve(path, file_format)
    chosen = _format_of(file, file_format)
    if chosen in TABLE_FORMATS:
        return read_table(file, chosen, user_column, item_column, time_column)
    text = file.read_text(encoding="latin-1")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    kept = [index for index, line in enumerate(lines) if line.strip()]
    if not kept:
        raise ValueError(f"{file}: no interactions (the file has no non-blank line)")
    movielens = (chosen or _text_format(file, lines[kept[0]])) == "movielens"
    values = _parse(file, lines, kept, movielens)
    if movielens:
        frame = pd.DataFrame(values, columns=list(_MOVIELENS_COLUMNS))
        if time_column is None:
            frame["timestamp"] = np.asarray(kept, dtype=np.int64)
    else:
        frame = pd.DataFrame(values, columns=list(_SASREC_COLUMNS))
        frame["timestamp"] = np.asarray(kept, dtype=np.int64)
    frame = frame[list(REQUIRED_COLUMNS) + (["rating"] if movielens else [])]
    blank = len(lines) - len(kept)
    report = LoadReport(source=str(file), rows_read=len(lines), rows_kept=len(frame),
                        rows_dropped=blank,
                        dropped_reasons={"blank line": blank} if blank else {})
    return frame, report


def resolved_format(path: Union[str, pathlib.Path], file_format: str = "auto") -> str:
    """The format `load_interactions(path, file_format)` reads the file in: one of
    `FILE_FORMATS` less `"auto"` (for text files decided by the first non-blank line).

    Raises:
        FileNotFoundError, ValueError: as `load_interactions` for a missing file or an
            unknown format.
    """
    file = _resolve(path, file_format)
    chosen = _format_of(file, file_format)
    if chosen is not None:
        return chosen
    with open(file, encoding="latin-1") as lines:
        first = next((line for line in lines if line.strip()), "")
    return _text_format(file, first) if first else "sasrec"


def default_data_dir() -> Optional[pathlib.Path]:
    """The shared data folder `<repo root>/../shared/data`, or None if it is absent.

    The repo root is the folder holding the `tfrec_proxy` package.
    """
    data_dir = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return data_dir if data_dir.is_dir() else None
