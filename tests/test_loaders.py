"""Interaction loading: text formats, directory resolution and checked frames.

Reading CSV/TSV/Parquet tables and pandas frames is tested in `test_tables.py`.
"""

import pathlib

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data import loaders
from tfrec_proxy.data.loaders import (REQUIRED_COLUMNS, LoadReport, default_data_dir,
                                      load_interactions, validate_interactions)


def _write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / name
    path.write_text(text)
    return path


def test_sasrec_file_uses_line_index_as_timestamp_and_counts_blank_lines(tmp_path):
    path = _write(tmp_path, "seq.txt", "1 10\n1 11\n\n2\t10\n   \n 3  12 \n")
    frame, report = load_interactions(path)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert all(dtype == np.int64 for dtype in frame.dtypes)
    np.testing.assert_array_equal(frame.to_numpy(),
                                  [[1, 10, 0], [1, 11, 1], [2, 10, 3], [3, 12, 5]])
    assert report == LoadReport(source=str(path), rows_read=6, rows_kept=4, rows_dropped=2,
                                dropped_reasons={"blank line": 2})
    assert str(report) == f"{path}: read 6 rows, kept 4, dropped 2 (blank line: 2)"


def test_movielens_file_keeps_rating_and_timestamp(tmp_path):
    path = _write(tmp_path, "ratings.dat",
                  "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    frame, report = load_interactions(path)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "rating"]
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 1193, 978300760, 5],
                                                     [1, 661, 978302109, 3],
                                                     [2, 1193, 978298413, 4]])
    assert (report.rows_read, report.rows_kept, report.rows_dropped) == (3, 3, 0)
    assert report.dropped_reasons == {}
    assert str(report) == f"{path}: read 3 rows, kept 3, dropped 0"


def test_directory_prefers_ratings_dat_then_ml_1m_txt(tmp_path):
    _write(tmp_path, "ml-1m.txt", "1 2\n")
    assert load_interactions(tmp_path)[1].source == str(tmp_path / "ml-1m.txt")
    _write(tmp_path, "ratings.dat", "1::2::3::4\n")
    frame, report = load_interactions(str(tmp_path))
    assert report.source == str(tmp_path / "ratings.dat")
    assert frame["rating"].tolist() == [3]


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for ratings.dat, ratings.csv, ml-1m.txt$"):
        load_interactions(tmp_path)
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_interactions(missing)


@pytest.mark.parametrize("text, line, shown", [
    ("1 2\n3 4 5\n", 2, "'3 4 5'"),
    ("1 2\n\nx 4\n", 3, "'x 4'"),
    ("1 2\n3\n", 2, "'3'"),
    ("1 2.5\n", 1, "'1 2.5'"),
    ("1 2\n1::2::3::4\n", 2, "'1::2::3::4'"),
])
def test_malformed_sasrec_line_is_located(tmp_path, text, line, shown):
    path = _write(tmp_path, "seq.txt", text)
    with pytest.raises(ValueError) as error:
        load_interactions(path)
    message = str(error.value)
    assert f"{path}, line {line}: malformed line {shown}" in message
    assert "SASRec `user item`" in message


@pytest.mark.parametrize("text, line", [
    ("1::2::3::4\n1::2::3\n", 2),
    ("1::2::3::4\n1::2::3::4::5\n", 2),
    ("1::2::3::x\n", 1),
    ("1::2::3::4\n5 6\n", 2),
])
def test_malformed_movielens_line_is_located(tmp_path, text, line):
    path = _write(tmp_path, "ratings.dat", text)
    with pytest.raises(ValueError, match=f"line {line}: .*UserID::MovieID::Rating::Timestamp"):
        load_interactions(path)


def test_directory_looks_for_ratings_csv_between_dat_and_txt(tmp_path):
    _write(tmp_path, "ml-1m.txt", "1 2\n")
    _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n7,8,4.5,9\n")
    frame, report = load_interactions(tmp_path, user_column="userId", item_column="movieId")
    assert report.source == str(tmp_path / "ratings.csv")
    np.testing.assert_array_equal(frame[list(REQUIRED_COLUMNS)].to_numpy(), [[7, 8, 9]])
    assert frame["rating"].tolist() == [4.5]
    _write(tmp_path, "ratings.dat", "1::2::3::4\n")
    assert load_interactions(tmp_path)[1].source == str(tmp_path / "ratings.dat")


