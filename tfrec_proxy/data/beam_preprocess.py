"""Preprocessing beyond one machine: an Apache Beam pipeline that turns interaction
files into the examples `prepare_data` builds in memory, as sharded TFRecords.

For logs that do not fit in pandas. On the same input (a `source="file"` config)
it gives exactly the vocabulary, item frequencies, examples and splits of the
in-memory path (`tests/test_beam_preprocess.py` checks it with the DirectRunner):

1. every input file is read line by line (one worker per file, its line numbers
   kept: SASRec files and `time_column=None` take the line index as the time), each
   line parsed and checked as `load_interactions` / `validate_interactions` do
   (a malformed line or a negative id fails naming the file and line);
2. the vocabulary is the sorted distinct item ids (`Vocabulary.from_ids`);
3. per user (a `GroupByKey`), the interactions are sorted by time with ties in file
   order (`group_sequences`), cut into chunks (`split_long_sequences`, or
   `per_user_sequences` for `split="per-user"`) and split leave-one-out
   (`leave_one_out`) by the library's own functions, so both paths share one
   implementation of the protocol;
4. the item frequencies are the training targets' counts (`item_frequencies`).

Output folder (`tfrec_proxy.data.shards` reads it; `DataConfig.source = "shards"`,
`tfrec-proxy train --source shards --data-path DIR` trains on it):
`train-*.tfrecord`, `validation-*`, `test-*`, `train_sequences-*` (one
`tf.train.Example` per example or training sequence), `user_items-*` (each user's
exclusion set), `vocabulary.json`, `item_counts.npy` and `summary.json` (what was read,
kept and dropped). Each record carries its user and its position among the user's
records, so a reader restores the in-memory order.

Not covered here: Parquet tables, datetime timestamps in CSV/TSV, cold-item hold-out,
the session and synthetic sources; they are refused with a clear error.

Needs the `[beam]` extra (`pip install -e ".[beam]"`, Apache Beam 2.77.0, which
installs beside TensorFlow 2.20). Runners: `pipelines/beam_preprocess.py` passes
unknown flags to Beam (`--runner=FlinkRunner`, `SparkRunner`, `DataflowRunner`
with `--project/--region/--temp_location`); input and output may be any file
system Beam knows (`gs://`, `hdfs://`, `s3://`).
"""

import csv
import json
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tfrec_proxy.config import DataConfig
from tfrec_proxy.data.sequences import (item_frequencies, leave_one_out,
                                        per_user_sequences, split_long_sequences,
                                        user_item_sets)

SPLIT_NAMES = ("train", "validation", "test")
SEQUENCES = "train_sequences"
USER_ITEMS = "user_items"
SUMMARY_FILE = "summary.json"
COUNTS_FILE = "item_counts.npy"
VOCAB_FILE = "vocabulary.json"
_INTEGER = re.compile(r"[+-]?\d+")
_INT64 = np.iinfo(np.int64)
_TEXT_EXPECTED = {
    "movielens": "MovieLens `UserID::MovieID::Rating::Timestamp` (four integers)",
    "sasrec": "SASRec `user item` (two whitespace-separated integers)"}
__all__ = ["check_config", "parse_lines", "run_pipeline", "user_examples"]


def check_config(config: DataConfig) -> None:
    """Refuses the settings the Beam path does not implement (see the module)."""
    if config.source != "file":
        raise ValueError(f"The Beam pipeline reads interaction files (DataConfig.source="
                         f"'file'); got source {config.source!r}.")
    if config.split not in ("chunked", "per-user"):
        raise ValueError(f"The Beam pipeline builds the 'chunked' or 'per-user' split; got "
                         f"{config.split!r}.")
    if config.cold_items:
        raise ValueError("The Beam pipeline does not hold out cold items; set "
                         "DataConfig.cold_items = 0.")
    if config.file_format not in ("auto", "movielens", "sasrec", "csv", "tsv"):
        raise ValueError(f"The Beam pipeline reads movielens, sasrec, csv and tsv files; got "
                         f"file_format {config.file_format!r} (convert Parquet to CSV).")
    if config.min_len < 3:
        raise ValueError(f"DataConfig.min_len={config.min_len} is too small; expected >= 3.")


