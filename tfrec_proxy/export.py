"""Run folders: export a trained model for serving, load it back, retrieve top-k.

A run folder (`saved_models/<run>/`) holds:

* `manifest.json`: format version, model kind, dimensions, vocabulary size, max k,
  library/TensorFlow versions, creation time, the list of files.
* `config.json`: the `RunConfig` the model was built and trained with.
* `vocabulary.json`: raw item id <-> index.
* `weights/`: a TensorFlow checkpoint of the Keras model (to re-export or resume).
* `query_model/`: SavedModel; `serving_default(history: int64 [B, L])` ->
  `{"embedding": float32 [B, d]}`. Histories are raw item ids, padded with -1 on
  either side; unknown ids map to the OOV index; the most recent `max_len` items
  are used.
* `candidates.npz`: `ids` (int64 [N] raw item ids) and `embeddings` (float32 [N, d]).
* `retrieval/scann/` and `retrieval/brute_force/`: SavedModels (ScaNN only for
  catalogues of at least 16 items; the manifest lists the indexes) with
  `serving_default(history: int64 [B, L], k: int32 [])` ->
  `{"ids": int64 [B, k], "scores": float32 [B, k]}`, `1 <= k <= max_k`.
* `metrics.json` (optional): evaluation results.

The folder is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written folder that looks valid. `load_run` is the one loader for every
run kind and refuses incomplete folders and unknown format versions.
"""

import datetime
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import ExportConfig, RunConfig
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.version import __version__

try:
    # Importing scann_ops registers the `Scann>*` custom ops; they must be registered
    # before `tf.saved_model.load` reads a ScaNN SavedModel ("Op type not registered").
    from scann import scann_ops  # noqa: F401
except ImportError as error:  # pragma: no cover - scann is a pinned dependency
    raise ImportError("tfrec_proxy needs scann==1.4.2 (pip install scann==1.4.2).") from error

FORMAT = "tfrec_proxy.run"
FORMAT_VERSION = 1
PAD_ID = -1
INDEXES = ("scann", "brute_force")  # in order of preference
REQUIRED_FILES = ("manifest.json", "config.json", "vocabulary.json", "candidates.npz",
                  "query_model/saved_model.pb", "weights/checkpoint")
# ScaNN's asymmetric hashing trains 16 centres per block and refuses fewer data points
# ("Number of clusters per block (16) is greater than ... training data size"); smaller
# catalogues get the exact brute-force index only.
MIN_SCANN_CANDIDATES = 16


class RunFormatError(ValueError):
    """A folder is not a valid, complete run export."""


def pack_histories(indices: tf.Tensor, max_len: int) -> tf.Tensor:
    """Left-aligns histories of item indices the way the query tower expects.

    Args:
        indices: `[B, L']` int32 item indices, 0 = padding anywhere in the row.
        max_len: History length L fed to the query tower.

    Returns:
        `[B, max_len]` int32: each row's non-padding items in order, the most recent
        `max_len` of them, left-padded with 0.
    """
    items = tf.ragged.boolean_mask(indices, tf.not_equal(indices, 0))
    items = items[:, -max_len:]
    lengths = items.row_lengths()
    right_padded = items.to_tensor(default_value=0, shape=[None, max_len])
    reversed_items = tf.reverse_sequence(right_padded, lengths, seq_axis=1, batch_axis=0)
    return tf.reverse(reversed_items, axis=[1])


class _QueryModule(tf.Module):
    """Raw item-id histories -> query embeddings (vocabulary lookup inside the graph)."""

    def __init__(self, query_tower: tf.keras.layers.Layer, vocab: Vocabulary,
                 max_len: int) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.max_len = max_len
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab.ids, tf.int64),
                tf.range(2, vocab.size, dtype=tf.int64)),
            default_value=Vocabulary.OOV)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="history")])
    def embed(self, history: tf.Tensor) -> Dict[str, tf.Tensor]:
        indices = tf.where(tf.equal(history, PAD_ID), tf.constant(0, tf.int64),
                           self.table.lookup(history))
        packed = pack_histories(tf.cast(indices, tf.int32), self.max_len)
        tf.debugging.assert_positive(
            tf.reduce_sum(tf.cast(packed > 0, tf.int32), axis=1),
            message="every history needs at least one item id (-1 is padding)")
        return {"embedding": self.query_tower(packed, training=False)}


