"""Data preparation for a run: interactions -> vocabulary -> leave-one-out sequences.

One path for every data source (the synthetic generator, an interaction file or a
pandas frame), so training, evaluation and re-export of a run see exactly the same
split.
"""

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data.cold_items import choose_cold_items, hold_out_items
from tfrec_proxy.data.examples import Examples
from tfrec_proxy.data.frames import LoadReport, validate_interactions
from tfrec_proxy.data.item_features import (ItemFeatureSpec, ItemFeatures,
                                            item_features_for_vocab, load_item_features,
                                            synthetic_item_spec, synthetic_item_table)
from tfrec_proxy.data.loaders import DATA_FILE_NAMES, default_data_dir, load_interactions
from tfrec_proxy.data.sessions import load_sessions, split_sessions
from tfrec_proxy.data.sequences import (SequenceSplit, group_sequences, per_user_sequences,
                                        head_item_mask, item_frequencies, leave_one_out,
                                        sampling_probabilities, split_long_sequences,
                                        user_item_sets)
from tfrec_proxy.data.synthetic import SyntheticData, generate_long_tail, to_sessions
from tfrec_proxy.data.synthetic_timeline import interleave_timeline, resolve_timeline
from tfrec_proxy.data.tables import select_columns
from tfrec_proxy.data.vocab import Vocabulary

DATA_SOURCES = ("synthetic", "file", "dataframe", "sessions", "synthetic-sessions",
                "shards")
SPLITS = ("chunked", "per-user", "chronological")
DIGINETICA_SAMPLE = "diginetica-sample/sample_train-item-views.csv"
CHUNKS = ("all", "last")


@dataclasses.dataclass
class PreparedData:
    """Everything a run needs from its data.

    Attributes:
        interactions: Validated `user_id, item_id, timestamp` frame.
        vocab: Item vocabulary (all items in `interactions`).
        split: Leave-one-out train/validation/test examples.
        item_counts: `[V]` training-target counts per item index.
        sampling_probability: `[V]` in-batch sampling probability (logQ).
        head_items: `[V]` bool, the 20% most frequent items (IDW §4.2).
        report: Load report for file and data frame sources, None for synthetic data.
        item_clusters: `[V]` ground-truth cluster per item index for synthetic data
            (-1 for padding/OOV), None for files and data frames.
        dropped_interactions: Interactions in chunks too short to keep.
        item_features: Item attributes/context aligned with the vocabulary
            (`DataConfig.item_features`, or the synthetic generator's attributes),
            None when there are none.
        cold_items: bool `[V]`, the items held out of training entirely
            (`DataConfig.cold_items`), None when none are.
        cold: The cold examples (warm history -> a held-out item), or None.
        test_unseen: bool `[N_test]` for the session task: the test targets that do
            not occur earlier in their session (ProxySR's next-unseen-item task;
            split `"test_unseen"`), None otherwise.
        totals: `{"interactions", "users"}` for `summary()` when `interactions` is
            not kept (`source="shards"`), else None.
    """

    interactions: pd.DataFrame
    vocab: Vocabulary
    split: SequenceSplit
    item_counts: np.ndarray
    sampling_probability: np.ndarray
    head_items: np.ndarray
    report: Optional[LoadReport]
    item_clusters: Optional[np.ndarray]
    dropped_interactions: int
    item_features: Optional[ItemFeatures] = None
    cold_items: Optional[np.ndarray] = None
    cold: Optional[Examples] = None
    test_unseen: Optional[np.ndarray] = None
    totals: Optional[Dict[str, int]] = None

    def examples(self, name: str, chunks: str = "all") -> Examples:
        """The `"train"`, `"validation"`, `"test"` (or, with cold items, `"cold"`)
        examples.

        Args:
            name: The split.
            chunks: `"all"` chunks' examples, or only those of each user's `"last"`
                (most recent) chunk, whose held-out items no training target follows.

        Returns:
            The examples (`[N, L]` histories), for `"last"` the
            last-chunk rows, in the same order.
        """
        splits = {"train": self.split.train, "validation": self.split.validation,
                  "test": self.split.test}
        if self.cold is not None:
            splits["cold"] = self.cold
        if self.test_unseen is not None:
            splits["test_unseen"] = self.split.test.select(self.test_unseen)
        if name not in splits:
            raise ValueError(f"Unknown split {name!r}; expected one of {sorted(splits)}.")
        if chunks not in CHUNKS:
            raise ValueError(f"Unknown chunks {chunks!r}; expected one of {list(CHUNKS)}.")
        examples = splits[name]
        return examples if chunks == "all" else examples.select(examples.last_chunk)

    def summary(self) -> Dict[str, int]:
        cold = {} if self.cold is None else {
            "cold_items": int(self.cold_items.sum()), "cold_examples": len(self.cold)}
        totals = self.totals or {"interactions": len(self.interactions),
                                 "users": int(self.interactions["user_id"].nunique())}
        return {**cold, "interactions": totals["interactions"], "users": totals["users"],
                "items": len(self.vocab.ids),
                "train_examples": len(self.split.train),
                "validation_examples": len(self.split.validation),
                "test_examples": len(self.split.test),
                "dropped_interactions": self.dropped_interactions}