def _file_format(path: str, first_line: str, requested: str) -> str:
    if requested != "auto":
        return requested
    lower = path.lower()
    for extension, name in ((".csv", "csv"), (".tsv", "tsv")):
        if lower.endswith(extension):
            return name
    if lower.endswith((".parquet", ".pq")):
        raise ValueError(f"{path}: Parquet is not read by the Beam pipeline; convert it to "
                         "CSV.")
    if "::" in first_line:
        return "movielens"
    first = first_line.split()
    if first and _INTEGER.fullmatch(first[0]):
        return "sasrec"
    raise ValueError(f"{path}: unrecognised format (first line {first_line!r}); expected "
                     "movielens, sasrec, csv or tsv.")


def _integer(value: str, path: str, line_number: int, line: str, expected: str,
             what: str = "field") -> int:
    value = value.strip()
    if not _INTEGER.fullmatch(value) or not _INT64.min <= int(value) <= _INT64.max:
        raise ValueError(f"{path}, line {line_number}: malformed line {line!r} ({what} "
                         f"{value!r} is not an int64 integer); expected {expected}")
    return int(value)


def parse_lines(path: str, lines: Iterable[str], file_index: int, config: DataConfig
                ) -> Iterator[Tuple[int, Tuple[int, int, int, int, int]]]:
    """Parses one file's lines into `(user, (timestamp, file, line, item, user))`.

    Args:
        path: The file (named in errors).
        lines: Its lines in order (without line ends).
        file_index: The file's position among the inputs (ties in time keep file
            order, then line order).
        config: The user/item/time column names and the file format.

    Yields:
        One entry per interaction; blank lines are skipped (counted by the caller).

    Raises:
        ValueError: a malformed line or a negative id, naming the file and 1-based
            line, or a table without a header or a named column.
    """
    chosen: Optional[str] = None
    columns: Optional[Tuple[int, int, Optional[int]]] = None
    delimiter = ","
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if chosen is None:
            chosen = _file_format(path, line, config.file_format)
            if chosen in ("csv", "tsv"):
                delimiter = "," if chosen == "csv" else "\t"
                header = next(csv.reader([line], delimiter=delimiter))
                names = [config.user_column, config.item_column] + (
                    [config.time_column] if config.time_column else [])
                missing = [name for name in names if name not in header]
                if missing:
                    raise ValueError(f"{path}: missing column(s) {missing}; columns "
                                     f"present: {header}")
                columns = (header.index(config.user_column),
                           header.index(config.item_column),
                           header.index(config.time_column) if config.time_column
                           else None)
                continue
        number = index + 1
        if chosen in ("csv", "tsv"):
            fields = next(csv.reader([line], delimiter=delimiter))
            expected = f"{chosen} columns of the header"
            if len(fields) <= max(c for c in columns if c is not None):
                raise ValueError(f"{path}, line {number}: malformed line {line!r} (found "
                                 f"{len(fields)} field(s)); expected {expected}")
            user = _integer(fields[columns[0]], path, number, line, expected, "user id")
            item = _integer(fields[columns[1]], path, number, line, expected, "item id")
            # Without a time column the row order is the time order (only the order
            # matters: ties are broken by line).
            time = (_integer(fields[columns[2]], path, number, line, expected, "timestamp")
                    if columns[2] is not None else index)
        else:
            movielens = chosen == "movielens"
            fields = line.strip().split("::") if movielens else line.split()
            expected = _TEXT_EXPECTED[chosen]
            if len(fields) != (4 if movielens else 2):
                raise ValueError(f"{path}, line {number}: malformed line {line!r} (found "
                                 f"{len(fields)} field(s)); expected {expected}")
            values = [_integer(v, path, number, line, expected) for v in fields]
            user, item = values[0], values[1]
            time = values[3] if movielens and config.time_column is not None else index
        for name, value in (("user_id", user), ("item_id", item)):
            if value < 0:
                raise ValueError(f"{path}, line {number}: {name} {value} is negative; "
                                 "expected an id >= 0")
        yield user, (time, file_index, index, item, user)


