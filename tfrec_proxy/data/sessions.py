"""Session logs (Diginetica format) and the session split of ProxySR §4.1.

`load_sessions` reads a log; `split_sessions` drops items seen fewer than 5 times, then
sessions with fewer than 3 views, splits the sessions 8:1:1 in chronological order,
removes from validation / test the items that training lacks (then sessions left with
fewer than 2 views), and builds the examples `s[:t] -> s[t]` for every position t >= 1
(ProxySR §4.1.4) with the next-unseen-item mask (target not in `s[:t]`, §4.2)."""

import pathlib
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy.data.examples import Examples, SequenceExamples
from tfrec_proxy.data.frames import check_non_negative, integer_column
from tfrec_proxy.data.sequences import _train_sequences
from tfrec_proxy.data.vocab import Vocabulary

__all__ = ["ANONYMOUS", "SESSION_COLUMNS", "SessionExamples", "SessionSplit",
           "load_sessions", "split_sessions"]

SESSION_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
ANONYMOUS = -1  # `user` of the examples of a session without a user id
SPLITS = ("train", "validation", "test")

_DAY_MS = 86_400_000
_ROWS = " (0-based data row, header not counted)"


def _separator(path: pathlib.Path) -> str:
    """`;` or tab when the header line holds it and no `,`; otherwise `,`."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    return next((sep for sep in (";", "\t") if sep in header and "," not in header), ",")


def load_sessions(path: Union[str, pathlib.Path]) -> pd.DataFrame:
    """Reads a session log in the Diginetica format.

    The file has a header `session_id;user_id;item_id;timeframe;eventdate` (`,` or tab
    separators are detected from the header too): `user_id` is `NA` (or empty) for
    anonymous views, `timeframe` the milliseconds since the session started and
    `eventdate` the day, `YYYY-MM-DD`.

    Args:
        path: the file.

    Returns:
        `[N]` views sorted by `session_id`, then `time` (stable), fresh 0..N-1 index:
        `session_id` int64, `user_id` nullable Int64 (`<NA>` when anonymous), `item_id`
        int64 and `time` int64 milliseconds since 1970-01-01: midnight (UTC) of the
        session's earliest `eventdate` plus `timeframe`. Within a session `time`
        orders (and spaces) the views exactly as `timeframe` does, also for sessions
        that run past midnight; across sessions only the day is known (the log has no
        time of day), so `time` orders sessions chronologically by day.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file cannot be parsed, a column is missing, there are no rows,
            or a value is missing or malformed (the message names the file, the
            0-based data row, the column and the value).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"session log not found: {path} is not a file")
    source, sep = str(path), _separator(path)
    expected = f"a {sep!r}-separated file with the header {';'.join(SESSION_COLUMNS)}"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, encoding_errors="replace")
    except (ValueError, pd.errors.ParserError) as error:  # EmptyDataError included
        raise ValueError(f"{source}: cannot parse the session log ({error}); expected "
                         f"{expected}") from error
    missing = [column for column in SESSION_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns present: "
                         f"{list(table.columns)}; expected {expected}")
    if table.empty:
        raise ValueError(f"{source}: no views (the file has a header but no rows)")
    session = integer_column(table["session_id"], "session_id", source, _ROWS)
    item = integer_column(table["item_id"], "item_id", source, _ROWS)
    check_non_negative(pd.Series(item, index=table.index), "item_id", source, _ROWS)
    offset = integer_column(table["timeframe"], "timeframe", source, _ROWS)
    if (offset < 0).any():
        row = int(np.argmax(offset < 0))
        raise ValueError(f"{source}: column 'timeframe' at row {row}{_ROWS} has value "
                         f"{table['timeframe'].iloc[row]!r}; expected milliseconds >= 0 "
                         "since the session start")
    known = table["user_id"].notna()  # "NA" and empty cells are read as missing
    user = pd.Series(pd.NA, index=table.index, dtype="Int64")
    user[known] = integer_column(table["user_id"][known], "user_id", source, _ROWS)
    check_non_negative(user[known], "user_id", source, _ROWS)  # -1 = anonymous
    day = pd.to_datetime(table["eventdate"], format="%Y-%m-%d", errors="coerce")
    if day.isna().any():
        row = int(np.argmax(day.isna().to_numpy()))
        raise ValueError(f"{source}: column 'eventdate' at row {row}{_ROWS} has value "
                         f"{table['eventdate'].iloc[row]!r}; expected a date "
                         "YYYY-MM-DD")
    day_ms = day.to_numpy(dtype="datetime64[D]").astype(np.int64) * _DAY_MS
    first_day = pd.Series(day_ms).groupby(session).transform("min").to_numpy()
    frame = pd.DataFrame({"session_id": session, "user_id": user.array, "item_id": item,
                          "time": first_day + offset})
    order = np.lexsort((frame["time"].to_numpy(), session))  # stable
    return frame.iloc[order].reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class SessionExamples:
    """Next-item examples of sessions, with their session and the unseen-target mask.

    Attributes:
        examples: `Examples` `[N]`: history int32 `[N, L]` (the last L items before
            the target, left-padded with PAD), target int32 `[N]`, user int64 `[N]`
            (the session's user id, `ANONYMOUS` = -1 when it has none).
        session: int64 `[N]` raw session id of each example.
        unseen: bool `[N]`, True when the target does not occur earlier in its session
            (the whole prefix, not only the L items of the history): the examples of
            the next unseen item task (ProxySR §4.2).

    Example:
        test = split_sessions(load_sessions(path)).test
        test.examples.history.shape          # (N, L)
        unseen = test.unseen_only()          # next unseen item examples
        assert len(unseen) == test.unseen.sum()
    """

    examples: Examples
    session: np.ndarray
    unseen: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.examples)
        if np.shape(self.session) != (n,) or np.shape(self.unseen) != (n,):
            raise ValueError(f"SessionExamples needs session and unseen [N] with N={n}, "
                             f"got shapes {np.shape(self.session)} and "
                             f"{np.shape(self.unseen)}")

    def __len__(self) -> int:
        return len(self.examples)

    def select(self, rows: Union[np.ndarray, slice]) -> "SessionExamples":
        """The examples at `rows` (a bool `[N]` mask, integer positions or a slice)."""
        return SessionExamples(examples=self.examples.select(rows),
                               session=self.session[rows], unseen=self.unseen[rows])

    def unseen_only(self) -> "SessionExamples":
        """The next unseen item examples (`unseen` True)."""
        return self.select(self.unseen)


