"""What happens to every interaction between the loader and the examples, tried
systematically (hypothesis): out-of-order and tied timestamps, duplicated rows, users
with one or two interactions, long users. The documented rules: each user's items
are sorted by time with ties in row order, duplicates kept (`group_sequences`);
`split_long_sequences` / `per_user_sequences` drop short chunks or users and count
their interactions (`dropped_interactions` of the load report); `leave_one_out`
turns a chunk of n items into n - 3 training, 1 validation and 1 test example whose
histories are its prefixes, and `train_sequences` carries exactly the training pairs.
No interaction is lost without being counted.

Run with `--hypothesis-show-statistics` to see how many inputs were tried."""

import numpy as np
import pandas as pd
from hypothesis import event, given
from hypothesis import strategies as st

from tfrec_proxy.data.sequences import (group_sequences, leave_one_out, per_user_sequences,
                                        split_long_sequences)
from tfrec_proxy.data.vocab import PAD, Vocabulary
from conftest import fuzz_settings

FUZZ = fuzz_settings(200)

rows = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9), st.integers(-3, 6)),
                min_size=1, max_size=60)


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype(np.int64)


@FUZZ
@given(rows=rows)
def test_group_sequences_sorts_by_time_keeping_row_order_and_duplicates(rows):
    frame = _frame(rows)
    vocab = Vocabulary.from_ids(frame["item_id"].unique())
    users, sequences = group_sequences(frame, vocab)
    assert users.tolist() == sorted(set(frame["user_id"]))
    for user, sequence in zip(users, sequences):
        mine = [(t, n, i) for n, (u, i, t) in enumerate(rows) if u == user]
        expected = [i for _, _, i in sorted(mine)]
        assert vocab.ids[np.asarray(sequence) - 2].tolist() == expected
    assert sum(map(len, sequences)) == len(rows)
    if len(frame) != len(frame.drop_duplicates()):
        event("duplicated rows")


lengths = st.lists(st.integers(0, 40), min_size=1, max_size=8)


@FUZZ
@given(lengths=lengths, max_len=st.integers(1, 12), min_len=st.integers(1, 12))
def test_chunks_keep_or_count_every_interaction(lengths, max_len, min_len):
    if min_len > max_len:
        min_len, max_len = max_len, min_len
    users = np.arange(len(lengths), dtype=np.int64)
    sequences = [np.arange(2, 2 + n, dtype=np.int32) for n in lengths]
    owners, chunks, dropped = split_long_sequences(users, sequences, max_len, min_len)
    assert sum(map(len, chunks)) + dropped == sum(lengths)
    assert all(min_len <= len(chunk) <= max_len for chunk in chunks)
    for user, sequence in zip(users, sequences):
        mine = [chunk for owner, chunk in zip(owners, chunks) if owner == user]
        kept = np.concatenate(mine) if mine else np.zeros(0, np.int32)
        # Chunks count from the end: full chunks, then the oldest remainder r, which
        # alone may be dropped (r < min_len); what is kept is a suffix.
        np.testing.assert_array_equal(kept, sequence[len(sequence) - len(kept):])
        remainder = len(sequence) % max_len
        assert len(sequence) - len(kept) == (remainder if remainder < min_len else 0)
    event("dropped some" if dropped else "dropped none")


@FUZZ
@given(lengths=lengths, max_len=st.integers(1, 12), min_len=st.integers(3, 8))
def test_per_user_sequences_keep_the_window_or_count_the_user(lengths, max_len, min_len):
    users = np.arange(len(lengths), dtype=np.int64)
    sequences = [np.arange(2, 2 + n, dtype=np.int32) for n in lengths]
    owners, kept, dropped = per_user_sequences(users, sequences, max_len, min_len)
    assert dropped == sum(n for n in lengths if n < min_len)
    assert owners.tolist() == [u for u, n in enumerate(lengths) if n >= min_len]
    for owner, window in zip(owners, kept):
        np.testing.assert_array_equal(window, sequences[owner][-(max_len + 3):])


@FUZZ
@given(lengths=st.lists(st.integers(3, 30), min_size=1, max_size=6),
       history_len=st.integers(1, 12))
def test_leave_one_out_turns_n_items_into_n_minus_3_train_1_validation_1_test(
        lengths, history_len):
    users = np.asarray([7 * i + 1 for i in range(len(lengths))], np.int64)
    sequences = [np.arange(2 + 100 * i, 2 + 100 * i + n, dtype=np.int32)
                 for i, n in enumerate(lengths)]
    split = leave_one_out(users, sequences, history_len=history_len)
    assert len(split.train) == sum(n - 3 for n in lengths)
    assert len(split.validation) == len(split.test) == len(lengths)
    expected = []  # (user, prefix, target) of every training example, in order
    for user, sequence in zip(users, sequences):
        expected += [(user, sequence[:t], sequence[t]) for t in range(1, len(sequence) - 2)]
    for row, (user, prefix, target) in enumerate(expected):
        history = split.train.history[row]
        assert split.train.user[row] == user and split.train.target[row] == target
        recent = prefix[-history_len:]
        np.testing.assert_array_equal(history[history_len - len(recent):], recent)
        assert (history[:history_len - len(recent)] == PAD).all()
    for name, back in (("test", 1), ("validation", 2)):
        examples = getattr(split, name)
        assert examples.target.tolist() == [s[len(s) - back] for s in sequences]
    # The all-positions rows hold exactly the training (history, target) pairs.
    rows = split.train_sequences
    pairs = sorted((int(u), int(t)) for u, t in zip(split.train.user, split.train.target))
    found = sorted((int(u), int(t)) for u, targets in zip(rows.user, rows.targets)
                   for t in targets if t != PAD)
    if history_len >= max(lengths) - 3:  # one row per chunk, every target set once
        assert found == pairs
    else:
        assert set(found) == set(pairs)
