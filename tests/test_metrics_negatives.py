"""Shared exclusion sets (`Exclusions`) and negative sampling on top of them."""

import tracemalloc
import warnings

import numpy as np
import pytest

from tfrec_proxy.metrics import Exclusions, full_ranks, sample_negatives
from tfrec_proxy.metrics import negatives as negatives_module


def _user_sets(num_users, set_size, num_items, seed=0):
    rng = np.random.default_rng(seed)
    return {user * 10 + 7: np.sort(rng.choice(np.arange(2, num_items), set_size,
                                              replace=False)).astype(np.int32)
            for user in range(num_users)}


def _assert_valid(negatives, targets, excluded_sets, num_items):
    """Distinct, sorted, real items; never the row's target nor one of its excluded."""
    assert np.all(np.diff(negatives, axis=1) > 0)
    assert negatives.min() >= 2 and negatives.max() < num_items
    assert not np.any(negatives == np.asarray(targets)[:, None])
    for row, excluded in zip(negatives, excluded_sets):
        assert not np.isin(row, excluded).any()


def test_from_user_sets_stores_each_set_once():
    user_items = _user_sets(20, 40, 500)
    rng = np.random.default_rng(1)
    row_users = rng.choice(list(user_items), 100_000)
    exclusions = Exclusions.from_user_sets(user_items, row_users)
    # 20 sets of 40 items, not 100k x 40 per-row copies.
    assert exclusions.num_owners == 20 and exclusions.num_rows == len(exclusions) == 100_000
    assert exclusions.items.size == 20 * 40 and exclusions.indptr.size == 21
    assert sorted(exclusions.owner_ids.tolist()) == sorted(user_items)
    for row in (0, 1, 99_999):
        np.testing.assert_array_equal(exclusions.row_items(row), user_items[row_users[row]])
    with pytest.raises(ValueError, match="read-only"):
        exclusions.items[0] = 3


def test_from_user_sets_sorts_and_deduplicates_and_rejects_unknown_users():
    exclusions = Exclusions.from_user_sets({5: [9, 3, 3, 0], 2: []}, np.array([5, 2, 5]))
    np.testing.assert_array_equal(exclusions.owner_ids, [2, 5])  # sorted user ids
    np.testing.assert_array_equal(exclusions.row_owner, [1, 0, 1])
    np.testing.assert_array_equal(exclusions.indptr, [0, 0, 3])
    np.testing.assert_array_equal(exclusions.items, [0, 3, 9])
    with pytest.raises(ValueError, match=r"row_users\[2\] = 4 is not a key of user_items"):
        Exclusions.from_user_sets({5: [3], 2: [4]}, [5, 2, 4])
    with pytest.raises(ValueError, match=r"user_items\[5\] contains -1"):
        Exclusions.from_user_sets({5: [3, -1]}, [5])
    # The vocabulary bound is only known when the sets are used.
    with pytest.raises(ValueError, match=r"exclude\[1\] \(the set of 5\) contains 9; "
                                         r"expected vocabulary indices in \[0, 8\)"):
        sample_negatives(8, [2, 2], Exclusions.from_user_sets({5: [9], 2: []}, [2, 5]), 2)


def test_from_rows_and_constructor_checks():
    exclusions = Exclusions.from_rows([np.array([4, 2, 4]), np.array([]), [7.0]])
    assert exclusions.owner_ids is None
    np.testing.assert_array_equal(exclusions.indptr, [0, 2, 2, 3])
    np.testing.assert_array_equal(exclusions.items, [2, 4, 7])
    np.testing.assert_array_equal(exclusions.row_owner, [0, 1, 2])
    with pytest.raises(ValueError, match="integer item indices; got 2.5"):
        Exclusions.from_rows([[2.5]])
    with pytest.raises(ValueError, match="items of owner 0 must be sorted"):
        Exclusions([0, 2], [5, 3], [0])
    with pytest.raises(ValueError, match=r"row_owner\[1\] = 2; expected an owner in \[0, 1\)"):
        Exclusions([0, 2], [3, 5], [0, 2])
    with pytest.raises(ValueError, match="indptr"):
        Exclusions([1, 2], [3], [0])
    with pytest.raises(ValueError, match=r"exclude covers 1 rows .* one per row \(2\)"):
        sample_negatives(10, [2, 3], Exclusions([0, 1], [3], [0]), 2)


@pytest.mark.parametrize("num_negatives", [5, 60])  # rejection path / mostly exact path
@pytest.mark.parametrize("bitmap", [True, False])
def test_shared_and_per_row_forms_give_the_same_negatives(monkeypatch, num_negatives,
                                                          bitmap):
    if not bitmap:  # binary search of the keys, in small lookup chunks
        monkeypatch.setattr(negatives_module, "_BITMAP_MAX_BITS", 0)
        monkeypatch.setattr(negatives_module, "_LOOKUP_ELEMENTS", 64)
    rng = np.random.default_rng(3)
    num_items, rows = 80, 2_000
    user_items = {user: np.unique(rng.integers(0, num_items, rng.integers(0, 15)))
                  for user in range(30)}
    row_users = rng.integers(0, 30, rows)
    targets = rng.integers(2, num_items, rows)
    per_row = [user_items[user] for user in row_users]
    shared = sample_negatives(num_items, targets,
                              Exclusions.from_user_sets(user_items, row_users),
                              num_negatives, seed=11)
    np.testing.assert_array_equal(
        shared, sample_negatives(num_items, targets, per_row, num_negatives, seed=11))
    _assert_valid(shared, targets, per_row, num_items)


