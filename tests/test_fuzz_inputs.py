"""Bad input, tried systematically (hypothesis): the interaction loaders (SASRec and
MovieLens text, CSV tables), the session-log loader and interaction frames. Every
generated input is either read exactly (each kept line's integers, in order) or
refused with a `ValueError` naming the file and the line / column; nothing else
escapes and nothing is dropped silently (blank lines are counted in the report).

Run with `--hypothesis-show-statistics` to see how many inputs were tried."""

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfrec_proxy.data.frames import validate_interactions
from tfrec_proxy.data.loaders import load_interactions
from tfrec_proxy.data.sessions import load_sessions
from conftest import fuzz_settings

FUZZ = fuzz_settings(80)
INT64 = np.iinfo(np.int64)
_INTEGER = re.compile(r"[+-]?\d+")

ids = st.one_of(st.integers(0, 10**6), st.integers(-5, -1),
                st.integers(INT64.max - 2, INT64.max + 3))  # past int64 too
junk = st.sampled_from(["", "x", "1.5", "nan", "-", "1e3", "٣", "0x1f", "１", "3 4 5",
                        "\t", "1,2", "NA", "+7"])


def _valid_id(text: str) -> bool:
    # ASCII digits only: `str.isdigit` (and Python's int) accept other scripts' digits.
    return bool(_INTEGER.fullmatch(text)) and text.isascii() and \
        INT64.min <= int(text) <= INT64.max


def _line(fields, sep):
    return sep.join(str(f) for f in fields)


sasrec_lines = st.lists(st.one_of(
    st.tuples(ids, ids).map(lambda f: _line(f, " ")),
    st.tuples(ids, ids).map(lambda f: _line(f, "\t")),
    st.just(""), st.just("   "),
    st.tuples(ids, junk).map(lambda f: _line(f, " ")),
    st.tuples(ids, ids, ids).map(lambda f: _line(f, " ")),
), min_size=0, max_size=12)


def _expect_sasrec(lines):
    """(values or None, 1-based number of the first bad line or None)."""
    kept = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for number, line in kept:
        fields = line.split()
        if len(fields) != 2 or not all(_valid_id(f) for f in fields):
            return None, number
        rows.append([int(f) for f in fields])
    return rows, None


@FUZZ
@given(lines=sasrec_lines)
def test_sasrec_text_is_read_exactly_or_refused_by_line(tmp_path, lines):
    path = tmp_path / "data.txt"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1", errors="replace")
    lines = path.read_text(encoding="latin-1").split("\n")[:-1]
    rows, bad = _expect_sasrec(lines)
    if rows == []:
        with pytest.raises(ValueError, match="no interactions"):
            load_interactions(path, file_format="sasrec")
        return
    if bad is not None:
        with pytest.raises(ValueError, match=rf"data.txt, line {bad}: malformed line"):
            load_interactions(path, file_format="sasrec")
        return
    frame, report = load_interactions(path, file_format="sasrec")
    np.testing.assert_array_equal(frame[["user_id", "item_id"]].to_numpy(), rows)
    assert report.rows_kept == len(rows) and report.rows_kept + report.rows_dropped == \
        report.rows_read == len(lines)
    # Non-negative ids pass the frame check; a negative one is named.
    if any(value < 0 for row in rows for value in row):
        with pytest.raises(ValueError, match="expected ids >= 0"):
            validate_interactions(frame, "data.txt")
    else:
        validate_interactions(frame, "data.txt")


movielens_lines = st.lists(st.one_of(
    st.tuples(ids, ids, st.integers(1, 5), st.integers(0, 10**9)).map(
        lambda f: _line(f, "::")),
    st.tuples(ids, junk, st.integers(1, 5), st.integers(0, 9)).map(lambda f: _line(f, "::")),
    st.tuples(ids, ids, st.integers(1, 5)).map(lambda f: _line(f, "::")),
    st.tuples(ids, ids).map(lambda f: _line(f, "::") + "::"),
    st.just(""),
), min_size=1, max_size=10)