def resolve_data_path(path: Optional[str]) -> Path:
    """The user's path, or the shared MovieLens-1M copy when none is given."""
    if path:
        return Path(path)
    shared = default_data_dir()
    if shared is None or not (shared / "ml-1m").exists():
        raise FileNotFoundError("No data path given and no ../shared/data/ml-1m copy found; "
                                "pass --data-path pointing at an interaction file "
                                "(ratings.dat, ml-1m.txt, or a CSV/TSV/Parquet table).")
    return shared / "ml-1m"


def prepare_data(config: DataConfig,
                 interactions: Optional[pd.DataFrame] = None) -> PreparedData:
    """Loads, generates or takes interactions and builds the leave-one-out split.

    Args:
        config: Data settings: `source` (`"synthetic"`, `"file"` or `"dataframe"`),
            `path` and `file_format` for files, `user_column` / `item_column` /
            `time_column` for tables and frames, generator parameters, `max_len`.
        interactions: For `source="dataframe"` (and only then), the interactions,
            one per row, with the config's user/item/time column names (integer ids;
            `time_column=None` uses the row order as time order).

    Returns:
        The prepared data.

    Raises:
        ValueError: bad `min_len` or `source`; a frame given with a source other than
            `"dataframe"` (the run's config would not describe its data), or none
            given with `"dataframe"`; unreadable or unusable interactions.
        TypeError: `interactions` is not a pandas DataFrame.
    """
    if config.min_len < 3:
        raise ValueError(f"DataConfig.min_len={config.min_len} is too small; expected >= 3 "
                         "(validation and test targets each need a history).")
    if config.split not in SPLITS:
        raise ValueError(f"Unknown split {config.split!r}; expected one of {list(SPLITS)}.")
    if config.split == "chronological":
        raise ValueError("DataConfig.split='chronological' is FELRec's protocol (one time "
                         "line, 80/10/10); it is prepared by "
                         "tfrec_proxy.data.felrec_data.prepare_chronological for "
                         "ModelConfig.encoder='felrec' (--encoder felrec), not by "
                         "prepare_data.")
    if config.source not in DATA_SOURCES:
        raise ValueError(f"Unknown data source {config.source!r}; expected one of "
                         f"{DATA_SOURCES}.")
    if interactions is not None and config.source != "dataframe":
        raise ValueError(f"An interactions frame was given but DataConfig.source is "
                         f"{config.source!r}; set source='dataframe' to use the frame (the "
                         "run config records where its data came from).")
    if interactions is None and config.source == "dataframe":
        raise ValueError("DataConfig.source='dataframe' needs the interactions: pass "
                         "prepare_data(config, interactions=frame) (a pandas DataFrame with "
                         "the config's user/item/time columns); a frame cannot be re-read "
                         "from the config, so evaluate such a run on a file with "
                         "source='file'.")
    if config.source in ("sessions", "synthetic-sessions"):
        return prepare_sessions(config)
    if config.source == "shards":  # the Beam pipeline's output (data.beam_preprocess)
        return _prepare_shards(config)
    report = None
    clusters_by_id = None
    synthetic = None
    if config.source == "synthetic":
        synthetic = generate_synthetic(config)
        interactions = synthetic.interactions
        clusters_by_id = synthetic
    elif config.source == "dataframe":
        source = "interactions DataFrame"
        interactions = select_columns(interactions, config.user_column, config.item_column,
                                      config.time_column, source=source)
        report = LoadReport(source=source, rows_read=len(interactions),
                            rows_kept=len(interactions), rows_dropped=0)
    else:
        interactions, report = load_interactions(
            resolve_data_path(config.path), file_format=config.file_format,
            user_column=config.user_column, item_column=config.item_column,
            time_column=config.time_column)
    interactions = validate_interactions(interactions)

    vocab = Vocabulary.from_ids(interactions["item_id"].to_numpy())
    users, sequences = group_sequences(interactions, vocab)
    # Every item a user touched, dropped short chunks included, is excluded from the
    # sampled negatives ("items the user has not interacted with", IDW §4.2).
    user_items = user_item_sets(users, sequences)
    cold_items = cold = None
    if config.cold_items:
        cold_items = choose_cold_items(sequences, vocab.size, config.cold_items,
                                       config.cold_seed)
        sequences, cold = hold_out_items(users, sequences, cold_items, config.max_len)
    if config.split == "per-user":
        chunk_users, chunks, dropped = per_user_sequences(users, sequences, config.max_len,
                                                          config.min_len)
    else:
        chunk_users, chunks, dropped = split_long_sequences(users, sequences,
                                                            config.max_len, config.min_len)
    if not chunks:
        raise ValueError(f"No user sequence has at least DataConfig.min_len={config.min_len} "
                         "items; nothing to train on.")
    split = leave_one_out(chunk_users, chunks, history_len=config.max_len,
                          user_items=user_items)
    if len(split.train) == 0:
        raise ValueError("No training examples: every kept sequence has exactly 3 items, "
                         "which give only a validation and a test target; a training "
                         "example needs a sequence of at least 4 items.")
    counts = item_frequencies(split.train.target, vocab.size)
    item_clusters = None
    if clusters_by_id is not None:
        item_clusters = np.full(vocab.size, -1, np.int64)
        item_clusters[2:] = clusters_by_id.cluster_of(vocab.ids)
    return PreparedData(interactions, vocab, split, counts, sampling_probabilities(counts),
                        head_item_mask(counts), report, item_clusters, dropped,
                        _item_features(config, vocab, synthetic), cold_items, cold)


