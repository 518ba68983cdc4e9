"""prepare_data: the one path from a DataConfig to the split a run uses."""

import re

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data import prepare_data
from tfrec_proxy.data.prepare import DATA_SOURCES


def _file_config(tmp_path, lines):
    (tmp_path / "data.txt").write_text("".join(f"{u} {i}\n" for u, i in lines))
    return DataConfig(source="file", path=str(tmp_path / "data.txt"), max_len=4)


def test_exclusions_cover_dropped_chunks(tmp_path):
    # User 1 has 6 items: chunks of 4 (kept) and 2 (the oldest, dropped as too short).
    config = _file_config(tmp_path, [(1, 10), (1, 11), (1, 12), (1, 13), (1, 14), (1, 15),
                                     (2, 12), (2, 13), (2, 14), (2, 15)])
    data = prepare_data(config)
    assert data.dropped_interactions == 2
    seen = data.vocab.raw_ids(data.split.user_items[1]).tolist()
    assert seen == [10, 11, 12, 13, 14, 15]
    assert len(data.split.train) == 2 and len(data.split.test) == 2


def test_bad_min_len_and_no_training_examples(tmp_path):
    with pytest.raises(ValueError, match="DataConfig.min_len=2 is too small"):
        prepare_data(DataConfig(min_len=2))
    config = _file_config(tmp_path, [(1, 10), (1, 11), (1, 12)])
    with pytest.raises(ValueError, match="No training examples"):
        prepare_data(config)


def test_synthetic_clusters_follow_the_vocabulary():
    config = DataConfig()
    config.synthetic.num_users, config.synthetic.num_items = 50, 40
    config.synthetic.num_clusters = 4
    data = prepare_data(config)
    assert data.item_clusters[0] == -1 and data.item_clusters[1] == -1
    # Items 1..10 are cluster 0, 11..20 cluster 1, ... (contiguous ids per cluster).
    expected = (data.vocab.ids - 1) // 10
    np.testing.assert_array_equal(data.item_clusters[2:], expected)
    # The same by hand for a few ids.
    index = data.vocab.lookup(np.array([1, 10, 11, 40]))
    assert data.item_clusters[index].tolist() == [0, 0, 1, 3]


def _two_chunk_config(tmp_path):
    # max_len=4: user 1's 8 items are two chunks ([10..13], [14..17]); user 2 has one.
    return _file_config(tmp_path, [(1, item) for item in range(10, 18)]
                        + [(2, 20), (2, 21), (2, 22), (2, 23)])


def test_examples_of_the_last_chunk_only(tmp_path):
    data = prepare_data(_two_chunk_config(tmp_path))
    raw = data.vocab.raw_ids
    assert raw(data.examples("test").target).tolist() == [13, 17, 23]
    assert raw(data.examples("test", chunks="all").target).tolist() == [13, 17, 23]
    last_test = data.examples("test", chunks="last")
    assert raw(last_test.target).tolist() == [17, 23]
    assert last_test.user.tolist() == [1, 2] and last_test.last_chunk.all()
    assert raw(data.examples("validation", chunks="last").target).tolist() == [16, 22]
    assert raw(data.examples("train", chunks="last").target).tolist() == [15, 21]
    assert raw(data.examples("train").target).tolist() == [11, 15, 21]
    with pytest.raises(ValueError, match=r"Unknown chunks 'first'; expected one of "
                                         r"\['all', 'last'\]"):
        data.examples("test", chunks="first")


def test_prepared_train_sequences_match_the_train_examples(tmp_path):
    data = prepare_data(_two_chunk_config(tmp_path))
    sequences = data.split.train_sequences
    raw = data.vocab.raw_ids
    # One row per chunk of 4: history s[0:1], target s[1], left-padded to max_len=4.
    assert sequences.history.shape == (3, 4) and sequences.user.tolist() == [1, 1, 2]
    assert raw(sequences.history[:, -1]).tolist() == [10, 14, 20]
    assert raw(sequences.targets[:, -1]).tolist() == [11, 15, 21]
    assert (sequences.history[:, :3] == 0).all() and (sequences.targets[:, :3] == 0).all()
    assert sequences.num_targets == len(data.split.train) == 3


def _frame():
    return pd.DataFrame({"uid": [7, 7, 7, 7, 8, 8, 8, 8],
                         "iid": [30, 31, 32, 33, 40, 41, 42, 43],
                         "when": [4, 1, 2, 3, 5, 6, 7, 8],
                         "rating": [1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 3.0, 2.0]})


