"""Interaction tables: CSV / TSV / Parquet files and pandas frames with named columns."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data import default_data_dir, load_interactions, select_columns
from tfrec_proxy.data.loaders import LoadReport

# The head of MovieLens' newer ratings.csv (ml-latest-small).
RATINGS_CSV = ("userId,movieId,rating,timestamp\n"
               "1,1,4.0,964982703\n"
               "1,3,4.0,964981247\n"
               "2,318,3.5,1445714835\n")
MOVIELENS_COLUMNS = {"user_column": "userId", "item_column": "movieId"}


def _write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / name
    path.write_text(text)
    return path


def test_movielens_ratings_csv(tmp_path):
    path = _write(tmp_path, "ratings.csv", RATINGS_CSV)
    frame, report = load_interactions(path, **MOVIELENS_COLUMNS)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert [frame[c].dtype for c in ("user_id", "item_id", "timestamp")] == [np.int64] * 3
    np.testing.assert_array_equal(frame[["user_id", "item_id", "timestamp"]].to_numpy(),
                                  [[1, 1, 964982703], [1, 3, 964981247], [2, 318, 1445714835]])
    assert frame["rating"].tolist() == [4.0, 4.0, 3.5]
    assert report == LoadReport(source=str(path), rows_read=3, rows_kept=3, rows_dropped=0)


def test_missing_column_is_named_with_the_columns_present(tmp_path):
    path = _write(tmp_path, "ratings.csv", RATINGS_CSV)
    with pytest.raises(ValueError) as error:
        load_interactions(path)  # default names user_id / item_id
    assert str(error.value).startswith(
        f"{path}: missing column(s) 'user_id' (user_column), 'item_id' (item_column); "
        "columns present: ['userId', 'movieId', 'rating', 'timestamp']; name the columns "
        "with user_column / item_column / time_column")
    with pytest.raises(ValueError, match=r"missing column\(s\) 'when' \(time_column\); "):
        load_interactions(path, time_column="when", **MOVIELENS_COLUMNS)


def test_tsv_without_time_column_uses_row_order(tmp_path):
    path = _write(tmp_path, "clicks.tsv", "item\tnote\tuser\n5\ta b\t9\n6\t\t9\n4\tc\t8\n")
    frame, _ = load_interactions(path, user_column="user", item_column="item",
                                 time_column=None)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    np.testing.assert_array_equal(frame.to_numpy(), [[9, 5, 0], [9, 6, 1], [8, 4, 2]])


def test_semicolon_csv_with_unused_missing_values(tmp_path):
    # Diginetica layout: `;`-separated, `NA` in a column that is not read.
    path = _write(tmp_path, "views.csv", "session_id;user_id;item_id;timeframe;eventdate\n"
                                         "1;NA;81766;526309;2016-05-09\n"
                                         "1;NA;31331;1031018;2016-05-09\n"
                                         "2;7;9654;75848;2016-05-10\n")
    frame, _ = load_interactions(path, user_column="session_id", time_column="timeframe")
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 81766, 526309], [1, 31331, 1031018],
                                                     [2, 9654, 75848]])


@pytest.mark.parametrize("name", ["clicks.parquet", "clicks.pq"])
def test_parquet_table(tmp_path, name):
    table = pd.DataFrame({"who": np.array([3, 3, 4], np.int32), "what": [10.0, 11.0, 10.0],
                          "when": [20, 10, 30], "rating": [1, 2, 3], "extra": ["a", "b", "c"]})
    table.to_parquet(tmp_path / name)
    frame, report = load_interactions(tmp_path / name, user_column="who", item_column="what",
                                      time_column="when")
    np.testing.assert_array_equal(frame.to_numpy(), [[3, 10, 20, 1], [3, 11, 10, 2],
                                                     [4, 10, 30, 3]])
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert (report.rows_read, report.rows_kept, report.rows_dropped) == (3, 3, 0)
    with pytest.raises(ValueError, match=r"missing column\(s\) 'user_id' \(user_column\); "
                                         r"columns present: \['who', 'what', 'when', "
                                         r"'rating', 'extra'\]"):
        load_interactions(tmp_path / name, item_column="what", time_column="when")


def test_parquet_datetimes_keep_their_order(tmp_path):
    table = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 7],
                          "timestamp": pd.to_datetime(["2020-01-02", "2020-01-01",
                                                       "2020-01-03"])})
    table.to_parquet(tmp_path / "t.parquet")
    frame, _ = load_interactions(tmp_path / "t.parquet")
    assert frame["timestamp"].dtype == np.int64
    assert np.argsort(frame["timestamp"].to_numpy()).tolist() == [1, 0, 2]


def test_broken_parquet_file_is_an_error(tmp_path):
    path = _write(tmp_path, "clicks.parquet", "user_id,item_id\n1,2\n")
    with pytest.raises(ValueError, match=f"{path}: not a readable Parquet file"):
        load_interactions(path)


@pytest.mark.parametrize("text, message", [
    ("u,i,t\n1,2,3\n1,abc,4\n", "column 'i' at row 1 (0-based data row, header not counted) "
                                "has value 'abc', which is not an integer"),
    ("u,i,t\n1,2,3\n1,2.5,4\n", "column 'i' at row 1 (0-based data row, header not counted) "
                                "has value 2.5, which is not an integer"),
    ("u,i,t\n1,2,3\n1,4,5\n,6,7\n", "column 'u' has a missing value (NaN/None) at row 2 "
                                    "(0-based data row, header not counted)"),
])
def test_non_integer_table_values_name_column_and_row(tmp_path, text, message):
    path = _write(tmp_path, "clicks.csv", text)
    with pytest.raises(ValueError) as error:
        load_interactions(path, user_column="u", item_column="i", time_column="t")
    assert str(error.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("text, message", [
    ("", "cannot read the header"),
    ("user_id,item_id,timestamp\n", "no interactions (the table has no rows)"),
])
def test_empty_tables_are_errors(tmp_path, text, message):
    path = _write(tmp_path, "clicks.csv", text)
    with pytest.raises(ValueError) as error:
        load_interactions(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_select_columns_renames_and_checks_a_frame():
    table = pd.DataFrame({"uid": ["4", "4"], "iid": [7, 8], "ts": [2.0, 1.0],
                          "rating": [5, 1], "user_id": [0, 0]}, index=[30, 10])
    frame = select_columns(table, "uid", "iid", "ts")
    # The frame's own `user_id` column is not the user column: `uid` is.
    np.testing.assert_array_equal(frame.to_numpy(), [[4, 7, 2, 5], [4, 8, 1, 1]])
    assert frame.index.tolist() == [0, 1]
    table["iid"] = table["iid"].astype(object)
    table.loc[10, "iid"] = "x7"
    with pytest.raises(ValueError) as error:
        select_columns(table, "uid", "iid", "ts", source="my frame")
    assert str(error.value).startswith("my frame: column 'iid' at row 10 has value 'x7', "
                                       "which is not an integer")
    with pytest.raises(TypeError, match="expected a pandas DataFrame, got list"):
        select_columns([1, 2])
    duplicated = pd.DataFrame([[1, 2, 3]], columns=["a", "a", "t"])
    with pytest.raises(ValueError, match=r"column\(s\) \['a'\] occur more than once"):
        select_columns(duplicated, "a", "t", None)


def test_reads_real_diginetica_sample_csv():
    data_dir = default_data_dir()
    path = None if data_dir is None else (
        data_dir / "diginetica-sample" / "sample_train-item-views.csv")
    if path is None or not path.is_file():
        pytest.skip("no ../shared/data/diginetica-sample")
    frame, report = load_interactions(path, user_column="session_id", time_column="timeframe")
    # Counts from ../shared/data/diginetica-sample/README.md.
    assert report.rows_read == report.rows_kept == len(frame) == 12_391
    assert frame["user_id"].nunique() == 2_986 and frame["item_id"].nunique() == 7_139
    np.testing.assert_array_equal(frame.iloc[0].to_numpy(), [1, 81766, 526309])
