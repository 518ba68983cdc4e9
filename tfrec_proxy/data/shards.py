"""Reading the sharded TFRecords of the Beam pipeline (`tfrec_proxy.data.beam_preprocess`)
with `tf.data`: as a stream of batches (`read_split`) or, for `DataConfig.source =
"shards"`, as the `PreparedData` that `prepare_data` would have built from the raw
files (`load_prepared`), in the same order.
"""

import json
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import pandas as pd

from tfrec_proxy.data.examples import Examples, SequenceExamples
from tfrec_proxy.data.sequences import SequenceSplit, head_item_mask, sampling_probabilities
from tfrec_proxy.data.vocab import Vocabulary

SPLIT_NAMES = ("train", "validation", "test")  # beam_preprocess.SPLIT_NAMES
SEQUENCES, USER_ITEMS = "train_sequences", "user_items"
SUMMARY_FILE, COUNTS_FILE, VOCAB_FILE = "summary.json", "item_counts.npy", "vocabulary.json"
__all__ = ["load_prepared", "read_split"]


def _spec(name: str, max_len: int) -> Dict[str, object]:
    from tfrec_proxy._tf import tf
    scalar = tf.io.FixedLenFeature([1], tf.int64)
    if name == USER_ITEMS:
        return {"user": scalar, "items": tf.io.VarLenFeature(tf.int64)}
    if name == SEQUENCES:
        return {"history": tf.io.FixedLenFeature([max_len], tf.int64),
                "targets": tf.io.FixedLenFeature([max_len], tf.int64),
                "user": scalar, "position": scalar}
    return {"history": tf.io.FixedLenFeature([max_len], tf.int64), "target": scalar,
            "user": scalar, "owner": scalar, "last_chunk": scalar, "position": scalar}


def _files(folder: Union[str, Path], name: str) -> list:
    from tfrec_proxy._tf import tf
    files = sorted(tf.io.gfile.glob(str(Path(folder) / f"{name}-*.tfrecord")))
    if not files:
        raise FileNotFoundError(f"No {name}-*.tfrecord shards in {str(folder)!r}; expected "
                                "the output folder of pipelines/beam_preprocess.py.")
    return files


