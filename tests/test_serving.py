"""Input handling of a loaded run (`tfrec_proxy.serving.Run`): ids, unknown ids, exclusions."""

import warnings

import numpy as np
import pytest

from tfrec_proxy.serving import (HistoryError, UnknownItemsWarning, load_run, recommend)


@pytest.fixture(scope="module")
def run(trained_run):
    return load_run(trained_run[1])


@pytest.fixture(scope="module")
def known(trained_run):
    """Raw ids of the run's vocabulary, as Python ints."""
    return [int(i) for i in trained_run[0].data.vocab.ids]


@pytest.fixture(scope="module")
def unknown_id(known):
    return max(known) + 1000


def test_only_padding_is_a_value_error_naming_it(run):
    with pytest.raises(ValueError, match=r"history 0: only padding \(-1\)"):
        run.recommend([-1, -1], k=3)
    with pytest.raises(HistoryError, match=r"history 1: only padding") as error:
        run.recommend([[3], [-1]], k=3)
    assert error.value.row == 1


@pytest.mark.parametrize("bad", [99999999999999999999, -(2 ** 63) - 1, np.uint64(2 ** 63)])
def test_id_beyond_int64_is_a_value_error_naming_it(run, known, bad):
    with pytest.raises(ValueError, match=f"item id {int(bad)} is outside the int64 range"):
        run.recommend([known[0], bad], k=3)


@pytest.mark.parametrize("bad, message", [
    ([[]], "history 0: empty"),
    ([3, True], "is a boolean"),
    ([3, 2.5], "2.5 is not an integer"),
    ([3, float("nan")], "NaN"),
    ([3, "7"], "'7' is not an integer"),
    ("3,4", "must be a sequence"),
])
def test_bad_histories_are_value_errors(run, bad, message):
    with pytest.raises(ValueError, match=message):
        run.recommend(bad, k=3)


def test_padding_inside_a_history_is_ignored(run, known):
    plain, _ = run.recommend([known[:3]], k=5, index="brute_force")
    padded, _ = run.recommend([[-1] + known[:3]], k=5, index="brute_force")
    np.testing.assert_array_equal(plain, padded)


def test_unknown_ids_lists_each_historys_distinct_unknown_ids(run, known, unknown_id):
    histories = [[known[0], unknown_id, unknown_id, -1, unknown_id + 1], known[:2], [-5]]
    assert run.unknown_ids(histories) == [[unknown_id, unknown_id + 1], [], [-5]]
    assert run.unknown_ids(known[:2]) == [[]]  # one history


def test_strict_names_unknown_ids(run, known, unknown_id):
    with pytest.raises(HistoryError, match=rf"history 1: item id\(s\) \[{unknown_id}\] are not "
                       "in the run's vocabulary") as error:
        run.recommend([known[:2], [known[0], unknown_id]], k=3, strict=True)
    assert error.value.row == 1
    strict, _ = run.recommend(known[:3], k=4, strict=True, index="brute_force")
    lenient, _ = run.recommend(known[:3], k=4, index="brute_force")
    np.testing.assert_array_equal(strict, lenient)
    with pytest.raises(ValueError, match=str(unknown_id)):
        run.embed([unknown_id], strict=True)


def test_unknown_ids_warn_and_all_unknown_histories_are_named(run, known, unknown_id):
    with pytest.warns(UnknownItemsWarning) as caught:
        run.recommend([[known[0], unknown_id]], k=3)
    assert "1 item id(s)" in str(caught[0].message)
    assert "no known item id" not in str(caught[0].message)
    with pytest.warns(UnknownItemsWarning, match=r"Histories \[1\] have no known item id"):
        ids, _ = run.recommend([known[:2], [unknown_id, unknown_id + 1]], k=3)
    assert ids.shape == (2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known ids and padding: no warning at all
        run.recommend([[-1, known[0]]], k=3)


@pytest.mark.filterwarnings("ignore::tfrec_proxy.serving.UnknownItemsWarning")
@pytest.mark.parametrize("index", ["brute_force", "scann"])
def test_exclude_seen_drops_history_items_from_the_plain_list(run, known, unknown_id, index):
    plain_ids, plain_scores = run.recommend(known[:1], k=run.max_k, index=index)
    # History: the plain list's top 3 items (so exclusion changes the result), a
    # repeat, padding and an unknown id (neither counts as a seen item).
    seen = [int(i) for i in plain_ids[0, :3]]
    history = [known[0]] + seen + [seen[0], -1, unknown_id]
    plain_ids, plain_scores = run.recommend([history], k=run.max_k, index=index)
    ids, scores = run.recommend([history], k=6, index=index, exclude_seen=True)
    assert not set(ids[0].tolist()) & set(history)
    keep = ~np.isin(plain_ids[0], history)
    np.testing.assert_array_equal(ids[0], plain_ids[0][keep][:6])
    np.testing.assert_allclose(scores[0], plain_scores[0][keep][:6], rtol=1e-6)


def test_exclude_seen_in_a_batch_and_the_module_function(trained_run, run, known):
    histories = [known[:1], known[1:8]]
    ids, _ = run.recommend(histories, k=5, index="brute_force", exclude_seen=True)
    for history, row in zip(histories, ids):
        assert len(set(row.tolist())) == 5 and not set(row.tolist()) & set(history)
    single, _ = recommend(trained_run[1], known[1:8], k=5, index="brute_force",
                          exclude_seen=True)
    np.testing.assert_array_equal(single, ids[1])


def test_exclude_seen_beyond_max_k_suggests_a_larger_max_k(run, known):
    seen = known[:run.max_k - 2]  # k=3 + (max_k - 2) seen > max_k
    with pytest.raises(HistoryError, match=rf"history 1: exclude_seen needs k \+ seen items = "
                       rf"3 \+ {len(seen)} = {run.max_k + 1} results, more than "
                       rf"max_k={run.max_k}.*larger --max-k") as error:
        run.recommend([known[:1], seen], k=3, exclude_seen=True)
    assert error.value.row == 1
    ids, _ = run.recommend(seen, k=2, exclude_seen=True)  # exactly max_k: fine
    assert not set(ids[0].tolist()) & set(seen)


def test_check_histories_raises_what_recommend_raises(run, known, unknown_id):
    assert run.check_histories([known[:2], [unknown_id]], k=3) == [[], [unknown_id]]
    with pytest.raises(HistoryError, match="history 1"):
        run.check_histories([known[:2], [unknown_id]], k=3, strict=True)
    with pytest.raises(ValueError, match="exceeds max_k"):
        run.check_histories(known[:2], k=run.max_k + 1)
    with pytest.raises(HistoryError, match="exclude_seen needs"):
        run.check_histories(known[:run.max_k], k=1, exclude_seen=True)


def test_histories_to_tensor_pads_on_the_left(run, known):
    tensor = run.histories_to_tensor([known[:1], known[:3]])
    np.testing.assert_array_equal(tensor.numpy(), [[-1, -1, known[0]], known[:3]])