def _prepare_shards(config: DataConfig) -> PreparedData:
    from tfrec_proxy.data.shards import load_prepared
    if not config.path:
        raise ValueError("DataConfig.source='shards' needs DataConfig.path (--data-path): "
                         "the output folder of pipelines/beam_preprocess.py.")
    if config.cold_items:
        raise ValueError("DataConfig.source='shards' holds no cold items; set "
                         "cold_items = 0.")
    data = load_prepared(config.path, max_len=config.max_len)
    data.item_features = _item_features(config, data.vocab, None)
    return data


def session_data_path(path: Optional[str]) -> Path:
    """The user's session log, or the shared Diginetica sample when none is given."""
    if path:
        return Path(path)
    shared = default_data_dir()
    sample = None if shared is None else shared / DIGINETICA_SAMPLE
    if sample is None or not sample.exists():
        raise FileNotFoundError("No session log given and no ../shared/data/"
                                f"{DIGINETICA_SAMPLE} found; pass --data-path FILE "
                                "(session_id;user_id;item_id;timeframe;eventdate rows).")
    return sample


CLOCK_FIELDS = ("timeline", "activity_span", "late_users", "late_items")


def generator_arguments(config: DataConfig) -> Dict[str, Any]:
    """`generate_long_tail`'s arguments from `config.synthetic` (less the session mode's
    `session_length` and the clock's settings, `CLOCK_FIELDS`)."""
    arguments = dataclasses.asdict(config.synthetic)
    for name in ("session_length",) + CLOCK_FIELDS:
        arguments.pop(name)
    return arguments


def generate_synthetic(config: DataConfig) -> SyntheticData:
    """The synthetic clicks of `config`, on the clock `config.synthetic.timeline`
    resolves to (`tfrec_proxy.data.synthetic_timeline`; per-user positions unless
    interleaved)."""
    synthetic = config.synthetic
    timeline = resolve_timeline(synthetic.timeline, config.split)
    if timeline == "per-user" and (synthetic.late_users or synthetic.late_items):
        raise ValueError(f"synthetic late_users={synthetic.late_users} / late_items="
                         f"{synthetic.late_items} need the interleaved clock; got timeline "
                         f"{synthetic.timeline!r} (per-user positions) for split "
                         f"{config.split!r}: set timeline='interleaved' (--timeline).")
    data = generate_long_tail(**generator_arguments(config))
    if timeline == "interleaved":
        data = interleave_timeline(data, synthetic.activity_span, synthetic.late_users,
                                   synthetic.late_items, synthetic.seed)
    return data