@dataclass(frozen=True, eq=False)
class SessionSplit:
    """Chronological session split with next-item examples (ProxySR §4.1).

    Attributes:
        train, validation, test: per split, one example per session position t >= 1,
            sessions in chronological order, then t in order.
        train_sequences: the train sessions as whole sequences for all-positions
            training, `SequenceExamples` `[S, L]` left-padded: history `s[:-1]`,
            targets `s[1:]` (`targets[r, j]` follows `history[r, j]`, 0 where none),
            user the session's user (-1 anonymous). A session with n - 1 > L targets
            gives the row `s[0:L] -> s[1:L+1]` and one row `s[t-L:t]` per later
            target t, only its last column's target set (the `leave_one_out`
            convention), so the rows hold exactly the `train` examples.
        vocab: `Vocabulary` of the training items (raw ids ascending at 2..).
        sessions: split name -> int64 raw session ids of that split, chronological.
        counts: what was kept and dropped; see `summary`.

    Example:
        split = split_sessions(load_sessions("train-item-views.csv"), max_len=50)
        split.summary()["train_sessions"], split.vocab.size
        split.train_sequences.history.shape  # (S, 50), for all-positions training
        split.test.unseen_only().examples    # the next unseen item test examples
    """

    train: SessionExamples
    validation: SessionExamples
    test: SessionExamples
    train_sequences: SequenceExamples
    vocab: Vocabulary
    sessions: Dict[str, np.ndarray]
    counts: Dict[str, int]

    def summary(self) -> Dict[str, int]:
        """Counts: `views_read`, `sessions_read`, `items_read`; `rare_items_dropped`
        and their `rare_views_dropped`; `short_sessions_dropped` (with their
        `short_session_views_dropped`); per split `{split}_sessions`, `{split}_items`
        (distinct), `{split}_views`, `{split}_examples`, `{split}_unseen_examples`;
        for validation and test, `{split}_views_removed` (items not in training) and
        `{split}_sessions_dropped` (left with fewer than 2 views); `vocab_size`."""
        return dict(self.counts)


