"""Sequences: grouping, chunking, leave-one-out, frequencies and tf.data batches."""

import collections
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data.sequences import (Examples, SequenceExamples, head_item_mask,
                                        item_frequencies, leave_one_out, make_dataset,
                                        make_sequence_dataset, sampling_probabilities,
                                        sequences_per_batch, split_long_sequences,
                                        user_sequences)
from tfrec_proxy.data.vocab import Vocabulary


def _assert_equal(actual, expected, dtype):
    np.testing.assert_array_equal(actual, expected)
    assert actual.dtype == dtype


def test_user_sequences_sort_by_time_and_keep_row_order_on_ties():
    frame = pd.DataFrame({"user_id": [7, 3, 7, 3, 3],
                          "item_id": [100, 200, 300, 100, 999],
                          "timestamp": [5, 2, 1, 2, 0]})
    vocab = Vocabulary.from_ids([100, 200, 300])  # 100 -> 2, 200 -> 3, 300 -> 4
    with pytest.warns(UserWarning, match="1 of 5 interactions have item ids that are not in"):
        users, sequences = user_sequences(frame, vocab)
    _assert_equal(users, [3, 7], np.int64)
    assert len(sequences) == 2
    _assert_equal(sequences[0], [1, 3, 2], np.int32)  # 999 unknown -> OOV; tie: row order
    _assert_equal(sequences[1], [4, 2], np.int32)


def test_split_counts_chunks_from_the_end():
    sequence = np.arange(1, 66, dtype=np.int32)
    owners, chunks, dropped = split_long_sequences(np.array([9]), [sequence], max_len=30)
    _assert_equal(owners, [9, 9, 9], np.int64)
    assert [len(chunk) for chunk in chunks] == [5, 30, 30]
    np.testing.assert_array_equal(np.concatenate(chunks), sequence)
    np.testing.assert_array_equal(chunks[0], [1, 2, 3, 4, 5])
    assert chunks[2][0] == 36 and dropped == 0

    owners, chunks, dropped = split_long_sequences(np.array([9]), [sequence], max_len=30,
                                                   min_len=6)
    assert [len(chunk) for chunk in chunks] == [30, 30] and chunks[0][0] == 6
    np.testing.assert_array_equal(owners, [9, 9])
    assert dropped == 5