def test_negatives_pinned_to_the_pre_split_implementation():
    # What `sample_negatives` returned before the exclusion sets were shared (commit
    # ab32eea), so that a seed keeps its negatives and reported metrics stay
    # reproducible. Rows 0-2 and 4 take the rejection path; row 3 has exactly 4
    # eligible items (7..10), the exact path.
    targets = np.array([2, 5, 7, 11, 3])
    rows = [[3, 4], [0, 1, 5, 6], [], [2, 3, 4, 5, 6], [9]]
    expected = [[6, 7, 9, 11], [2, 3, 10, 11], [4, 5, 6, 10], [7, 8, 9, 10], [4, 6, 8, 10]]
    np.testing.assert_array_equal(sample_negatives(12, targets, rows, 4, seed=1), expected)
    users = Exclusions.from_user_sets(dict(enumerate(rows)), np.arange(5))
    np.testing.assert_array_equal(sample_negatives(12, targets, users, 4, seed=1), expected)


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_shared_sets_bound_sampling_memory():
    num_items, set_size, rows = 5_002, 300, 200_000
    user_items = _user_sets(50, set_size, num_items)
    rng = np.random.default_rng(4)
    row_users = rng.choice(list(user_items), rows)
    targets = rng.integers(2, num_items, rows)
    # Expanding the sets per row holds 200k x 300 = 60M (row, item) entries: 480 MB as
    # one int64 array, which the old `_excluded_keys` built several times over
    # (concatenated items, repeated rows, keys; ~1.9 GB traced peak). The shared sets
    # stay within a fifth of that single array (~46 MB measured: the [200k, 10]
    # output, its sorted copy, bounded lookups).
    bound = rows * set_size * 8 // 5
    peak = _traced_peak(lambda: sample_negatives(
        num_items, targets, Exclusions.from_user_sets(user_items, row_users), 10))
    assert peak < bound, peak
    # The per-row path exceeds that bound with a tenth of the rows already (~230 MB).
    per_row = [user_items[user] for user in row_users[:rows // 10]]
    per_row_peak = _traced_peak(lambda: sample_negatives(
        num_items, targets[:rows // 10], per_row, 10))
    assert per_row_peak > bound, per_row_peak


def test_allow_fewer_pads_short_rows_by_hand():
    # 5 real items 2..6. Row 0: target 2, excludes 3 (and PAD): {4, 5, 6} remain.
    # Row 1: target 6, nothing excluded: {2, 3, 4, 5}. Row 2 excludes everything else.
    targets = [2, 6, 4]
    exclude = [[3, 0], [], [2, 3, 5, 6]]
    with pytest.raises(ValueError, match="Row 0 has only 3 eligible"):
        sample_negatives(7, targets, exclude, num_negatives=99)
    with pytest.warns(UserWarning) as caught:
        negatives = sample_negatives(7, targets, exclude, num_negatives=99, allow_fewer=True)
    assert len(caught) == 1
    assert "3 of 3 rows" in str(caught[0].message)
    assert "fewest negatives of any row: 0" in str(caught[0].message)
    assert negatives.shape == (3, 99) and negatives.dtype == np.int32
    np.testing.assert_array_equal(negatives[0, :4], [4, 5, 6, -1])
    np.testing.assert_array_equal(negatives[1, :5], [2, 3, 4, 5, -1])
    assert np.all(negatives[0, 3:] == -1) and np.all(negatives[1, 4:] == -1)
    assert np.all(negatives[2] == -1)


def test_allow_fewer_leaves_full_rows_sampled():
    # Items 2..9. Row 0 (target 2) has 7 eligible, row 1 (target 9, excludes 2..6) 2.
    targets, exclude = [2, 9], Exclusions.from_rows([[], [2, 3, 4, 5, 6]])
    with pytest.warns(UserWarning, match=r"1 of 2 rows .* fewest negatives of any row: 2"):
        negatives = sample_negatives(10, targets, exclude, num_negatives=3, allow_fewer=True)
    np.testing.assert_array_equal(negatives[1], [7, 8, -1])
    _assert_valid(negatives[:1], targets[:1], [[]], 10)
    # Rows with enough eligible items draw as without allow_fewer: no warning then.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            sample_negatives(10, [2], None, num_negatives=3, allow_fewer=True),
            sample_negatives(10, [2], None, num_negatives=3))


def test_full_ranks_shared_sets_match_per_row_lists():
    rng = np.random.default_rng(6)
    num_items, rows = 30, 50
    items = rng.integers(-2, 3, (num_items, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, (rows, 3)).astype(np.float32)
    user_items = {user: np.unique(rng.integers(0, num_items, 8)) for user in range(6)}
    row_users = rng.integers(0, 6, rows)
    targets = rng.integers(2, num_items, rows)
    per_row = [user_items[user] for user in row_users]
    scores = queries @ items.T
    expected = [int(np.sum(scores[row, [c for c in range(2, num_items)
                                        if c != targets[row] and c not in per_row[row]]]
                           >= scores[row, targets[row]])) for row in range(rows)]
    shared = full_ranks(None, queries, items, targets,
                        exclude=Exclusions.from_user_sets(user_items, row_users),
                        query_batch_size=7, chunk_size=4)
    np.testing.assert_array_equal(shared, expected)
    np.testing.assert_array_equal(
        full_ranks(None, queries, items, targets, exclude=per_row, query_batch_size=7,
                   chunk_size=4), expected)
