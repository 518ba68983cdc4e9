"""prepare_data: the one path from a DataConfig to the split a run uses."""

import numpy as np
import pytest

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data import prepare_data


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