def test_split_drops_short_sequences_across_users():
    sequences = [np.array([4, 5]), np.arange(2, 62), np.array([], dtype=np.int32),
                 np.array([7, 8, 9])]
    owners, chunks, dropped = split_long_sequences(np.array([1, 2, 3, 4]), sequences,
                                                   max_len=30, min_len=3)
    np.testing.assert_array_equal(owners, [2, 2, 4])
    assert [len(chunk) for chunk in chunks] == [30, 30, 3]
    np.testing.assert_array_equal(chunks[2], [7, 8, 9])
    assert dropped == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"max_len": 0}, "max_len must be a positive integer, got 0"),
    ({"min_len": 0}, "min_len must be a positive integer, got 0"),
    ({"max_len": 3, "min_len": 4}, "min_len must be <= max_len=3, got 4"),
])
def test_split_rejects_bad_lengths(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_long_sequences(np.array([1]), [np.arange(5)], **kwargs)


def test_split_rejects_mismatched_users():
    with pytest.raises(ValueError, match=r"one entry per sequence, got shape \(2,\) for 1"):
        split_long_sequences(np.array([1, 2]), [np.arange(5)])


def test_leave_one_out_by_hand():
    owners = np.array([10, 10, 20])
    chunks = [np.array([2, 3, 4, 5, 6]), np.array([6, 2, 7]), np.array([7, 8, 9])]
    split = leave_one_out(owners, chunks, history_len=3)

    _assert_equal(split.train.history, [[0, 0, 2], [0, 2, 3]], np.int32)
    _assert_equal(split.train.target, [3, 4], np.int32)
    _assert_equal(split.train.user, [10, 10], np.int64)

    _assert_equal(split.validation.history, [[2, 3, 4], [0, 0, 6], [0, 0, 7]], np.int32)
    _assert_equal(split.validation.target, [5, 2, 8], np.int32)
    _assert_equal(split.validation.user, [10, 10, 20], np.int64)

    _assert_equal(split.test.history, [[3, 4, 5], [0, 6, 2], [0, 7, 8]], np.int32)
    _assert_equal(split.test.target, [6, 7, 9], np.int32)
    _assert_equal(split.test.user, [10, 10, 20], np.int64)

    assert (len(split.train), len(split.validation), len(split.test)) == (2, 3, 3)
    # User 10's last chunk is [6, 2, 7]; user 20 has one chunk.
    _assert_equal(split.train.last_chunk, [False, False], bool)
    _assert_equal(split.validation.last_chunk, [False, True, True], bool)
    _assert_equal(split.test.last_chunk, [False, True, True], bool)
    # Only [2, 3, 4, 5, 6] has training targets (t = 1, 2): items s[0:2] -> s[1:3].
    _assert_equal(split.train_sequences.history, [[0, 2, 3]], np.int32)
    _assert_equal(split.train_sequences.targets, [[0, 3, 4]], np.int32)
    _assert_equal(split.train_sequences.user, [10], np.int64)
    assert len(split.train_sequences) == 1 and split.train_sequences.num_targets == 2
    assert sorted(split.user_items) == [10, 20]
    _assert_equal(split.user_items[10], [2, 3, 4, 5, 6, 7], np.int32)
    _assert_equal(split.user_items[20], [7, 8, 9], np.int32)


def test_leave_one_out_left_pads_to_history_len():
    split = leave_one_out(np.array([20]), [np.array([7, 8, 9])], history_len=30)
    assert split.test.history.shape == (1, 30)
    np.testing.assert_array_equal(split.test.history[0], [0] * 28 + [7, 8])
    np.testing.assert_array_equal(split.validation.history[0], [0] * 29 + [7])
    assert len(split.train) == 0 and split.train.history.shape == (0, 30)


def test_train_sequences_of_a_chunk_longer_than_the_history():
    # n = 8, L = 3: targets t = 1..5. The first row covers t = 1..3; t = 4 and t = 5 need
    # full windows [3, 4, 5] and [4, 5, 6], one row each, target in the last column only.
    split = leave_one_out(np.array([5]), [np.arange(2, 10)], history_len=3)
    _assert_equal(split.train_sequences.history, [[2, 3, 4], [3, 4, 5], [4, 5, 6]], np.int32)
    _assert_equal(split.train_sequences.targets, [[3, 4, 5], [0, 0, 6], [0, 0, 7]], np.int32)
    _assert_equal(split.train_sequences.user, [5, 5, 5], np.int64)
    assert split.train_sequences.num_targets == 5 == len(split.train)


def _prefix_examples(sequences):
    """Per-prefix (user, history, target) triples implied by `SequenceExamples`."""
    width = sequences.history.shape[1]
    triples = []
    for row, column in zip(*np.nonzero(sequences.targets)):
        items = sequences.history[row, :column + 1]
        items = items[items != 0]
        history = (0,) * (width - len(items)) + tuple(items.tolist())
        triples.append((int(sequences.user[row]), history,
                        int(sequences.targets[row, column])))
    return triples


@pytest.mark.parametrize("history_len", [1, 4, 7, 30])
def test_train_sequences_hold_exactly_the_train_examples(history_len):
    rng = np.random.default_rng(history_len)
    lengths = [3, 4, 5, 9, 12, 3, 20, 6]
    chunks = [rng.integers(1, 8, size=n).astype(np.int32) for n in lengths]  # repeats, OOV
    owners = np.array([4, 4, 1, 9, 9, 9, 2, 4])
    split = leave_one_out(owners, chunks, history_len=history_len)
    expected = collections.Counter(
        (int(user), tuple(history.tolist()), int(target))
        for user, history, target in zip(split.train.user, split.train.history,
                                         split.train.target))
    assert sum(expected.values()) == sum(n - 3 for n in lengths) == 38
    rebuilt = _prefix_examples(split.train_sequences)
    assert collections.Counter(rebuilt) == expected and len(rebuilt) == 38
    assert split.train_sequences.num_targets == 38
    assert split.train_sequences.history.shape[1] == history_len
    assert split.train_sequences.history.dtype == split.train_sequences.targets.dtype == np.int32
    # Rows = chunks with n > 3, plus one per target beyond the history width.
    assert len(split.train_sequences) == 6 + sum(max(n - 3 - history_len, 0) for n in lengths)


def test_last_chunk_is_the_last_listed_for_each_user():
    chunks = [np.array([2, 3, 4]), np.array([5, 6, 7]), np.array([8, 9, 2]),
              np.array([3, 4, 5])]
    split = leave_one_out(np.array([10, 20, 10, 30]), chunks, history_len=2)
    _assert_equal(split.test.user, [10, 20, 10, 30], np.int64)
    _assert_equal(split.test.last_chunk, [False, True, True, True], bool)


def test_leave_one_out_rejects_short_chunks():
    with pytest.raises(ValueError, match=r"chunk 1 \(user 20\) has 2 item\(s\); "
                                         r"leave_one_out needs >= 3"):
        leave_one_out(np.array([10, 20]), [np.array([2, 3, 4]), np.array([5, 6])])
    with pytest.raises(ValueError, match="no chunks"):
        leave_one_out(np.array([], dtype=np.int64), [])


def test_examples_check_shapes():
    with pytest.raises(ValueError, match=r"history \[N, L\] and target \[N\]"):
        Examples(history=np.zeros((2, 3), np.int32), target=np.zeros(3, np.int32),
                 user=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"user \[N\] with N=2, got shape \(3,\)"):
        Examples(history=np.zeros((2, 3), np.int32), target=np.zeros(2, np.int32),
                 user=np.zeros(3, np.int64))


def test_examples_last_chunk_default_check_and_select():
    examples = Examples(history=np.arange(6, dtype=np.int32).reshape(3, 2),
                        target=np.array([7, 8, 9], np.int32), user=np.array([1, 2, 3]))
    _assert_equal(examples.last_chunk, [True, True, True], bool)
    flagged = Examples(examples.history, examples.target, examples.user,
                       last_chunk=np.array([True, False, True]))
    subset = flagged.select(flagged.last_chunk)
    _assert_equal(subset.history, [[0, 1], [4, 5]], np.int32)
    _assert_equal(subset.target, [7, 9], np.int32)
    _assert_equal(subset.user, [1, 3], np.int64)
    _assert_equal(subset.last_chunk, [True, True], bool)
    with pytest.raises(ValueError, match=r"last_chunk bool \[N\] with N=3, got shape \(2,\)"):
        Examples(examples.history, examples.target, examples.user,
                 last_chunk=np.array([True, False]))
    with pytest.raises(ValueError, match="got shape \\(3,\\) and dtype int64"):
        Examples(examples.history, examples.target, examples.user,
                 last_chunk=np.array([1, 0, 1]))


def test_sequence_examples_check_shapes():
    with pytest.raises(ValueError, match=r"history and targets of one shape \[S, L\], got "
                                         r"\(2, 3\) and \(2, 2\)"):
        SequenceExamples(history=np.zeros((2, 3), np.int32), targets=np.zeros((2, 2), np.int32),
                         user=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"user \[S\] with S=2, got shape \(1,\)"):
        SequenceExamples(history=np.zeros((2, 3), np.int32), targets=np.zeros((2, 3), np.int32),
                         user=np.zeros(1, np.int64))


def test_frequencies_and_probabilities_by_hand():
    counts = item_frequencies(np.array([2, 3, 3, 4, 3]), vocab_size=6)
    _assert_equal(counts, [0, 0, 1, 3, 1, 0], np.float64)
    # Sum 5: zero counts get 1 / 5 instead of 0.
    _assert_equal(sampling_probabilities(counts), np.array([0.2, 0.2, 0.2, 0.6, 0.2, 0.2],
                                                           np.float32), np.float32)
    with pytest.raises(ValueError, match=r"target index 6 is out of range: expected .*0..5"):
        item_frequencies(np.array([2, 6]), vocab_size=6)
    with pytest.raises(ValueError, match="counts are all zero"):
        sampling_probabilities(np.zeros(4))
    with pytest.raises(ValueError, match="counts must be finite and >= 0, got -1.0 at index 2"):
        sampling_probabilities(np.array([0.0, 0.0, -1.0, 2.0]))


def test_head_item_mask_by_hand():
    # Items (index >= 2) by count: 3 and 6 (9), then 2 and 4 (5), 8 (2), 5 (1), 7 (0).
    counts = np.array([100, 50, 5, 9, 5, 1, 9, 0, 2], dtype=np.float64)
    head = head_item_mask(counts, fraction=0.2)  # ceil(0.2 * 7) = 2
    assert head.dtype == bool and head.shape == (9,)
    assert np.flatnonzero(head).tolist() == [3, 6]
    assert np.flatnonzero(head_item_mask(counts, 0.3)).tolist() == [2, 3, 6]  # tie -> 2
    assert np.flatnonzero(head_item_mask(counts, 0.5)).tolist() == [2, 3, 4, 6]
    assert not head_item_mask(counts, 0.0).any()
    assert np.flatnonzero(head_item_mask(counts, 1.0)).tolist() == list(range(2, 9))
    # 0.2 * 35 = 7.000000000000001 in floating point: still 7 head items.
    assert head_item_mask(np.arange(37.0), 0.2).sum() == 7
    with pytest.raises(ValueError, match="fraction must be in"):
        head_item_mask(counts, 1.5)


def _examples(n, width=3):
    history = np.arange(n * width, dtype=np.int32).reshape(n, width)
    return Examples(history=history, target=np.arange(100, 100 + n, dtype=np.int32),
                    user=np.arange(n, dtype=np.int64))


def test_make_dataset_batches_in_order():
    from tfrec_proxy._tf import tf

    dataset = make_dataset(_examples(5), batch_size=2)
    assert dataset.element_spec == {
        "history": tf.TensorSpec(shape=(None, 3), dtype=tf.int32),
        "target": tf.TensorSpec(shape=(None,), dtype=tf.int32)}
    batches = list(dataset.as_numpy_iterator())
    assert [batch["target"].tolist() for batch in batches] == [[100, 101], [102, 103], [104]]
    np.testing.assert_array_equal(batches[2]["history"], [[12, 13, 14]])

    dropped = make_dataset(_examples(5), batch_size=2, drop_remainder=True)
    assert dropped.element_spec["history"].shape == (2, 3)
    assert len(list(dropped)) == 2


def test_make_dataset_reshuffles_every_pass():
    dataset = make_dataset(_examples(50), batch_size=50, shuffle=True, seed=3)
    first, second = (next(iter(dataset))["target"].numpy() for _ in range(2))
    np.testing.assert_array_equal(np.sort(first), np.arange(100, 150))
    np.testing.assert_array_equal(np.sort(second), np.arange(100, 150))
    assert not np.array_equal(first, second)


def test_make_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        make_dataset(_examples(2), batch_size=0)
    with pytest.raises(ValueError, match="examples is empty"):
        make_dataset(_examples(0), batch_size=4)


def test_user_item_sets_by_hand():
    from tfrec_proxy.data.sequences import user_item_sets

    sets = user_item_sets(np.array([7, 3, 7]), [np.array([5, 2, 5]), np.array([4]),
                                                np.array([9, 2])])
    assert sorted(sets) == [3, 7]
    _assert_equal(sets[7], [2, 5, 9], np.int32)
    _assert_equal(sets[3], [4], np.int32)


def _sequences():
    # Targets per row: 2, 3, 1 (mean 2).
    return SequenceExamples(
        history=np.array([[0, 2, 3], [4, 5, 6], [0, 0, 7]], np.int32),
        targets=np.array([[0, 3, 4], [5, 6, 8], [0, 0, 9]], np.int32),
        user=np.array([1, 2, 3], np.int64))


def test_make_sequence_dataset_batches_whole_sequences():
    from tfrec_proxy._tf import tf

    dataset = make_sequence_dataset(_sequences(), batch_size=2)
    assert dataset.element_spec == {
        "history": tf.TensorSpec(shape=(None, 3), dtype=tf.int32),
        "targets": tf.TensorSpec(shape=(None, 3), dtype=tf.int32)}
    batches = list(dataset.as_numpy_iterator())
    assert [len(batch["history"]) for batch in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0]["targets"], [[0, 3, 4], [5, 6, 8]])
    np.testing.assert_array_equal(batches[1]["history"], [[0, 0, 7]])
    dropped = make_sequence_dataset(_sequences(), batch_size=2, drop_remainder=True)
    assert dropped.element_spec["targets"].shape == (2, 3) and len(list(dropped)) == 1
    shuffled = make_sequence_dataset(_sequences(), batch_size=3, shuffle=True, seed=1)
    rows = next(iter(shuffled))
    # Rows move whole: each history row keeps its own targets row.
    pairs = sorted(zip(map(tuple, rows["history"].numpy().tolist()),
                       map(tuple, rows["targets"].numpy().tolist())))
    assert pairs == [((0, 0, 7), (0, 0, 9)), ((0, 2, 3), (0, 3, 4)), ((4, 5, 6), (5, 6, 8))]