def test_directory_with_a_format_looks_only_for_its_file_name(tmp_path):
    _write(tmp_path, "ratings.dat", "1::2::3::4\n")
    _write(tmp_path, "ml-1m.txt", "5 6\n")
    frame, report = load_interactions(tmp_path, file_format="sasrec")
    assert report.source == str(tmp_path / "ml-1m.txt")
    assert frame.to_numpy().tolist() == [[5, 6, 0]]
    with pytest.raises(FileNotFoundError, match="looked for ratings.csv$"):
        load_interactions(tmp_path, file_format="csv")
    with pytest.raises(FileNotFoundError, match="file_format='parquet' has no known file name"):
        load_interactions(tmp_path, file_format="parquet")


def test_movielens_without_time_column_uses_line_order(tmp_path):
    path = _write(tmp_path, "ratings.dat", "1::10::5::900\n\n1::11::3::100\n")
    frame, _ = load_interactions(path, time_column=None)
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 10, 0, 5], [1, 11, 2, 3]])


def test_explicit_text_format_overrides_the_content(tmp_path):
    # "auto" would read this as MovieLens; forced SASRec locates the bad line.
    path = _write(tmp_path, "data.dat", "1::2::3::4\n")
    with pytest.raises(ValueError, match=r"line 1: malformed line '1::2::3::4' \(found 1 "
                                         r"field\(s\)\); expected SASRec"):
        load_interactions(path, file_format="sasrec")
    frame, _ = load_interactions(path, file_format="movielens")
    assert frame.to_numpy().tolist() == [[1, 2, 4, 3]]
    # A table in a file without a table extension, read as CSV when asked.
    path = _write(tmp_path, "clicks.txt", "user_id,item_id,timestamp\n3,4,5\n")
    assert load_interactions(path, file_format="csv")[0].to_numpy().tolist() == [[3, 4, 5]]


ACCEPTED = ("accepted formats: movielens (`UserID::MovieID::Rating::Timestamp` lines, e.g. "
            "ratings.dat), sasrec (`user item` lines, e.g. ml-1m.txt), or a table with a "
            "header row: csv (.csv), tsv (.tsv) or parquet (.parquet, .pq)")


@pytest.mark.parametrize("name, text, problem", [
    ("clicks.json", '[{"user": 1, "item": 2}]\n', "unrecognised interaction file format "
     "'.json'"),
    ("clicks.XLSX", "PK\x03\x04 binary\n", "unrecognised interaction file format '.xlsx'"),
    ("clicks.txt", "user_id,item_id\n1,2\n", "unrecognised interaction file format: the "
     "first line 'user_id,item_id' is neither MovieLens"),
    ("clicks", "user item\n1 2\n", "unrecognised interaction file format: the first "
     "line 'user item' is neither MovieLens"),
])
def test_unrecognised_formats_list_the_accepted_ones(tmp_path, name, text, problem):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError) as error:
        load_interactions(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {problem}")
    assert ACCEPTED in message


def test_unknown_file_format_is_named(tmp_path):
    path = _write(tmp_path, "seq.txt", "1 2\n")
    with pytest.raises(ValueError) as error:
        load_interactions(path, file_format="excel")
    assert str(error.value) == ("unknown file_format 'excel'; expected one of ['auto', "
                                "'movielens', 'sasrec', 'csv', 'tsv', 'parquet']")


def test_file_without_interactions_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no interactions"):
        load_interactions(_write(tmp_path, "empty.txt", "\n  \n"))


def test_validate_converts_to_int64_and_keeps_other_columns():
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [3.0, 4.0],
                          "timestamp": ["5", "6"], "note": ["a", "b"]})
    checked = validate_interactions(frame)
    assert [checked[column].dtype for column in REQUIRED_COLUMNS] == [np.int64] * 3
    assert checked["item_id"].tolist() == [3, 4] and checked["timestamp"].tolist() == [5, 6]
    assert checked["note"].tolist() == ["a", "b"]
    assert frame["item_id"].dtype == np.float64  # the input is not modified


