"""FELRec's data path: any source -> one time line -> `ChronologicalSplit` (§3.1).

`prepare_chronological(config.data, interactions)` is FELRec's `prepare_data`: it
reads the interactions of every source the toolkit has and hands them, on one global
time line, to `chronological_split` (80% train, 10% validation, 10% test, partitions
observed / new users / new items, leak-free histories of `history_len` entities).

How each source is ordered:

* `"synthetic"`: the generator on the interleaved clock
  (`tfrec_proxy.data.synthetic_timeline`; `--late-users` / `--late-items` make new
  users and new items).
* `"file"` / `"dataframe"`: by the time column; `DataConfig.time_order` decides
  (`"auto"`: the timestamps, except for SASRec-format files such as the shared
  ml-1m.txt and for `time_column=None`, which have no timestamps: there the line
  order only orders each user's own interactions, so they are interleaved
  round-robin: every user's k-th interaction before any user's (k+1)-th, users in
  order of first appearance). Round-robin ML-1M is *not* the paper's protocol (the
  paper uses MovieLens-25M's rating timestamps): every user appears at time 0, so
  its validation and test sets hold no new user, and its "time" is a user's
  position in their own history.
* `"sessions"` (Diginetica format; default the shared sample): a session is FELRec's
  user (the log's users are mostly anonymous, as in ProxySR's session task), and
  time is the session's day plus its `timeframe` (`load_sessions`); every view is
  kept (no minimum item count: FELRec represents rare and new items). Sessions run
  in a day, so new users are new sessions.
* `"synthetic-sessions"`: the generator's clicks cut into sessions (`to_sessions`),
  treated as `"sessions"`.
"""

import dataclasses
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data.chronological import ChronologicalSplit, chronological_split
from tfrec_proxy.data.frames import LoadReport, validate_interactions
from tfrec_proxy.data.loaders import load_interactions, resolved_format
from tfrec_proxy.data.sessions import load_sessions
from tfrec_proxy.data.tables import select_columns

TIME_ORDERS = ("auto", "timestamp", "round-robin")
TRAIN_FRACTION, VALIDATION_FRACTION = 0.8, 0.1  # §3.1
SOURCES = ("synthetic", "file", "dataframe", "sessions", "synthetic-sessions")


@dataclasses.dataclass
class ChronologicalData:
    """What a FELRec run needs from its data (the counterpart of `PreparedData`).

    Attributes:
        split: The `ChronologicalSplit` (time line, partitions, histories, ids).
        report: Load report of file, frame and session sources; None for synthetic.
        time_order: How the time line was ordered (`"timestamp"`, `"round-robin"`,
            `"synthetic clock"` or `"session time"`).
        item_clusters: Ground-truth cluster per item index for synthetic data.
    """

    split: ChronologicalSplit
    report: Optional[LoadReport]
    time_order: str
    item_clusters: Optional[np.ndarray] = None

    @property
    def last_timestamp(self) -> Any:
        """The latest timestamp of the time line (update_cache takes newer ones)."""
        return self.split.interactions["timestamp"].iloc[-1]

    def summary(self) -> Dict[str, Any]:
        """Sizes, the time order and the partition counts of validation and test."""
        split = self.split
        return {"interactions": len(split.user), "users": split.num_users,
                "items": split.num_items, "train_interactions": split.num_train,
                "validation_interactions": split.num_validation,
                "test_interactions": len(split.user) - split.num_train
                - split.num_validation,
                "train_users": split.num_train_users, "train_items": split.num_train_items,
                "time_order": self.time_order, "partitions": split.partition_counts()}


def round_robin(frame: pd.DataFrame) -> pd.DataFrame:
    """Interleaves users: `timestamp` := the row's position in its user's sequence.

    Each user's own order is the frame's (`timestamp`, then row) order; users keep
    their order of first appearance, and `chronological_split`'s stable sort then puts
    every user's k-th interaction before any user's (k+1)-th.

    Example:

        round_robin(pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 7],
                                  "timestamp": [0, 1, 2]}))  # timestamps 0, 1, 0
    """
    order = frame.assign(_row=np.arange(len(frame)))
    first = order.groupby("user_id", sort=False)["_row"].transform("min")
    order = order.assign(_first=first).sort_values(["_first", "timestamp", "_row"],
                                                   kind="stable")
    order["timestamp"] = order.groupby("user_id", sort=False).cumcount().astype(np.int64)
    return order.drop(columns=["_row", "_first"]).reset_index(drop=True)