def prepare_sessions(config: DataConfig) -> PreparedData:
    """The session task (ProxySR §4.1, `tfrec_proxy.data.sessions`): a session log
    split 8:1:1 by session start, items seen fewer than `min_item_count` times and
    sessions shorter than `min_len` dropped, validation/test items unknown to training
    removed; every position of a session is a next-item example (histories of the
    last `max_len` items). Examples carry the session id as their `user` (the
    negatives and exclusions are per session) and the session's user as their
    `owner` (-1 anonymous; read by ProxySR's eq. 10 user bias)."""
    if config.source == "synthetic-sessions":
        path = "synthetic-sessions"
        frame = to_sessions(generate_long_tail(**generator_arguments(config)),
                            config.synthetic.session_length, config.synthetic.seed)
    else:
        path = session_data_path(config.path)
        frame = load_sessions(path)
    split = split_sessions(frame, min_item_count=config.min_item_count,
                           min_session_length=config.min_len, max_len=config.max_len,
                           source=str(path))
    vocab = split.vocab

    def per_session(part) -> Examples:
        return Examples(history=part.examples.history, target=part.examples.target,
                        user=part.session.astype(np.int64), owner=part.examples.user)

    train, validation, test = (per_session(part) for part in
                               (split.train, split.validation, split.test))
    user_items: Dict[int, np.ndarray] = {}
    for part in (train, validation, test):
        for session in np.unique(part.user):
            rows = part.user == session
            items = np.concatenate([part.target[rows], part.history[rows].ravel()])
            user_items[int(session)] = np.unique(items[items >= 2]).astype(np.int32)
    sequences = dataclasses.replace(split.train_sequences)
    sequence_split = SequenceSplit(train, validation, test, user_items, sequences)
    counts = item_frequencies(train.target, vocab.size)
    interactions = pd.DataFrame({"user_id": frame["session_id"].to_numpy(),
                                 "item_id": frame["item_id"].to_numpy(),
                                 "timestamp": frame["time"].to_numpy()})
    report = LoadReport(source=str(path), rows_read=int(split.counts["views_read"]),
                        rows_kept=int(split.counts["views_read"]
                                      - split.counts["rare_views_dropped"]
                                      - split.counts["short_session_views_dropped"]),
                        rows_dropped=int(split.counts["rare_views_dropped"]
                                         + split.counts["short_session_views_dropped"]))
    return PreparedData(interactions, vocab, sequence_split, counts,
                        sampling_probabilities(counts), head_item_mask(counts), report,
                        None, int(split.counts["short_session_views_dropped"]),
                        test_unseen=np.asarray(split.test.unseen, bool))


def trained_positions(config: DataConfig) -> int:
    """The most items a training history holds: `max_len` with the per-user split,
    `max_len - 3` with chunks of at most `max_len` (their last two items held out)."""
    return config.max_len if config.split == "per-user" else max(1, config.max_len - 3)


def item_features_path(config: DataConfig) -> Optional[Path]:
    """The item feature table a config reads: `config.item_features`, or for a file
    source without one `<data file>.items.tsv` beside the interactions when it exists
    (e.g. `ml-1m.txt.items.tsv`, ML-1M's genres); None for none."""
    if config.item_features:
        return Path(config.item_features)
    if config.source != "file":
        return None
    path = resolve_data_path(config.path)
    files = [path / name for name in DATA_FILE_NAMES] if path.is_dir() else [path]
    for file in files:
        beside = file.with_name(file.name + ".items.tsv")
        if file.exists() and beside.exists():
            return beside
    return None


def _item_features(config: DataConfig, vocab: Vocabulary,
                   synthetic: Optional[SyntheticData]) -> Optional[ItemFeatures]:
    spec = ItemFeatureSpec.from_dict(config.item_feature_spec) \
        if config.item_feature_spec else None
    path = item_features_path(config)
    if path is not None:
        return load_item_features(path, vocab, spec)
    if synthetic is not None and synthetic.item_attributes is not None:
        ids = np.arange(1, len(synthetic.item_attributes) + 1)
        table = synthetic_item_table(ids, synthetic.item_attributes)
        synthetic_spec = synthetic_item_spec(width=synthetic.item_attributes.shape[1])
        return item_features_for_vocab(table, vocab, spec or synthetic_spec,
                                       source="synthetic item attributes")
    return None