def test_make_sequence_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        make_sequence_dataset(_sequences(), batch_size=0)
    empty = SequenceExamples(np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32),
                             np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="sequences is empty"):
        make_sequence_dataset(empty, batch_size=4)


@pytest.mark.parametrize("target_batch, expected", [
    (64, 32), (7, 4), (5, 2), (3, 2), (2, 1), (1, 1)])  # 5 / 2 = 2.5 -> 2 (round half even)
def test_sequences_per_batch_by_hand(target_batch, expected):
    assert sequences_per_batch(_sequences(), target_batch) == expected


def test_sequences_per_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="target_batch must be a positive integer, got 0"):
        sequences_per_batch(_sequences(), 0)
    no_targets = SequenceExamples(np.ones((2, 3), np.int32), np.zeros((2, 3), np.int32),
                                  np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"sequences has no training target \(2 sequences\)"):
        sequences_per_batch(no_targets, 10)


def test_data_package_imports_without_tensorflow():
    code = ("import sys, tfrec_proxy.data, tfrec_proxy.data.sequences; "
            "import tfrec_proxy.data.datasets; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_per_user_split_is_the_sasrec_protocol():
    """Per user: last item test, second last validation, the L items before them the
    training inputs (targets: the L + 1 items before the validation item, from the
    second on); older items are cut off."""
    from tfrec_proxy.data.sequences import per_user_sequences

    users = np.array([1, 2, 3])
    sequences = [np.arange(2, 12), np.array([2, 3, 4]), np.array([5, 6])]
    owners, kept, dropped = per_user_sequences(users, sequences, max_len=4)
    np.testing.assert_array_equal(owners, [1, 2])
    np.testing.assert_array_equal(kept[0], [5, 6, 7, 8, 9, 10, 11])  # last L + 3 = 7
    assert dropped == 2  # user 3 has fewer than min_len = 3 items
    split = leave_one_out(owners, kept, history_len=4)
    test, validation = split.test, split.validation
    np.testing.assert_array_equal(test.history[0], [7, 8, 9, 10])
    assert test.target[0] == 11
    np.testing.assert_array_equal(validation.history[0], [6, 7, 8, 9])
    assert validation.target[0] == 10
    rows = split.train_sequences
    np.testing.assert_array_equal(rows.history[0], [5, 6, 7, 8])
    np.testing.assert_array_equal(rows.targets[0], [6, 7, 8, 9])
    # User 2: three items give validation and test only.
    np.testing.assert_array_equal(test.history[1], [0, 0, 2, 3])


def test_epoch_shuffled_orders_depend_on_seed_stream_and_epoch_only():
    from tfrec_proxy.data import EpochShuffled, training_tensors

    examples = _examples(10)
    stream = EpochShuffled(training_tensors(examples), batch_size=4, seed=3)
    assert stream.steps_per_epoch == 3  # 4 + 4 + 2
    batches = [b["target"] for b in stream.epochs(0, 3).as_numpy_iterator()]
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [np.concatenate(batches[3 * e:3 * e + 3]) for e in range(3)]
    for order in epochs:  # every example once per epoch, rows kept whole
        np.testing.assert_array_equal(np.sort(order), np.arange(100, 110))
    assert not np.array_equal(epochs[0], epochs[1])
    # A stream started at epoch 2 (a resumed run) gives epoch 2's batches.
    late = np.concatenate([b["target"] for b in stream.epochs(2, 3).as_numpy_iterator()])
    np.testing.assert_array_equal(late, epochs[2])
    rebuilt = EpochShuffled(training_tensors(examples), batch_size=4, seed=3)
    first = np.concatenate([b["target"] for b in rebuilt.epochs(0, 1).as_numpy_iterator()])
    np.testing.assert_array_equal(first, epochs[0])
    other = np.concatenate([b["target"] for b in stream.epochs(0, 1, stream=1)
                            .as_numpy_iterator()])
    assert not np.array_equal(other, epochs[0])
    rows = next(stream.epochs(0, 1).as_numpy_iterator())
    np.testing.assert_array_equal(rows["history"][:, -1], 3 * (rows["target"] - 100) + 2)


def test_epoch_shuffled_drop_remainder_and_bad_input():
    from tfrec_proxy.data import EpochShuffled, training_tensors

    dropped = EpochShuffled(training_tensors(_examples(10)), batch_size=4, seed=0,
                            drop_remainder=True)
    assert dropped.steps_per_epoch == 2
    assert [len(b["target"]) for b in dropped.epochs(0, 2).as_numpy_iterator()] == [4] * 4
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EpochShuffled(training_tensors(_examples(3)), batch_size=0)
    with pytest.raises(ValueError, match="no examples"):
        EpochShuffled(training_tensors(_examples(0)), batch_size=2)
    with pytest.raises(ValueError, match="0 <= first <= last"):
        dropped.epochs(2, 1)