@FUZZ
@given(lines=movielens_lines)
def test_movielens_text_is_read_exactly_or_refused_by_line(tmp_path, lines):
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1", errors="replace")
    lines = path.read_text(encoding="latin-1").split("\n")[:-1]
    kept = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not kept:
        with pytest.raises(ValueError, match="no interactions"):
            load_interactions(path, file_format="movielens")
        return
    rows, bad = [], None
    for number, line in kept:
        fields = line.strip().split("::")
        if len(fields) != 4 or not all(_valid_id(f) for f in fields):
            bad = number
            break
        rows.append([int(f) for f in fields])
    if bad is not None:
        with pytest.raises(ValueError, match=rf"ratings.dat, line {bad}: malformed line"):
            load_interactions(path, file_format="movielens")
        return
    frame, _ = load_interactions(path, file_format="movielens")
    expected = np.asarray(rows)[:, [0, 1, 3, 2]]  # user, item, timestamp, rating
    np.testing.assert_array_equal(
        frame[["user_id", "item_id", "timestamp", "rating"]].to_numpy(), expected)


cells = st.one_of(ids.map(str), junk, st.floats(allow_nan=True, allow_infinity=True).map(str))


@FUZZ
@given(table=st.lists(st.tuples(cells, cells, cells), min_size=0, max_size=8),
       sep=st.sampled_from([",", ";"]))
def test_csv_tables_are_read_exactly_or_the_cell_is_named(tmp_path, table, sep):
    path = tmp_path / "log.csv"
    rows = [sep.join(["user_id", "item_id", "timestamp"])]
    rows += [sep.join(cell.replace(sep, "") for cell in row) for row in table]
    path.write_text("\n".join(rows) + "\n")
    try:
        frame, report = load_interactions(path)
    except ValueError as error:
        message = str(error)
        assert "log.csv" in message, message
        assert re.search(r"no interactions|column '\w+'|cannot parse|missing", message), \
            message
        return
    # Read: every data row kept, each value an integer (3.0 accepted as 3).
    assert report.rows_dropped == 0 and len(frame) == report.rows_read
    assert all(frame[c].dtype == np.int64 for c in ("user_id", "item_id", "timestamp"))


session_rows = st.lists(st.tuples(
    st.one_of(st.integers(1, 30).map(str), junk),            # session_id
    st.one_of(st.just("NA"), st.just(""), st.integers(0, 9).map(str), junk),  # user_id
    st.one_of(ids.map(str), junk),                           # item_id
    st.one_of(st.integers(0, 10**7).map(str), st.integers(-5, -1).map(str), junk),
    st.one_of(st.just("2016-05-09"), st.just("2016-13-01"), st.just("09/05/2016"), junk),
), min_size=0, max_size=8)


@FUZZ
@given(rows=session_rows)
def test_session_logs_are_read_or_the_row_and_column_are_named(tmp_path, rows):
    path = tmp_path / "views.csv"
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    lines += [";".join(cell.replace(";", "") for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    try:
        frame = load_sessions(path)
    except ValueError as error:
        message = str(error)
        assert "views.csv" in message, message
        assert re.search(r"no views|column '\w+'|cannot parse|missing", message), message
        return
    assert len(frame) == len(rows)  # nothing dropped silently
    assert frame["item_id"].dtype == np.int64 and (frame["item_id"] >= 0).all()


@FUZZ
@given(values=st.lists(st.one_of(st.integers(-3, 10), st.floats(), st.none(),
                                 st.text(max_size=3)), min_size=1, max_size=6))
def test_interaction_frames_name_the_bad_cell(values):
    frame = pd.DataFrame({"user_id": [1] * len(values), "item_id": values,
                          "timestamp": range(len(values))})
    try:
        out = validate_interactions(frame, "frame")
    except ValueError as error:
        assert re.search(r"frame: column 'item_id' (has a missing value|at row \d+)",
                         str(error)), str(error)
        return
    assert (out["item_id"] >= 0).all() and out["item_id"].dtype == np.int64
