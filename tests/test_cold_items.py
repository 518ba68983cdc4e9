"""Cold items held out of training entirely, and frequency groups of equal mass."""

import numpy as np
import pytest

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data import prepare_data
from tfrec_proxy.data.cold_items import choose_cold_items, hold_out_items
from tfrec_proxy.metrics import frequency_groups


def test_hold_out_by_hand():
    cold = np.zeros(8, bool)
    cold[[4, 6]] = True
    users = np.array([10, 11])
    sequences = [np.array([2, 4, 3, 4, 6, 5]), np.array([6, 2, 4])]
    warm, examples = hold_out_items(users, sequences, cold, history_len=3)
    np.testing.assert_array_equal(warm[0], [2, 3, 5])
    np.testing.assert_array_equal(warm[1], [2])
    # user 10: 4 after [2]; its second 4 is not repeated; 6 after [2, 3]. user 11: 6
    # has no warm item before it (skipped); 4 after [2].
    np.testing.assert_array_equal(examples.target, [4, 6, 4])
    np.testing.assert_array_equal(examples.user, [10, 10, 11])
    np.testing.assert_array_equal(examples.history, [[0, 0, 2], [0, 2, 3], [0, 0, 2]])


def test_choose_cold_items_is_a_seeded_share():
    sequences = [np.arange(2, 102)]
    cold = choose_cold_items(sequences, 102, 0.1, seed=3)
    assert cold.sum() == 10 and not cold[:2].any()
    np.testing.assert_array_equal(cold, choose_cold_items(sequences, 102, 0.1, seed=3))
    with pytest.raises(ValueError, match="cold_items must be a share in \\[0, 1\\)"):
        choose_cold_items(sequences, 102, 1.0)


def test_prepared_data_never_trains_on_cold_items():
    config = DataConfig(cold_items=0.1)
    config.synthetic.num_users, config.synthetic.num_items = 300, 100
    data = prepare_data(config)
    cold = data.cold_items
    assert cold.sum() == round(0.1 * len(data.vocab.ids))
    for split in ("train", "validation", "test"):
        examples = data.examples(split)
        assert not cold[examples.target].any() and not cold[examples.history].any()
    assert not cold[data.split.train_sequences.targets].any()
    assert data.item_counts[cold].sum() == 0
    assert len(data.cold) > 0 and cold[data.cold.target].all()
    assert data.summary()["cold_examples"] == len(data.cold)


def test_frequency_groups_have_equal_mass_by_hand():
    counts = np.array([0, 0, 50, 20, 10, 10, 5, 5, 0])  # total 100
    groups = frequency_groups(counts, num_groups=4)
    # Mass before each item in rank order: 0, 50, 70, 80, 90, 95, 100; group =
    # floor(4 * before / 100): 0, 2, 2, 3, 3, 3, 3 (capped). Item 2 holds half the mass,
    # so group 1 is empty.
    assert [np.flatnonzero(groups[f"freq{g}"]).tolist() for g in range(4)] == [
        [2], [], [3, 4], [5, 6, 7, 8]]
    balanced = frequency_groups(np.array([0, 0, 4, 3, 1, 1, 1, 1, 1]), num_groups=3)
    assert [np.flatnonzero(balanced[f"freq{g}"]).tolist() for g in range(3)] == [
        [2], [3, 4], [5, 6, 7, 8]]  # before: 0 | 4, 7 | 8, 9, 10, 11 of 12
    union = sum(mask.astype(int) for mask in groups.values())
    np.testing.assert_array_equal(union, [0, 0, 1, 1, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="all zero"):
        frequency_groups(np.zeros(5))