class _RetrievalModule(tf.Module):
    """Raw histories + k -> top-k raw item ids and scores from a TFRS index layer."""

    def __init__(self, query: _QueryModule, index: tfrs.layers.factorized_top_k.TopK,
                 max_k: int) -> None:
        super().__init__()
        self.query = query
        self.index = index
        self.max_k = max_k

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="history"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def retrieve(self, history: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
        tf.debugging.assert_positive(k, message="k must be >= 1")
        tf.debugging.assert_less_equal(
            k, self.max_k, message=f"k must be <= max_k={self.max_k} fixed at export")
        queries = self.query.embed(history)["embedding"]
        # The index always retrieves max_k; the caller's k is a slice of that list,
        # so one SavedModel serves every k up to max_k.
        scores, ids = self.index(queries, k=self.max_k)
        return {"ids": ids[:, :k], "scores": scores[:, :k]}


def scann_parameters(num_candidates: int, config: ExportConfig, max_k: int) -> Dict[str, int]:
    """ScaNN tree/reorder settings by catalogue size (explicit config values win).

    ~sqrt(N) leaves, a tenth of them searched (at least 10 or all), and 4 x max_k
    candidates re-scored exactly.
    """
    leaves = config.scann_num_leaves or max(1, min(num_candidates, round(math.sqrt(num_candidates))))
    to_search = config.scann_leaves_to_search or min(leaves, max(10, math.ceil(leaves / 10)))
    reorder = config.scann_reorder or min(num_candidates, 4 * max_k)
    return {"num_leaves": leaves, "num_leaves_to_search": to_search,
            "num_reordering_candidates": max(reorder, max_k)}


def export_run(model: tf.keras.Model, run_dir: Union[str, Path], *, vocab: Vocabulary,
               config: RunConfig, metrics: Optional[Dict[str, Any]] = None,
               overwrite: bool = False) -> Path:
    """Writes a complete run folder (see the module docstring), atomically.

    Args:
        model: A trained `RetrievalModel`.
        run_dir: Destination folder.
        vocab: The item vocabulary the model was trained with.
        config: The run's configuration (`config.export` sets max k and ScaNN).
        metrics: Optional evaluation results to store in `metrics.json`.
        overwrite: Replace an existing folder (else an existing folder is an error).

    Returns:
        The run folder's path.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise FileExistsError(f"Run folder {str(run_dir)!r} exists; pass overwrite=True "
                              "or choose another run name.")
    if np.any(vocab.ids == PAD_ID):
        raise ValueError(f"Item id {PAD_ID} is reserved as history padding in exports; "
                         "re-index the items.")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        _write_run(model, staging, vocab, config, metrics)
        if run_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.old.", dir=run_dir.parent))
            run_dir.rename(retired / run_dir.name)
            try:
                staging.rename(run_dir)
            except OSError:
                (retired / run_dir.name).rename(run_dir)  # put the old run back
                retired.rmdir()
                raise
            shutil.rmtree(retired)
        else:
            staging.rename(run_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return run_dir


def _write_run(model: tf.keras.Model, folder: Path, vocab: Vocabulary, config: RunConfig,
               metrics: Optional[Dict[str, Any]]) -> None:
    max_len = config.data.max_len
    candidate_index = np.arange(2, vocab.size)
    embeddings = model.item_embeddings(vocab.size)[candidate_index]
    ids = vocab.ids
    max_k = min(config.export.max_k, len(ids))

    config.to_json(folder / "config.json")
    vocab.save(folder / "vocabulary.json")
    np.savez(folder / "candidates.npz", ids=ids, embeddings=embeddings)
    model.save_weights(str(folder / "weights" / "model"))

    query = _QueryModule(model.query_tower, vocab, max_len)
    tf.saved_model.save(query, str(folder / "query_model"),
                        signatures={"serving_default": query.embed})
    sample = query.embed(tf.constant([[int(ids[0])]], tf.int64))["embedding"]

    indexes = {"brute_force": tfrs.layers.factorized_top_k.BruteForce(k=max_k)}
    scann = None
    if len(ids) >= MIN_SCANN_CANDIDATES:
        scann = scann_parameters(len(ids), config.export, max_k)
        indexes["scann"] = tfrs.layers.factorized_top_k.ScaNN(
            k=max_k, num_leaves=scann["num_leaves"],
            num_leaves_to_search=scann["num_leaves_to_search"],
            num_reordering_candidates=scann["num_reordering_candidates"])
    for name, index in indexes.items():
        index.index(tf.constant(embeddings), tf.constant(ids, tf.int64))
        module = _RetrievalModule(query, index, max_k)
        tf.saved_model.save(
            module, str(folder / "retrieval" / name),
            signatures={"serving_default": module.retrieve},
            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))

    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_kind": "two_tower",
        "embedding_dim": int(embeddings.shape[1]),
        "num_interests": 1 if sample.shape.rank == 2 else int(sample.shape[1]),
        "vocab_size": vocab.size,
        "num_candidates": len(ids),
        "max_len": max_len,
        "max_k": max_k,
        "indexes": [name for name in INDEXES if name in indexes],
        "scann": scann,
        "library_version": __version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """Reads and validates a run folder's manifest.

    Raises:
        RunFormatError: the folder is missing, incomplete, or of an unknown format.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFormatError(f"Run folder {str(run_dir)!r} does not exist or is not a folder; "
                             "expected a folder written by `tfrec-proxy train`/`export`.")
    if not (run_dir / "manifest.json").exists():
        raise RunFormatError(f"{str(run_dir)!r} is not a tfrec_proxy run: missing "
                             "['manifest.json']. Export one with `tfrec-proxy train`/`export`.")
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except json.JSONDecodeError as error:
        raise RunFormatError(f"{str(run_dir / 'manifest.json')!r} is not valid JSON: "
                             f"{error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise RunFormatError(f"{str(run_dir)!r}: manifest format is {found!r}; "
                             f"expected {FORMAT!r}.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RunFormatError(f"{str(run_dir)!r}: run format version "
                             f"{manifest.get('format_version')!r} is not supported by "
                             f"tfrec_proxy {__version__}; expected {FORMAT_VERSION}.")
    indexes = manifest.get("indexes")
    if not isinstance(indexes, list) or not indexes or not set(indexes) <= set(INDEXES):
        raise RunFormatError(f"{str(run_dir)!r}: manifest lists indexes {indexes!r}; "
                             f"expected a non-empty list drawn from {list(INDEXES)}.")
    required = REQUIRED_FILES + tuple(f"retrieval/{name}/saved_model.pb" for name in indexes)
    missing = [name for name in required if not (run_dir / name).exists()]
    if missing:
        raise RunFormatError(f"{str(run_dir)!r} is not a complete tfrec_proxy run: missing "
                             f"{missing}. Re-export it with `tfrec-proxy export`.")
    return manifest


class Run:
    """A loaded run folder: embed histories and retrieve top-k items.

    Load with `load_run(path)`. Histories are raw item ids; unknown ids map to the
    OOV bucket and are counted in a warning.
    """

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.path = Path(run_dir)
        self.manifest = read_manifest(self.path)
        self.config = RunConfig.from_json(self.path / "config.json")
        self.vocab = Vocabulary.load(self.path / "vocabulary.json")
        with np.load(self.path / "candidates.npz") as candidates:
            self.candidate_ids = candidates["ids"]
            self.candidate_embeddings = candidates["embeddings"]
        self._query_model = tf.saved_model.load(str(self.path / "query_model"))
        self._indexes: Dict[str, Any] = {}

    @property
    def max_k(self) -> int:
        return int(self.manifest["max_k"])

    @property
    def indexes(self) -> List[str]:
        """The retrieval indexes this run has, best first (`"scann"`, `"brute_force"`)."""
        return list(self.manifest["indexes"])

    @property
    def default_index(self) -> str:
        """ScaNN when the run has it, else brute force."""
        return self.indexes[0]

    def _index(self, name: Optional[str]) -> Any:
        name = name or self.default_index
        if name not in self.indexes:
            raise ValueError(f"Index {name!r} is not in this run; it has {self.indexes} "
                             f"(ScaNN needs at least {MIN_SCANN_CANDIDATES} candidates).")
        if name not in self._indexes:
            self._indexes[name] = tf.saved_model.load(str(self.path / "retrieval" / name))
        return self._indexes[name]

    def histories_to_tensor(self, histories: Union[Sequence[int], Sequence[Sequence[int]]]
                            ) -> tf.Tensor:
        """Validates raw-id histories and pads them with -1 into `[B, L]` int64.

        Unknown ids are kept (the SavedModel maps them to the OOV bucket) and counted
        in a warning.

        Args:
            histories: One history (a sequence of item ids) or a batch of them.

        Raises:
            ValueError: an empty history, or an id that is NaN or not an integer.
        """
        batch = _as_batch(histories)
        flat = np.fromiter((i for history in batch for i in history), np.int64)
        _, unknown = self.vocab.lookup_with_unknown(flat)
        if unknown:
            warnings.warn(f"{unknown} of {len(flat)} history item ids are not in the run's "
                          "vocabulary; they were mapped to the out-of-vocabulary bucket.",
                          stacklevel=3)
        width = max(len(history) for history in batch)
        padded = np.full((len(batch), width), PAD_ID, np.int64)
        for row, history in enumerate(batch):
            padded[row, width - len(history):] = history
        return tf.constant(padded)

    def embed_padded(self, histories: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Query embeddings of already padded raw-id histories, through the SavedModel.

        Args:
            histories: `[B, L]` int64 raw item ids, -1 = padding.
            batch_size: Histories per SavedModel call.

        Returns:
            `[B, d]` float32 (or `[B, M, d]` for multi-interest runs).
        """
        serve = self._query_model.signatures["serving_default"]
        return np.concatenate([
            serve(history=tf.constant(histories[start:start + batch_size], tf.int64))
            ["embedding"].numpy() for start in range(0, len(histories), batch_size)])

    def embed(self, histories: Union[Sequence[int], Sequence[Sequence[int]]]) -> np.ndarray:
        """Query embeddings of raw-id histories (see `histories_to_tensor`)."""
        return self.embed_padded(self.histories_to_tensor(histories).numpy())

    def recommend(self, histories: Union[Sequence[int], Sequence[Sequence[int]]], k: int = 10,
                  index: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items for each history.

        Args:
            histories: One history (sequence of raw item ids) or a batch of them.
            k: Number of items to return, `1 <= k <= max_k` (fixed at export).
            index: `"scann"` (approximate) or `"brute_force"` (exact); default the
                run's first index (ScaNN when the catalogue has one).

        Returns:
            `(ids, scores)`: int64 `[B, k]` raw item ids and float32 `[B, k]` scores,
            best first.
        """
        check_positive_int("k", k)
        if k > len(self.candidate_ids):
            raise ValueError(f"k={k} exceeds the catalogue size ({len(self.candidate_ids)} "
                             "items); choose a smaller k.")
        if k > self.max_k:
            raise ValueError(f"k={k} exceeds max_k={self.max_k} fixed when this run was "
                             "exported; re-export with a larger --max-k.")
        retrieval = self._index(index)
        tensor = self.histories_to_tensor(histories)
        result = retrieval.signatures["serving_default"](history=tensor, k=tf.constant(k, tf.int32))
        return result["ids"].numpy(), result["scores"].numpy()


def _as_batch(histories: Any) -> List[List[int]]:
    """Normalises one history or a batch of histories to a list of int lists."""
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable):
        raise ValueError(f"history must be a sequence of integer item ids, got {histories!r}.")
    histories = list(histories)
    if not histories:
        raise ValueError("history is empty; expected at least one item id.")
    if not any(isinstance(h, (list, tuple, np.ndarray)) for h in histories):
        histories = [histories]
    batch = []
    for row, history in enumerate(histories):
        if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
            raise ValueError(f"history {row} must be a sequence of item ids, got {history!r}.")
        history = list(history)
        if not history:
            raise ValueError(f"history {row} is empty; expected at least one item id.")
        batch.append([_as_item_id(value, row) for value in history])
    return batch


def _as_item_id(value: Any, row: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"history {row}: item id {value!r} is a boolean; expected an integer.")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            raise ValueError(f"history {row}: item id is NaN; expected an integer.")
        if float(value).is_integer():
            return int(value)
    raise ValueError(f"history {row}: item id {value!r} is not an integer; expected an "
                     "integer item id.")


def load_run(run_dir: Union[str, Path]) -> Run:
    """Loads a run folder (any run kind) written by `export_run`.

    Raises:
        RunFormatError: the folder is missing, incomplete or of an unknown format.
    """
    return Run(run_dir)


def recommend(run_dir: Union[str, Path], history: Sequence[int], k: int = 10,
              index: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Loads a run and returns `(ids [k], scores [k])` for one raw-id history."""
    ids, scores = load_run(run_dir).recommend([list(history)], k=k, index=index)
    return ids[0], scores[0]