def read_split(folder: Union[str, Path], name: str, batch_size: int = 1024,
               max_len: Optional[int] = None) -> "tf.data.Dataset":
    """The records of one output (`"train"`, `"validation"`, `"test"`,
    `"train_sequences"`) as a `tf.data.Dataset` of parsed batches.

    Args:
        folder: The pipeline's output folder.
        name: Which output.
        batch_size: Records per batch.
        max_len: History width L (default: the pipeline's, from `summary.json`).

    Returns:
        Batches of int64 features: `history [B, L]`, `target`/`targets`, `user`,
        `owner`, `last_chunk` and `position` (scalars as `[B]`).
    """
    from tfrec_proxy._tf import tf
    if name not in (*SPLIT_NAMES, SEQUENCES):
        raise ValueError(f"Unknown output {name!r}; expected one of "
                         f"{[*SPLIT_NAMES, SEQUENCES]}.")
    max_len = max_len or _summary(folder)["config"]["max_len"]
    spec = _spec(name, max_len)

    def parse(records: tf.Tensor) -> Dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(records, spec)
        return {key: value if key in ("history", "targets") else value[:, 0]
                for key, value in parsed.items()}

    return (tf.data.TFRecordDataset(_files(folder, name), num_parallel_reads=tf.data.AUTOTUNE)
            .batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _summary(folder: Union[str, Path]) -> Dict:
    from tfrec_proxy._tf import tf
    path = str(Path(folder) / SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist; expected the output folder of "
                                "pipelines/beam_preprocess.py.")
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def _gather(folder: Union[str, Path], name: str, max_len: int) -> Dict[str, np.ndarray]:
    """All records of one output as arrays, in the in-memory order (by user, then
    the record's position among the user's records)."""
    columns: Dict[str, list] = {}
    for batch in read_split(folder, name, batch_size=8192, max_len=max_len):
        for key, value in batch.items():
            columns.setdefault(key, []).append(value.numpy())
    if not columns:
        width = (max_len,)
        return {"history": np.zeros((0,) + width, np.int64),
                "target": np.zeros(0, np.int64), "targets": np.zeros((0,) + width, np.int64),
                "user": np.zeros(0, np.int64), "owner": np.zeros(0, np.int64),
                "last_chunk": np.zeros(0, np.int64), "position": np.zeros(0, np.int64)}
    arrays = {key: np.concatenate(values) for key, values in columns.items()}
    order = np.lexsort((arrays["position"], arrays["user"]))
    return {key: value[order] for key, value in arrays.items()}


def _examples(arrays: Dict[str, np.ndarray]) -> Examples:
    return Examples(history=arrays["history"].astype(np.int32),
                    target=arrays["target"].astype(np.int32), user=arrays["user"],
                    last_chunk=arrays["last_chunk"].astype(bool), owner=arrays["owner"])


def _user_items(folder: Union[str, Path]) -> Dict[int, np.ndarray]:
    from tfrec_proxy._tf import tf
    spec = _spec(USER_ITEMS, 1)
    found: Dict[int, np.ndarray] = {}
    for record in tf.data.TFRecordDataset(_files(folder, USER_ITEMS)).batch(4096):
        parsed = tf.io.parse_example(record, spec)
        items = tf.sparse.to_dense(parsed["items"], default_value=-1).numpy()
        for user, row in zip(parsed["user"].numpy()[:, 0], items):
            found[int(user)] = row[row >= 0].astype(np.int32)
    return dict(sorted(found.items()))


def load_prepared(folder: Union[str, Path], max_len: Optional[int] = None) -> "PreparedData":
    """The `PreparedData` of a pipeline output: the examples in `prepare_data`'s
    order, the vocabulary, item counts, logQ probabilities and head items.
    `interactions` is an empty frame (the raw log is not kept); `summary()` reads
    the pipeline's totals.

    Raises:
        FileNotFoundError: not a pipeline output folder.
        ValueError: `max_len` differs from the pipeline's, or no training example.
    """
    from tfrec_proxy._tf import tf
    from tfrec_proxy.data.prepare import PreparedData

    summary = _summary(folder)
    built = summary["config"]["max_len"]
    if max_len is not None and max_len != built:
        raise ValueError(f"The shards in {str(folder)!r} have histories of max_len={built}; "
                         f"DataConfig.max_len is {max_len}. Rerun the pipeline with "
                         "--max-len or set max_len to match.")
    with tf.io.gfile.GFile(str(Path(folder) / VOCAB_FILE)) as handle:
        vocab = Vocabulary(np.asarray(json.loads(handle.read())["ids"], np.int64))
    with tf.io.gfile.GFile(str(Path(folder) / COUNTS_FILE), "rb") as handle:
        counts = np.load(handle)
    parts = {name: _examples(_gather(folder, name, built)) for name in SPLIT_NAMES}
    if len(parts["train"]) == 0:
        raise ValueError(f"The shards in {str(folder)!r} hold no training example.")
    rows = _gather(folder, SEQUENCES, built)
    sequences = SequenceExamples(history=rows["history"].astype(np.int32),
                                 targets=rows["targets"].astype(np.int32), user=rows["user"])
    split = SequenceSplit(parts["train"], parts["validation"], parts["test"],
                          _user_items(folder), sequences)
    interactions = pd.DataFrame({"user_id": np.zeros(0, np.int64),
                                 "item_id": np.zeros(0, np.int64),
                                 "timestamp": np.zeros(0, np.int64)})
    return PreparedData(interactions, vocab, split, counts, sampling_probabilities(counts),
                        head_item_mask(counts), None, None,
                        int(summary.get("dropped_interactions", 0)),
                        totals={"interactions": int(summary.get("interactions", 0)),
                                "users": int(summary.get("users", 0))})