def _sessions_frame(views: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": views["session_id"].to_numpy(np.int64),
                         "item_id": views["item_id"].to_numpy(np.int64),
                         "timestamp": views["time"].to_numpy(np.int64)})


def prepare_chronological(config: DataConfig, interactions: Optional[pd.DataFrame] = None,
                          history_len: int = 64) -> ChronologicalData:
    """Loads `config`'s interactions on one time line and splits them (FELRec §3.1).

    Args:
        config: Data settings (`split` must be `"chronological"`; `source`,
            `path`, columns, `time_order`, the synthetic clock).
        interactions: The frame of `source="dataframe"` (config column names).
        history_len: L, the longest user / item history.

    Returns:
        The `ChronologicalData`.

    Raises:
        ValueError: another split, an unknown source or time order, a frame given
            with another source (or none with "dataframe"), unusable interactions.
    """
    from tfrec_proxy.data.prepare import (generate_synthetic, generator_arguments,
                                          resolve_data_path, session_data_path)
    from tfrec_proxy.data.synthetic import generate_long_tail, to_sessions

    if config.split != "chronological":
        raise ValueError(f"FELRec trains on the chronological protocol (§3.1): set "
                         f"DataConfig.split='chronological' (--split chronological); got "
                         f"{config.split!r}.")
    if config.time_order not in TIME_ORDERS:
        raise ValueError(f"Unknown time_order {config.time_order!r}; expected one of "
                         f"{TIME_ORDERS}.")
    if config.source not in SOURCES:
        raise ValueError(f"Unknown data source {config.source!r}; expected one of "
                         f"{SOURCES}.")
    if (interactions is not None) != (config.source == "dataframe"):
        raise ValueError("An interactions frame goes with DataConfig.source='dataframe' "
                         f"and only with it; got source={config.source!r} and "
                         f"{'a' if interactions is not None else 'no'} frame.")
    report, clusters, order = None, None, "timestamp"
    if config.source == "synthetic":
        data = generate_synthetic(config)
        frame, order = data.interactions, "synthetic clock"
        clusters = data
    elif config.source in ("sessions", "synthetic-sessions"):
        if config.source == "sessions":
            path = session_data_path(config.path)
            views = load_sessions(path)
        else:
            path = "synthetic-sessions"
            views = to_sessions(generate_long_tail(**generator_arguments(config)),
                                config.synthetic.session_length, config.synthetic.seed)
        frame, order = _sessions_frame(views), "session time"
        report = LoadReport(source=str(path), rows_read=len(views), rows_kept=len(views),
                            rows_dropped=0)
    else:
        untimed = config.time_column is None
        if config.source == "dataframe":
            frame = select_columns(interactions, config.user_column, config.item_column,
                                   config.time_column, source="interactions DataFrame")
            report = LoadReport(source="interactions DataFrame", rows_read=len(frame),
                                rows_kept=len(frame), rows_dropped=0)
        else:
            path = resolve_data_path(config.path)
            untimed = untimed or resolved_format(path, config.file_format) == "sasrec"
            frame, report = load_interactions(path, file_format=config.file_format,
                                              user_column=config.user_column,
                                              item_column=config.item_column,
                                              time_column=config.time_column)
        frame = validate_interactions(frame)
        if config.time_order == "round-robin" or (config.time_order == "auto" and untimed):
            frame, order = round_robin(frame), "round-robin"
    split = chronological_split(frame[["user_id", "item_id", "timestamp"]], TRAIN_FRACTION,
                                VALIDATION_FRACTION, history_len)
    item_clusters = None if clusters is None else clusters.cluster_of(split.item_ids)
    return ChronologicalData(split, report, order, item_clusters)
