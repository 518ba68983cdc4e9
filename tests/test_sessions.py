"""Session logs (Diginetica format) and the ProxySR §4.1 session split, pinned by hand."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data.sessions import ANONYMOUS, load_sessions, split_sessions

DIGINETICA = (pathlib.Path(__file__).resolve().parents[2]
              / "shared/data/diginetica-sample/sample_train-item-views.csv")
MAY_9 = 1462752000000  # 2016-05-09 00:00 UTC in ms since 1970-01-01

LOG = ("session_id;user_id;item_id;timeframe;eventdate\n"
       "2;5;200;86000000;2016-05-10\n"   # after midnight: offset from the session start
       "1;NA;81766;526309;2016-05-09\n"
       "1;NA;31331;1031018;2016-05-09\n"
       "1;NA;9654;75848;2016-05-09\n"
       "2;;100;500;2016-05-09\n")


def _write(folder: pathlib.Path, text: str, name: str = "views.csv") -> pathlib.Path:
    path = folder / name
    path.write_text(text)
    return path


def _frame(sessions):
    """Views from `{session: (user, start, [items])}`: item k of a session at start + k."""
    rows = [(s, user if k == len(items) - 1 or s != 40 else None, item, start + k)
            for s, (user, start, items) in sessions.items() for k, item in enumerate(items)]
    frame = pd.DataFrame(rows, columns=["session_id", "user_id", "item_id", "time"])
    frame["user_id"] = frame["user_id"].astype("Int64")
    return frame.iloc[np.random.default_rng(0).permutation(len(frame))]  # any row order


# Session 40's user id is on its last view only; 30 loses item 9 (seen once), then is
# too short; 50, 60 hold items 5, 6 that no train session has.
SESSIONS = {10: (7, 100, [1, 2, 1, 3]), 20: (None, 50, [2, 3, 4]), 30: (None, 300, [9, 1]),
            40: (8, 200, [4, 2]), 50: (None, 400, [5, 1, 5, 3]),
            60: (None, 500, [6, 6, 2]), 70: (None, 600, [3, 4, 3])}


def _split(max_len=3, **kwargs):
    kwargs = {"min_item_count": 2, "min_session_length": 2,
              "ratios": (0.5, 0.25, 0.25), **kwargs}
    return split_sessions(_frame(SESSIONS), max_len=max_len, **kwargs)


def test_load_sessions_diginetica_format(tmp_path):
    frame = load_sessions(_write(tmp_path, LOG))
    assert list(frame.columns) == ["session_id", "user_id", "item_id", "time"]
    assert [str(t) for t in frame.dtypes] == ["int64", "Int64", "int64", "int64"]
    assert frame["session_id"].tolist() == [1, 1, 1, 2, 2]
    assert frame["item_id"].tolist() == [9654, 81766, 31331, 100, 200]  # by timeframe
    assert frame["user_id"].isna().tolist() == [True, True, True, True, False]
    assert frame["user_id"].iloc[4] == 5
    # Midnight of the session's first day + timeframe, also past midnight.
    assert frame["time"].tolist() == [MAY_9 + 75848, MAY_9 + 526309, MAY_9 + 1031018,
                                      MAY_9 + 500, MAY_9 + 86000000]
    for sep in (",", "\t"):
        other = load_sessions(_write(tmp_path, LOG.replace(";", sep), f"views{ord(sep)}"))
        pd.testing.assert_frame_equal(other, frame)


@pytest.mark.parametrize("text, words", [
    ("session_id;user_id;item_id;eventdate\n1;NA;3;2016-01-01\n",
     ["missing column(s) ['timeframe']", "columns present"]),
    ("session_id;user_id;item_id;timeframe;eventdate\n",
     ["no views"]),
    (LOG.replace("31331", "abc"), ["'item_id'", "row 2", "'abc'", "not an integer"]),
    (LOG.replace(";5;200", ";x5;200"), ["'user_id'", "row 0", "'x5'"]),
    (LOG.replace("1;NA;9654", ";NA;9654"), ["'session_id'", "row 3", "missing value"]),
    (LOG.replace("526309", "-3"), ["'timeframe'", "row 1", "'-3'", ">= 0"]),
    (LOG.replace("2016-05-10", "10/05/2016"), ["'eventdate'", "row 0", "'10/05/2016'",
                                               "YYYY-MM-DD"]),
])
def test_load_sessions_errors_name_file_row_column_and_value(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as error:
        load_sessions(path)
    for word in [str(path)] + words:
        assert word in str(error.value)


def test_load_sessions_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_sessions(tmp_path / "absent.csv")


def test_filters_split_and_counts():
    split = _split()
    assert {name: s.tolist() for name, s in split.sessions.items()} == {
        "train": [20, 10, 40], "validation": [50], "test": [70]}  # 60 lost its items
    assert split.vocab.ids.tolist() == [1, 2, 3, 4]  # training items -> indices 2..5
    assert split.vocab.lookup([1, 2, 3, 4, 5, 9]).tolist() == [2, 3, 4, 5, 1, 1]
    assert split.summary() == {
        "views_read": 21, "sessions_read": 7, "items_read": 7,
        "rare_items_dropped": 1, "rare_views_dropped": 1,
        "short_sessions_dropped": 1, "short_session_views_dropped": 1,
        "train_sessions": 3, "train_items": 4, "train_views": 9, "train_examples": 6,
        "train_unseen_examples": 5,
        "validation_views_removed": 2, "validation_sessions_dropped": 0,
        "validation_sessions": 1, "validation_items": 2, "validation_views": 2,
        "validation_examples": 1, "validation_unseen_examples": 1,
        "test_views_removed": 2, "test_sessions_dropped": 1, "test_sessions": 1,
        "test_items": 2, "test_views": 3, "test_examples": 2, "test_unseen_examples": 1,
        "vocab_size": 6}


def test_examples_unseen_mask_users_and_sessions():
    split = _split()
    train = split.train
    np.testing.assert_array_equal(train.examples.history, [
        [0, 0, 3], [0, 3, 4],             # session 20: items 2, 3, 4
        [0, 0, 2], [0, 2, 3], [2, 3, 2],  # session 10: items 1, 2, 1, 3
        [0, 0, 5]])                       # session 40: items 4, 2
    assert train.examples.target.tolist() == [4, 5, 3, 2, 4, 3]
    assert train.unseen.tolist() == [True, True, True, False, True, True]
    assert train.session.tolist() == [20, 20, 10, 10, 10, 40]
    assert train.examples.user.tolist() == [ANONYMOUS] * 2 + [7] * 3 + [8]
    assert train.examples.history.dtype == np.int32 and train.examples.user.dtype == np.int64
    # Validation: session 50 = 5, 1, 5, 3 without item 5.
    assert split.validation.examples.history.tolist() == [[0, 0, 2]]
    assert split.validation.examples.target.tolist() == [4]
    # Test: session 70 = 3, 4, 3; its repeat of item 3 is not an unseen target.
    test = split.test
    assert test.examples.history.tolist() == [[0, 0, 4], [0, 4, 5]]
    assert test.examples.target.tolist() == [5, 4] and test.unseen.tolist() == [True, False]
    unseen = test.unseen_only()
    assert unseen.examples.target.tolist() == [5] and unseen.session.tolist() == [70]
    # The mask looks at the whole prefix, not only the last max_len items.
    short = _split(max_len=1).train
    assert short.examples.history[3].tolist() == [3] and not short.unseen[3]


def test_train_sequences_are_whole_sessions():
    sequences = _split().train_sequences
    np.testing.assert_array_equal(sequences.history, [[0, 3, 4], [2, 3, 2], [0, 0, 5]])
    np.testing.assert_array_equal(sequences.targets, [[0, 4, 5], [3, 2, 4], [0, 0, 3]])
    assert sequences.user.tolist() == [ANONYMOUS, 7, 8] and sequences.num_targets == 6
    # Longer than L: the first L items, then one row per later target (leave_one_out).
    sequences = _split(max_len=2).train_sequences
    np.testing.assert_array_equal(sequences.history, [[3, 4], [2, 3], [3, 2], [0, 5]])
    np.testing.assert_array_equal(sequences.targets, [[4, 5], [3, 2], [0, 4], [0, 3]])
    assert sequences.user.tolist() == [ANONYMOUS, 7, 7, 8]


def test_items_are_filtered_first_then_sessions_once():
    # Item 7 is seen twice; one of them is in session 3, too short, which goes after.
    frame = _frame({1: (None, 0, [1, 2, 3, 7]), 2: (None, 10, [1, 2, 3]),
                    3: (None, 20, [7, 1])})
    split = split_sessions(frame, min_item_count=2, min_session_length=3, ratios=(1, 0, 0))
    assert split.sessions["train"].tolist() == [1, 2]
    assert split.vocab.ids.tolist() == [1, 2, 3, 7]  # kept, though now seen once
    assert split.summary()["short_sessions_dropped"] == 1
    assert len(split.validation) == 0 and split.validation.examples.history.shape == (0, 50)


def test_chronological_boundaries_8_1_1_with_ties_by_session_id():
    # Ten sessions; ids count up while the starts count down, two share a start.
    starts = {i: 1000 - 10 * i for i in range(1, 11)}
    starts[2] = starts[1]
    frame = _frame({i: (None, start, [1, 2, 3]) for i, start in starts.items()})
    split = split_sessions(frame, min_item_count=1, min_session_length=3)
    assert split.sessions["train"].tolist() == [10, 9, 8, 7, 6, 5, 4, 3]
    assert split.sessions["validation"].tolist() == [1]  # ties: lower id first
    assert split.sessions["test"].tolist() == [2]


@pytest.mark.parametrize("change, kwargs, words", [
    (lambda f: f.drop(columns="time"), {}, ["sessions frame", "missing column(s) ['time']"]),
    (lambda f: f.assign(item_id=f["item_id"].astype(object).where(f.index != 3, "x")), {},
     ["'item_id'", "row 3", "'x'"]),
    (lambda f: f, {"ratios": (0.8, 0.1)}, ["ratios must be 3"]),
    (lambda f: f, {"max_len": 0}, ["max_len must be a positive integer"]),
    (lambda f: f, {"min_session_length": 5}, ["no train session", "0 session(s)"]),
])
def test_split_errors(change, kwargs, words):
    with pytest.raises(ValueError) as error:
        split_sessions(change(_frame(SESSIONS).sort_index()), **kwargs)
    for word in words:
        assert word in str(error.value)


@pytest.mark.skipif(not DIGINETICA.is_file(), reason="Diginetica sample not in ../shared")
def test_diginetica_sample_counts_and_split():
    frame = load_sessions(DIGINETICA)
    assert len(frame) == 12391 and frame["session_id"].nunique() == 2986
    assert frame["item_id"].nunique() == 7139 and frame["user_id"].notna().sum() == 4710
    key = frame[["session_id", "time"]].to_numpy()
    assert (np.diff(key[:, 0]) >= 0).all()
    assert (np.diff(key[:, 1])[np.diff(key[:, 0]) == 0] >= 0).all()
    split = split_sessions(frame)
    counts = split.summary()
    assert counts["views_read"] == 12391 and counts["train_sessions"] > 0
    assert counts["train_sessions"] == np.floor(0.8 * (2986 - counts["short_sessions_dropped"]))
    for part in (split.train, split.validation, split.test):
        assert (part.examples.target >= 2).all()  # no OOV, no PAD target
    # The whole-session rows hold exactly the per-position train examples.
    rows = split.train_sequences
    r, j = np.nonzero(rows.targets)
    assert len(r) == len(split.train) == counts["train_examples"]
    L = rows.history.shape[1]
    pairs = {(tuple(np.r_[np.zeros(L - j_ - 1, int), rows.history[r_, :j_ + 1]][-L:]),
              rows.targets[r_, j_]) for r_, j_ in zip(r, j)}
    assert pairs == {(tuple(h), t) for h, t in zip(split.train.examples.history,
                                                    split.train.examples.target)}