def user_examples(user: int, rows: Sequence[Tuple[int, int, int, int, int]],
                  item_index: Dict[int, int], config: DataConfig
                  ) -> Dict[str, Any]:
    """One user's share of every output, by the in-memory path's functions.

    Args:
        user: The raw user id.
        rows: The user's `(timestamp, file, line, item, user)` entries, any order.
        item_index: Raw item id -> vocabulary index.
        config: `max_len`, `min_len`, `split`.

    Returns:
        `{"split": SequenceSplit or None, "items": user's exclusion set,
        "dropped": interactions in dropped chunks, "interactions": count}`.
    """
    ordered = sorted(rows)
    items = np.asarray([item_index[row[3]] for row in ordered], np.int64)
    users = np.asarray([user], np.int64)
    exclusions = user_item_sets(users, [items])
    if config.split == "per-user":
        owners, chunks, dropped = per_user_sequences(users, [items], config.max_len,
                                                     config.min_len)
    else:
        owners, chunks, dropped = split_long_sequences(users, [items], config.max_len,
                                                       config.min_len)
    split = (leave_one_out(owners, chunks, history_len=config.max_len,
                           user_items=exclusions) if len(chunks) else None)
    return {"split": split, "items": exclusions[user], "dropped": int(dropped),
            "interactions": len(items)}


def _user_examples_fn(config: DataConfig) -> Any:
    """A DoFn `(user, rows) -> (user, user_examples(...))` that builds the raw id ->
    index map once per side-input value (per worker), not once per user. (Defined
    here so that the module imports without Apache Beam.)"""
    import apache_beam as beam

    class UserExamples(beam.DoFn):
        def __init__(self) -> None:
            self._ids: Any = None
            self._index: Dict[int, int] = {}

        def process(self, entry: Tuple[int, Iterable[Any]], ids: List[int]
                    ) -> Iterator[Tuple[int, Dict[str, Any]]]:
            if self._ids is not ids:
                self._ids = ids
                # Indices 0 and 1 are padding and OOV (`Vocabulary`).
                self._index = {raw: i + 2 for i, raw in enumerate(ids)}
            user, rows = entry
            yield user, user_examples(user, list(rows), self._index, config)

    return UserExamples()


class _LineCounter:
    """Iterates a text file's lines as `load_interactions` splits them (on "\n"
    only), counting lines and blank lines."""

    def __init__(self, handle: Any) -> None:
        import io
        self.lines = self.blank = 0
        self._text = io.TextIOWrapper(handle, encoding="latin-1", newline="\n")

    def __iter__(self) -> Iterator[str]:
        for line in self._text:
            self.lines += 1
            line = line[:-1] if line.endswith("\n") else line
            if not line.strip():
                self.blank += 1
            yield line


def _read_file(entry: Tuple[int, str], config: DataConfig) -> Iterator[Any]:
    """Yields one file's parsed interactions (streamed) and, tagged `counts`, its
    line counts."""
    from apache_beam import pvalue
    from apache_beam.io.filesystems import FileSystems

    file_index, path = entry
    parsed = 0
    with FileSystems.open(path) as handle:
        lines = _LineCounter(handle)
        for value in parse_lines(path, lines, file_index, config):
            parsed += 1
            yield value
    yield pvalue.TaggedOutput("counts", {"files": 1, "lines": lines.lines,
                                         "blank_lines": lines.blank,
                                         "interactions": parsed})


def _int_feature(values: Iterable[int]) -> Any:
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _serialise(features: Dict[str, Iterable[int]]) -> bytes:
    import tensorflow as tf
    return tf.train.Example(features=tf.train.Features(feature={
        name: _int_feature(values) for name, values in features.items()})).SerializeToString()


def _records(user: int, result: Dict[str, Any]) -> Iterator[Tuple[str, bytes]]:
    """`(output name, serialised tf.train.Example)` of one user's result."""
    split = result["split"]
    yield USER_ITEMS, _serialise({"user": [user], "items": result["items"]})
    if split is None:
        return
    for name in SPLIT_NAMES:
        examples = getattr(split, name)
        for row in range(len(examples)):
            yield name, _serialise({
                "history": examples.history[row], "target": [examples.target[row]],
                "user": [examples.user[row]], "owner": [examples.owner[row]],
                "last_chunk": [int(examples.last_chunk[row])], "position": [row]})
    sequences = split.train_sequences
    for row in range(len(sequences)):
        yield SEQUENCES, _serialise({
            "history": sequences.history[row], "targets": sequences.targets[row],
            "user": [sequences.user[row]], "position": [row]})


def _write_json(path: str, value: Any) -> None:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(value).encode("utf-8"))


def _write_counts(path: str, counts: np.ndarray) -> None:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(path) as handle:
        np.save(handle, counts)