def test_dataframe_source_uses_the_config_columns():
    config = DataConfig(source="dataframe", user_column="uid", item_column="iid",
                        time_column="when", max_len=4)
    data = prepare_data(config, interactions=_frame())
    assert list(data.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert data.interactions["user_id"].tolist() == [7, 7, 7, 7, 8, 8, 8, 8]
    raw = data.vocab.raw_ids
    # User 7 by time: 31, 32, 33, 30.
    assert raw(data.split.test.target).tolist() == [30, 43]
    assert raw(data.split.validation.target).tolist() == [33, 42]
    assert raw(data.split.train.target).tolist() == [32, 41]
    assert str(data.report) == "interactions DataFrame: read 8 rows, kept 8, dropped 0"
    # Without a time column the row order is the time order.
    config.time_column = None
    data = prepare_data(config, interactions=_frame())
    assert raw(data.split.test.target).tolist() == [33, 43]
    assert data.interactions["timestamp"].tolist() == list(range(8))


def test_dataframe_source_errors():
    config = DataConfig(source="dataframe", user_column="uid", item_column="iid",
                        time_column="when", max_len=4)
    with pytest.raises(ValueError, match="DataConfig.source='dataframe' needs the "
                                         "interactions: pass prepare_data"):
        prepare_data(config)
    with pytest.raises(ValueError, match="An interactions frame was given but DataConfig."
                                         "source is 'synthetic'; set source='dataframe'"):
        prepare_data(DataConfig(), interactions=_frame())
    with pytest.raises(ValueError, match=r"interactions DataFrame: missing column\(s\) "
                                         r"'user_id' \(user_column\); columns present: "
                                         r"\['uid', 'iid', 'when', 'rating'\]"):
        prepare_data(DataConfig(source="dataframe", item_column="iid", time_column="when"),
                     interactions=_frame())
    bad = _frame()
    bad["iid"] = bad["iid"].astype(str)
    bad.loc[5, "iid"] = "41b"
    with pytest.raises(ValueError, match="interactions DataFrame: column 'iid' at row 5 has "
                                         "value '41b', which is not an integer"):
        prepare_data(config, interactions=bad)
    with pytest.raises(TypeError, match="expected a pandas DataFrame, got dict"):
        prepare_data(config, interactions={"uid": [1]})
    with pytest.raises(ValueError, match=r"Unknown data source 'frame'; expected one of "
                                         + re.escape(str(DATA_SOURCES))):
        prepare_data(DataConfig(source="frame"))


def test_file_source_reads_tables_with_the_config_columns(tmp_path):
    path = tmp_path / "ratings.csv"
    _frame().rename(columns={"uid": "userId", "iid": "movieId",
                             "when": "timestamp"}).to_csv(path, index=False)
    config = DataConfig(source="file", path=str(tmp_path), user_column="userId",
                        item_column="movieId", max_len=4)
    data = prepare_data(config)
    assert data.report.source == str(path)
    assert data.vocab.raw_ids(data.split.test.target).tolist() == [30, 43]
    config.file_format = "tsv"
    with pytest.raises(FileNotFoundError, match="file_format='tsv' has no known file name"):
        prepare_data(config)
    config.path, config.file_format = str(path), "sasrec"
    with pytest.raises(ValueError, match="line 1: malformed line 'userId,movieId"):
        prepare_data(config)


def test_items_tsv_beside_the_data_file_gives_item_features(tmp_path):
    """ML-1M layout: `ml-1m.txt` + `ml-1m.txt.items.tsv` (sas_item_id, movie_id, genres)
    in one folder: the genres become multi-hot attributes without any setting."""
    from tfrec_proxy.config import DataConfig
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.data.prepare import item_features_path

    lines = [f"{user} {item}" for user in (1, 2) for item in (1, 2, 3, 1, 2)]
    (tmp_path / "ml-1m.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "ml-1m.txt.items.tsv").write_text(
        "sas_item_id\tmovie_id\tgenres\n1\t10\tComedy\n2\t20\tAction|Comedy\n3\t30\t"
        "Children's\n")
    config = DataConfig(source="file", path=str(tmp_path))
    assert item_features_path(config) == tmp_path / "ml-1m.txt.items.tsv"
    features = prepare_data(config).item_features
    assert features.spec.id_column == "sas_item_id" and features.attribute_dim == 3
    assert features.spec.columns[0].categories == ("Action", "Children's", "Comedy")
    # Vocabulary index 2 + (id - 1); rows 0 and 1 (padding, OOV) stay zero.
    np.testing.assert_array_equal(features.attributes, [[0, 0, 0], [0, 0, 0], [0, 0, 1],
                                                        [1, 0, 1], [0, 1, 0]])
    assert item_features_path(DataConfig(source="synthetic")) is None