def _frame_columns(frame: pd.DataFrame, source: str) -> Dict[str, np.ndarray]:
    """The checked columns of a sessions frame: int64 session/item/user, numeric time."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("session_id", "item_id", "time") if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns present: "
                         f"{list(frame.columns)}; expected session_id, item_id, time "
                         "(and optionally user_id), e.g. from load_sessions")
    if frame.empty:
        raise ValueError(f"{source}: no views (the frame has no rows)")
    time = frame["time"].to_numpy() if frame["time"].dtype.kind == "f" and np.isfinite(
        frame["time"].to_numpy()).all() else integer_column(frame["time"], "time", source)
    users = frame.get("user_id", pd.Series(pd.NA, index=frame.index, dtype="Int64"))
    known = users.notna().to_numpy()
    user = np.full(len(frame), ANONYMOUS, dtype=np.int64)
    user[known] = integer_column(users[known], "user_id", source)
    return {"session": integer_column(frame["session_id"], "session_id", source),
            "item": integer_column(frame["item_id"], "item_id", source),
            "time": time, "user": user, "known": known}


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    """`ratios` as float64 `[3]` summing to 1, checked."""
    try:
        array = np.asarray(ratios, dtype=np.float64)
    except (TypeError, ValueError):  # e.g. ragged or non-numeric
        array = np.empty(0)
    if array.shape != (3,) or not (np.isfinite(array).all() and (array >= 0).all()
                                   and array[0] > 0):
        raise ValueError(f"ratios must be 3 finite numbers >= 0 (train, validation, test) "
                         f"with train > 0, got {ratios!r}")
    return array / array.sum()


def _runs(session: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`(starts, lengths)` int64 of the runs of equal ids in `session` `[V]`."""
    change = np.ones(len(session), dtype=bool)
    change[1:] = session[1:] != session[:-1]
    starts = np.flatnonzero(change)
    return starts, np.diff(np.r_[starts, len(session)])


def _session_examples(session: np.ndarray, items: np.ndarray, user: np.ndarray,
                      max_len: int) -> SessionExamples:
    """Examples `s[:t] -> s[t]`, t >= 1, of views grouped by session (in order)."""
    starts, lengths = _runs(session)
    k = np.repeat(np.arange(len(starts)), lengths)  # session position of every view
    # max_len PAD slots before every session (and at the end, so the array is never
    # shorter than a window): a window before a view holds only its session's items.
    padded = np.zeros(len(items) + max_len * (len(starts) + 1), dtype=np.int32)
    slot = np.arange(len(items)) + max_len * (k + 1)
    padded[slot] = items
    windows = np.lib.stride_tricks.sliding_window_view(padded, max_len)
    rows = np.arange(len(items)) > starts[k]  # position t >= 1
    seen = pd.DataFrame({"s": session, "i": items}).duplicated().to_numpy()
    examples = Examples(history=windows[slot[rows] - max_len].astype(np.int32),
                        target=items[rows].astype(np.int32), user=user[rows])
    return SessionExamples(examples=examples, session=session[rows], unseen=~seen[rows])