def run_pipeline(config: DataConfig, inputs: Sequence[str], output: str,
                 num_shards: int = 0, beam_args: Sequence[str] = ()) -> None:
    """Runs the pipeline (see the module docstring).

    Args:
        config: The data settings (`source="file"`, `file_format`, column names,
            `split`, `max_len`, `min_len`).
        inputs: Interaction files or glob patterns, in the order that breaks time
            ties (`FileSystems.match` order within a pattern: sorted).
        output: The output folder (created; any Beam file system).
        num_shards: Shards per output (0: the runner decides).
        beam_args: Beam pipeline options, e.g. `["--runner=DirectRunner"]`.

    Raises:
        ValueError: an unsupported setting, no input file, or bad input (named).
    """
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    check_config(config)
    files: List[str] = []
    for pattern in inputs:
        matched = sorted(m.path for result in FileSystems.match([pattern])
                         for m in result.metadata_list)
        if not matched:
            raise ValueError(f"No interaction file matches {pattern!r}.")
        files.extend(matched)
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    join = FileSystems.join

    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        read = (pipeline | "Files" >> beam.Create(list(enumerate(files)))
                | "Read" >> beam.FlatMap(_read_file, config).with_outputs(
                    "counts", main="interactions"))
        interactions = read.interactions
        vocabulary = (interactions | "Items" >> beam.Map(lambda kv: kv[1][3])
                      | "Distinct" >> beam.Distinct()
                      | "Sorted" >> beam.combiners.ToList()
                      | "Sort" >> beam.Map(sorted))
        per_user = (
            interactions | "ByUser" >> beam.GroupByKey()
            | "Examples" >> beam.ParDo(_user_examples_fn(config),
                                       ids=beam.pvalue.AsSingleton(vocabulary)))
        records = per_user | "Records" >> beam.FlatMap(lambda kv: _records(*kv))
        for name in (*SPLIT_NAMES, SEQUENCES, USER_ITEMS):
            (records | f"Pick {name}" >> beam.Filter(lambda r, n=name: r[0] == n)
             | f"Bytes {name}" >> beam.Map(lambda r: r[1])
             | f"Write {name}" >> beam.io.WriteToTFRecord(
                 join(output, name), file_name_suffix=".tfrecord", num_shards=num_shards))
        targets = (per_user | "Targets" >> beam.FlatMap(
            lambda kv: [] if kv[1]["split"] is None else kv[1]["split"].train.target.tolist())
            | "Count" >> beam.combiners.Count.PerElement()
            | "CountList" >> beam.combiners.ToList())
        _ = (vocabulary | "WriteVocabulary" >> beam.Map(
            lambda ids: _write_json(join(output, VOCAB_FILE), {"ids": [int(i) for i in ids]})))
        _ = (targets | "WriteCounts" >> beam.Map(
            lambda pairs, ids: _write_counts(join(output, COUNTS_FILE), _dense_counts(
                pairs, len(ids) + 2)), ids=beam.pvalue.AsSingleton(vocabulary)))
        users = (per_user | "UserTotals" >> beam.Map(lambda kv: {
            "users": 1, "kept_users": int(kv[1]["split"] is not None),
            "dropped_interactions": kv[1]["dropped"],
            **{f"{name}_examples": 0 if kv[1]["split"] is None
               else len(getattr(kv[1]["split"], name)) for name in SPLIT_NAMES}})
            | "SumUsers" >> beam.CombineGlobally(_sum_dicts))
        files_total = read.counts | "SumFiles" >> beam.CombineGlobally(_sum_dicts)
        _ = (users | "WriteSummary" >> beam.Map(
            lambda totals, read_totals, ids: _write_json(join(output, SUMMARY_FILE), {
                **read_totals, **totals, "items": len(ids), "files": files,
                "config": {"split": config.split, "max_len": config.max_len,
                           "min_len": config.min_len}}),
            read_totals=beam.pvalue.AsSingleton(files_total),
            ids=beam.pvalue.AsSingleton(vocabulary)))


def _dense_counts(pairs: Iterable[Tuple[int, int]], size: int) -> np.ndarray:
    """`item_frequencies` of the training targets from their `(item, count)` pairs."""
    targets = np.repeat(np.asarray([p[0] for p in pairs], np.int64),
                        np.asarray([p[1] for p in pairs], np.int64))
    return item_frequencies(targets, size)


def _sum_dicts(dicts: Iterable[Dict[str, int]]) -> Dict[str, int]:
    total: Dict[str, int] = {}
    for entry in dicts:
        for key, value in entry.items():
            total[key] = total.get(key, 0) + value
    return total