def test_validate_names_missing_columns():
    frame = pd.DataFrame({"user_id": [1], "item": [2]})
    with pytest.raises(ValueError) as error:
        validate_interactions(frame, source="clicks.csv")
    assert str(error.value) == (
        "clicks.csv: missing column(s) ['item_id', 'timestamp']; columns present: "
        "['user_id', 'item']; expected: ['user_id', 'item_id', 'timestamp']")


@pytest.mark.parametrize("column, values, message", [
    ("user_id", [1, None, 3], "column 'user_id' has a missing value (NaN/None) at row 20"),
    ("timestamp", [0.0, 1.0, np.nan],
     "column 'timestamp' has a missing value (NaN/None) at row 30"),
    ("item_id", [1, 3.5, 2], "column 'item_id' at row 20 has value 3.5, which is not an integer"),
    ("item_id", ["1", "abc", "2"],
     "column 'item_id' at row 20 has value 'abc', which is not an integer"),
    ("item_id", [1, 2, float("inf")],
     "column 'item_id' at row 30 has value inf, which is not an integer"),
])
def test_validate_names_bad_values(column, values, message):
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [4, 5, 6], "timestamp": [0, 1, 2]},
                         index=[10, 20, 30])
    frame[column] = values
    with pytest.raises(ValueError) as error:
        validate_interactions(frame, source="clicks.csv")
    assert str(error.value).startswith(f"clicks.csv: {message}")


def test_validate_rejects_empty_frames_and_non_frames():
    with pytest.raises(ValueError, match="no interactions"):
        validate_interactions(pd.DataFrame(columns=list(REQUIRED_COLUMNS)))
    with pytest.raises(TypeError, match="expected a pandas DataFrame, got dict"):
        validate_interactions({"user_id": [1]})


def test_default_data_dir_is_shared_data_beside_the_repository(tmp_path, monkeypatch):
    # The module at <tmp>/repo/tfrec_proxy/data/loaders.py: the repository is <tmp>/repo,
    # so the shared folder is <tmp>/shared/data.
    module = tmp_path / "repo" / "tfrec_proxy" / "data" / "loaders.py"
    monkeypatch.setattr(loaders, "__file__", str(module))
    assert default_data_dir() is None  # absent
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == tmp_path / "shared" / "data"
    (tmp_path / "repo" / "shared" / "data").mkdir(parents=True)  # not inside the repo
    assert default_data_dir() == tmp_path / "shared" / "data"


def test_loads_real_ml_1m_txt():
    data_dir = default_data_dir()
    if data_dir is None or not (data_dir / "ml-1m" / "ml-1m.txt").is_file():
        pytest.skip("no ../shared/data/ml-1m/ml-1m.txt")
    frame, report = load_interactions(data_dir / "ml-1m")
    assert len(frame) == 999_611 and report.rows_kept == 999_611 and report.rows_dropped == 0
    assert frame["user_id"].nunique() == 6_040 and frame["item_id"].nunique() == 3_416
    # ../shared/data/README.md: users 1..6040 in ascending order, items 1..3416; the
    # file starts with "1 1", "1 2", "1 3" and ends with "6040 154".
    assert (frame["user_id"].min(), frame["user_id"].max()) == (1, 6_040)
    assert (frame["item_id"].min(), frame["item_id"].max()) == (1, 3_416)
    assert frame["user_id"].is_monotonic_increasing
    np.testing.assert_array_equal(frame.iloc[:3].to_numpy(), [[1, 1, 0], [1, 2, 1], [1, 3, 2]])
    np.testing.assert_array_equal(frame.iloc[-1].to_numpy(), [6_040, 154, 999_610])
    np.testing.assert_array_equal(frame["timestamp"].to_numpy(), np.arange(999_611))