def split_sessions(frame: pd.DataFrame, min_item_count: int = 5, min_session_length: int = 3,
                   ratios: Sequence[float] = (0.8, 0.1, 0.1), max_len: int = 50,
                   source: str = "sessions frame") -> SessionSplit:
    """Filters and splits sessions chronologically, as in ProxySR §4.1 (Diginetica).

    Steps, each applied once (not iterated to a fixed point, so an item kept by step
    1 may occur fewer than `min_item_count` times after step 2):

    1. drop the views of items seen fewer than `min_item_count` times (all views);
    2. drop sessions with fewer than `min_session_length` views left;
    3. order sessions by start (their smallest `time`; ties by session id) and cut
       them into train / validation / test: the first `floor(S * r_train)`, the next
       up to `floor(S * (r_train + r_val))`, the rest (ratios normalised to sum 1);
    4. remove from validation / test the views of items that no train session has,
       then drop those sessions left with fewer than 2 views.

    A session's user is the first user id among its views in time order (before any
    filtering), or `ANONYMOUS` (-1) when none has one.

    Args:
        frame: `[V]` views with `session_id`, `item_id`, `time` (integer, or float
            seconds) and optionally `user_id` (nullable), e.g. from `load_sessions`.
        min_item_count: items with fewer views are dropped (step 1).
        min_session_length: sessions with fewer views are dropped (step 2).
        ratios: `(train, validation, test)` shares of the sessions.
        max_len: L, the history width (ProxySR: 50); longer prefixes keep their last L.
        source: where the frame came from, for messages.

    Returns:
        The split; see `SessionSplit`.

    Raises:
        TypeError: `frame` is not a DataFrame.
        ValueError: a bad argument, a missing column or value (the message names the
            column and the row), or no train session left after the filters.
    """
    check_positive_int("min_item_count", min_item_count)
    check_positive_int("min_session_length", min_session_length)
    check_positive_int("max_len", max_len)
    shares = _check_ratios(ratios)
    c = _frame_columns(frame, source)
    order = np.lexsort((c["time"], c["session"]))  # stable: ties keep row order
    session, item, time = c["session"][order], c["item"][order], c["time"][order]
    known = c["known"][order]
    session_user = pd.Series(c["user"][order][known], index=session[known])
    session_user = session_user.groupby(level=0).first()  # first user id in time order
    counts = {"views_read": len(session), "sessions_read": len(np.unique(session)),
              "items_read": len(np.unique(item))}
    # 1. rare items, 2. short sessions (once each, in this order)
    _, inverse, item_counts = np.unique(item, return_inverse=True, return_counts=True)
    keep = item_counts[inverse.ravel()] >= min_item_count
    counts.update(rare_items_dropped=int((item_counts < min_item_count).sum()),
                  rare_views_dropped=int((~keep).sum()))
    session, item, time = session[keep], item[keep], time[keep]
    _, inverse, lengths = np.unique(session, return_inverse=True, return_counts=True)
    keep = lengths[inverse.ravel()] >= min_session_length
    session, item, time = session[keep], item[keep], time[keep]
    ids, first = np.unique(session, return_index=True)
    counts.update(short_sessions_dropped=counts["sessions_read"] - len(ids),
                  short_session_views_dropped=int((~keep).sum()))
    # 3. chronological cut by session start
    bounds = np.floor(np.round(len(ids) * np.cumsum(shares)[:2], 9)).astype(np.int64)
    if bounds[0] == 0:
        raise ValueError(f"{source}: no train session: {len(ids)} session(s) are left "
                         f"after dropping items seen fewer than {min_item_count} times "
                         f"and sessions shorter than {min_session_length}, and "
                         f"ratios={tuple(ratios)} give the train split none")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.lexsort((ids, time[first]))] = np.arange(len(ids))
    position = np.searchsorted(ids, session)  # session of each view, as index in ids
    row_rank = rank[position]
    row_split = np.searchsorted(bounds, row_rank, side="right")  # 0 train, 1 val, 2 test
    user_of = session_user.reindex(ids, fill_value=ANONYMOUS).to_numpy(np.int64)
    vocab = Vocabulary.from_ids(item[row_split == 0])
    parts, sessions = {}, {}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(row_split == index)
        rows = rows[np.argsort(row_rank[rows], kind="stable")]  # chronological sessions
        if index:  # 4. items unseen in training, then sessions left shorter than 2
            in_vocab = np.isin(item[rows], vocab.ids)
            rows = rows[in_vocab]
            s_ids, s_len = np.unique(session[rows], return_counts=True)
            rows = rows[np.isin(session[rows], s_ids[s_len >= 2])]
            counts[f"{name}_views_removed"] = int((~in_vocab).sum())
            counts[f"{name}_sessions_dropped"] = int(
                np.count_nonzero(row_split[first] == index) - np.count_nonzero(s_len >= 2))
        s, indices = session[rows], vocab.lookup(item[rows])
        parts[name] = _session_examples(s, indices, user_of[position[rows]], max_len)
        sessions[name] = pd.unique(s).astype(np.int64)
        counts.update({f"{name}_sessions": len(sessions[name]),
                       f"{name}_items": len(np.unique(item[rows])),
                       f"{name}_views": len(rows), f"{name}_examples": len(parts[name]),
                       f"{name}_unseen_examples": int(parts[name].unseen.sum())})
        if index == 0:
            starts, lengths = _runs(s)
            # `_train_sequences` holds out the last 2 items of a chunk of length n
            # (n - 3 targets); a train session keeps all n - 1, hence lengths + 2.
            train_sequences = _train_sequences(user_of[position[rows][starts]],
                                               lengths + 2, starts, indices, max_len)
    counts["vocab_size"] = vocab.size
    return SessionSplit(train=parts["train"], validation=parts["validation"],
                        test=parts["test"], train_sequences=train_sequences, vocab=vocab,
                        sessions=sessions, counts=counts)
