"""Vocabulary: raw id <-> index with PAD = 0 and OOV = 1."""

import json

import numpy as np
import pytest

from tfrec_proxy.data.vocab import OOV, PAD, Vocabulary


def test_indices_follow_the_given_order():
    vocab = Vocabulary([30, 10, 20])
    assert (PAD, OOV, Vocabulary.PAD, Vocabulary.OOV) == (0, 1, 0, 1)
    assert vocab.size == len(vocab) == 5
    np.testing.assert_array_equal(vocab.ids, [30, 10, 20])
    assert vocab.ids.dtype == np.int64
    indices = vocab.lookup([10, 20, 30, 99, -1])
    np.testing.assert_array_equal(indices, [3, 4, 2, OOV, OOV])
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(vocab.lookup(np.array([[30, 7], [20, 10]])), [[2, 1], [4, 3]])
    raw = vocab.raw_ids([2, 3, 4])
    np.testing.assert_array_equal(raw, [30, 10, 20])
    assert raw.dtype == np.int64


def test_lookup_with_unknown_counts_unknown_ids():
    indices, unknown = Vocabulary([5, 6]).lookup_with_unknown([6, 7, 5, 8, 6])
    np.testing.assert_array_equal(indices, [3, 1, 2, 1, 3])
    assert unknown == 2


def test_from_ids_sorts_and_deduplicates():
    vocab = Vocabulary.from_ids(np.array([[5, 3], [5, 1]]))
    np.testing.assert_array_equal(vocab.ids, [1, 3, 5])
    np.testing.assert_array_equal(vocab.lookup([1, 3, 5]), [2, 3, 4])


def test_large_lookup_matches_positions():
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(0, 20_000, 2))  # even ids, shuffled
    vocab = Vocabulary(ids)
    queries = rng.integers(0, 20_000, size=1_000_000)
    expected = np.full(len(queries), OOV)
    position = np.empty(20_000, dtype=np.int64)
    position[ids] = np.arange(len(ids)) + 2
    even = queries % 2 == 0
    expected[even] = position[queries[even]]
    np.testing.assert_array_equal(vocab.lookup(queries), expected)


@pytest.mark.parametrize("ids, message", [
    ([4, 2, 4], "id 4 occurs more than once"),
    ([], r"non-empty 1-D sequence, got shape \(0,\)"),
    ([[1, 2]], r"non-empty 1-D sequence, got shape \(1, 2\)"),
    ([1.5, 2.0], "ids must be integers, got dtype float64"),
])
def test_bad_ids_are_rejected(ids, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(ids)


@pytest.mark.parametrize("index, message", [
    (0, "index 0 is the padding index PAD"),
    (1, "index 1 is the out-of-vocabulary index OOV"),
    (5, "index 5 is out of range"),
    (-2, "index -2 is out of range"),
])
def test_raw_ids_rejects_special_and_out_of_range_indices(index, message):
    with pytest.raises(ValueError, match=message + r"; raw_ids needs indices in 2..4"):
        Vocabulary([30, 10, 20]).raw_ids([2, index])


def test_json_round_trip(tmp_path):
    vocab = Vocabulary([30, 10, 20])
    path = tmp_path / "vocabulary.json"
    vocab.save(path)
    assert json.loads(path.read_text()) == {"format": "tfrec_proxy.vocabulary", "version": 1,
                                            "ids": [30, 10, 20]}
    loaded = Vocabulary.load(path)
    np.testing.assert_array_equal(loaded.ids, vocab.ids)
    np.testing.assert_array_equal(loaded.lookup([20, 10, 3]), [4, 3, 1])
    assert Vocabulary.from_dict(vocab.to_dict()).size == 5


def _vocab_json(version=1, ids="[1]", form="tfrec_proxy.vocabulary"):
    return f'{{"format": "{form}", "version": {version}, "ids": {ids}}}'


@pytest.mark.parametrize("text, message", [
    ("{not json", "Expecting property name"),
    (_vocab_json(form="other"), "expected format 'tfrec_proxy.vocabulary', got 'other'"),
    (_vocab_json(version=2), "unsupported vocabulary version 2"),
    (_vocab_json(ids='[1, "2"]'), "'ids' must be a list of integers"),
    (_vocab_json(ids="[1, 1]"), "id 1 occurs more than once"),
    ("[1, 2]", "expected format 'tfrec_proxy.vocabulary', got 'list'"),
])
def test_load_names_the_malformed_file(tmp_path, text, message):
    path = tmp_path / "vocabulary.json"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        Vocabulary.load(path)
    assert str(error.value).startswith(f"{path}: malformed vocabulary file: ")
    assert message in str(error.value)
