"""Serving a run folder: load it, embed histories, retrieve top-k items.

`load_run` is the one loader for every run kind; it checks the manifest (format
version, every listed file) and refuses incomplete folders. Histories are checked by
`tfrec_proxy.history_input` (`HistoryError`, `UnknownItemsWarning`, re-exported
here). Importing this module registers ScaNN's custom TensorFlow ops, which the ScaNN
SavedModel needs.
"""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.history_input import (HistoryError, _as_batch, _raise_unknown,
                                       _warn_unknown)
from tfrec_proxy.history_input import UnknownItemsWarning  # noqa: F401 (re-exported)
from tfrec_proxy.run_format import (MIN_SCANN_CANDIDATES, PAD_ID, RunFormatError, corrupted,
                                    read_arrays, read_manifest)

try:
    # Importing scann_ops registers the `Scann>*` custom ops; they must be registered
    # before `tf.saved_model.load` reads a ScaNN SavedModel ("Op type not registered").
    from scann import scann_ops  # noqa: F401
except ImportError as error:  # pragma: no cover - scann is a pinned dependency
    raise ImportError("tfrec_proxy needs scann==1.4.2 (pip install scann==1.4.2).") from error


Histories = Union[Sequence[int], Sequence[Sequence[int]]]


class SavedScorer:
    """A run's scorer, applied through its query SavedModel's signatures.

    Same interface as `tfrec_proxy.scoring.Scorer` (`score_matrix`,
    `score_candidates`), so evaluation of an exported run uses exactly the scorer (and
    its trained weights) that the run serves with.
    """

    def __init__(self, query_model: Any) -> None:
        self._matrix = query_model.signatures["score_matrix"]
        self._candidates = query_model.signatures["score_candidates"]

    def score_matrix(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """`[B, (M,) d]` x `[C, d]` -> `[B, C]`."""
        return self._matrix(queries=tf.cast(queries, tf.float32),
                            candidates=tf.cast(candidates, tf.float32))["scores"]

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """`[B, (M,) d]` x `[B, K, d]` -> `[B, K]`."""
        return self._candidates(queries=tf.cast(queries, tf.float32),
                                candidates=tf.cast(candidates, tf.float32))["scores"]


def load_saved_model(path: Union[str, Path]) -> Any:
    """`tf.saved_model.load` of one of a run's SavedModels; a damaged one (a graph
    that does not parse, variables that fail their checksum) is a `RunFormatError`
    naming the folder instead of TensorFlow's error."""
    try:
        return tf.saved_model.load(str(path))
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as error:
        raise corrupted(path, error) from error


class Run:
    """A loaded run folder: embed histories and retrieve top-k items.

    Load with `load_run(path)`. Histories are raw item ids, oldest first (-1 is
    padding); ids the run's vocabulary lacks map to the out-of-vocabulary embedding
    and are counted in an `UnknownItemsWarning` (`strict=True` makes them errors;
    `unknown_ids` lists them).
    """

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.path = Path(run_dir)
        self.manifest = read_manifest(self.path)
        try:
            self.config = RunConfig.from_json(self.path / "config.json")
            self.vocab = Vocabulary.load(self.path / "vocabulary.json")
        except ValueError as error:  # named by the readers; one error type for the run
            raise RunFormatError(str(error)) from error
        self._query_model = load_saved_model(self.path / "query_model")
        self.scorer = SavedScorer(self._query_model)
        self._load_candidates()

    def _load_candidates(self) -> None:
        """Reads the catalogue: the indexed candidates, then the exact delta segment
        of items added since the last index build (`tfrec_proxy.new_items`)."""
        from tfrec_proxy.new_items import delta_segment

        stored = read_arrays(self.path / "candidates.npz", ["ids", "embeddings"])
        ids, embeddings = stored["ids"], stored["embeddings"]
        self.delta = delta_segment(self.path, self.manifest)
        if self.delta is not None:
            ids = np.concatenate([ids, self.delta.ids])
            embeddings = np.concatenate([embeddings, self.delta.embeddings])
        self.candidate_ids, self.candidate_embeddings = ids, embeddings
        self._indexes: Dict[str, Any] = {}

    def add_items(self, item_ids: Sequence[int], attributes: Any,
                  context: Optional[np.ndarray] = None, *, rebuild: Optional[bool] = None
                  ) -> Dict[str, Any]:
        """Adds items never seen in training, embedded from their attributes by the
        run's item tower (PIR), so `recommend` can return them (also in other
        processes that load the folder afterwards). See
        `tfrec_proxy.new_items.add_items` for the arguments and the atomic update.

        Example:

            run = load_run("saved_models/pir")
            run.add_items([5001, 5002], pd.DataFrame({"genres": ["Comedy", "Drama"]}))
            ids, scores = run.recommend([[12, 40, 7]], k=10)  # may hold 5001, 5002
        """
        from tfrec_proxy.new_items import add_items

        report = add_items(self.path, item_ids, attributes, context, rebuild=rebuild)
        self.manifest = read_manifest(self.path)
        self._load_candidates()
        return report

    @property
    def items_added(self) -> int:
        """Items added since training (`add_items`), indexed or in the delta."""
        return int((self.manifest.get("added_items") or {}).get("count", 0))

    @property
    def model_kind(self) -> str:
        """The registered model kind that produced this run."""
        return str(self.manifest.get("model_kind", "two_tower"))

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
            self._indexes[name] = load_saved_model(self.path / "retrieval" / name)
        return self._indexes[name]

    def unknown_ids(self, histories: Histories) -> List[List[int]]:
        """The item ids of each history that the run's vocabulary does not know.

        Args:
            histories: One history (a sequence of raw item ids) or a batch of them.

        Returns:
            One list per history: its distinct unknown ids in order of first
            appearance (padding, -1, is not an id). Unknown ids are served through
            the out-of-vocabulary embedding.

        Raises:
            ValueError: a history is empty, only padding, or holds a bad id.
        """
        return self._unknown(_as_batch(histories))

    def check_histories(self, histories: Histories, k: int = 10, *,
                        exclude_seen: bool = False, strict: bool = False
                        ) -> List[List[int]]:
        """Checks a `recommend` request without running it.

        Raises every error `recommend` would raise for the same arguments (the index
        name aside), so a caller can validate a whole input before serving any of it.

        Returns:
            `unknown_ids(histories)`.

        Raises:
            ValueError: a bad k or id (see `recommend`); `HistoryError` (a
                ValueError) names the history at fault.
        """
        batch = _as_batch(histories)
        self._check_k(k)
        unknown = self._unknown(batch)
        if strict:
            _raise_unknown(unknown, len(self.vocab.ids))
        if exclude_seen:
            self._check_room(self._seen(batch, unknown), k)
        return unknown

    def histories_to_tensor(self, histories: Histories, strict: bool = False) -> tf.Tensor:
        """Validates raw-id histories and pads them with -1 into `[B, L]` int64.

        Unknown ids are kept (the SavedModel maps them to the OOV bucket) and counted
        in an `UnknownItemsWarning`, unless `strict`.

        Args:
            histories: One history (a sequence of item ids) or a batch of them.
            strict: Raise `ValueError` naming any id the run's vocabulary lacks.

        Raises:
            ValueError: an empty history, one of only padding (-1), an id that is NaN,
                not an integer or outside int64, or (with `strict`) an unknown id.
        """
        return tf.constant(self._prepare(_as_batch(histories), strict)[0])

    @property
    def context_features(self) -> List[str]:
        """Query inputs besides the history that this run's SavedModels take."""
        return [name for name in self.manifest.get("query_features", ["history"])
                if name != "history"]

    def _context(self, context: Optional[Mapping[str, Any]], rows: int, start: int = 0,
                 stop: Optional[int] = None) -> Dict[str, tf.Tensor]:
        """The context tensors for rows `start:stop`, checked against the run's inputs."""
        context = dict(context or {})
        expected = self.context_features
        if sorted(context) != sorted(expected):
            raise ValueError(f"This run's query model takes context features {expected}; "
                             f"got {sorted(context)}.")
        tensors = {}
        for name, values in context.items():
            values = np.asarray(values)
            if values.ndim == 0 or len(values) != rows:
                raise ValueError(f"context feature {name!r} needs one value per history "
                                 f"({rows}); got shape {values.shape}.")
            tensors[name] = tf.constant(values[start:stop])
        return tensors

    def embed_padded(self, histories: np.ndarray, batch_size: int = 4096,
                     context: Optional[Mapping[str, Any]] = None) -> np.ndarray:
        """Query embeddings of already padded raw-id histories, through the SavedModel.

        Args:
            histories: `[B, L]` int64 raw item ids, -1 = padding.
            batch_size: Histories per SavedModel call.
            context: The run's context features (`context_features`), `[B, ...]` each.

        Returns:
            `[B, d]` float32 (or `[B, M, d]` for multi-interest runs).
        """
        serve = self._query_model.signatures["serving_default"]
        self._context(context, len(histories))  # checks names and lengths once
        return np.concatenate([
            serve(history=tf.constant(histories[start:start + batch_size], tf.int64),
                  **self._context(context, len(histories), start, start + batch_size))
            ["embedding"].numpy() for start in range(0, len(histories), batch_size)])

    def embed(self, histories: Histories, strict: bool = False,
              context: Optional[Mapping[str, Any]] = None) -> np.ndarray:
        """Query embeddings of raw-id histories.

        Args:
            histories: One history or a batch (see `histories_to_tensor`).
            strict: Raise `ValueError` naming any id the run's vocabulary lacks.
            context: The run's context features, one value per history.

        Returns:
            `[B, d]` float32 (or `[B, M, d]` for multi-interest runs).
        """
        return self.embed_padded(self._prepare(_as_batch(histories), strict)[0],
                                 context=context)

    def recommend(self, histories: Histories, k: int = 10, index: Optional[str] = None, *,
                  exclude_seen: bool = False, strict: bool = False,
                  context: Optional[Mapping[str, Any]] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items for each history.

        Args:
            histories: One history (sequence of raw item ids, oldest first; -1 is
                padding) or a batch of them.
            k: Number of items to return, `1 <= k <= max_k` (fixed at export).
            index: `"scann"` (approximate) or `"brute_force"` (exact); default the
                run's first index (ScaNN when the catalogue has one).
            exclude_seen: Never return an item of the history: the index is asked
                for k + (distinct catalogue items in the history) items, at most
                `max_k`, and the seen ones are dropped (TFRS `query_with_exclusions`).
            strict: Raise `ValueError` naming any id the run's vocabulary lacks;
                otherwise unknown ids map to the out-of-vocabulary embedding and an
                `UnknownItemsWarning` counts them (and names histories with no known
                id, whose items then come from that embedding alone).
            context: Values of the run's context features (`context_features`, e.g.
                a timestamp or user id per history), when its query tower takes any.

        Returns:
            `(ids, scores)`: int64 `[B, k]` raw item ids and float32 `[B, k]` scores,
            best first.

        Raises:
            ValueError: k out of range; a history that is empty, only padding, or has a
                bad id; with `strict` an unknown id; with `exclude_seen` a history
                whose k + seen items exceed `max_k`. `HistoryError` (a ValueError)
                names the history at fault.
        """
        self._check_k(k)
        batch = _as_batch(histories)
        retrieval = self._index(index)
        padded, unknown = self._prepare(batch, strict)
        context = self._context(context, len(batch))
        if not exclude_seen:
            return self._retrieve(retrieval, padded, k, context)
        seen = self._seen(batch, unknown)
        fetch = self._check_room(seen, k)
        ids, scores = self._retrieve(retrieval, padded, fetch, context)
        keep = np.array([[item not in row_seen for item in row]
                         for row, row_seen in zip(ids.tolist(), seen)], dtype=bool)
        # Unseen items first, each group in score order; every row has >= k unseen.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(ids, order, axis=1),
                np.take_along_axis(scores, order, axis=1))

    def _check_k(self, k: int) -> None:
        check_positive_int("k", k)
        if k > len(self.candidate_ids):
            raise ValueError(f"k={k} exceeds the catalogue size ({len(self.candidate_ids)} "
                             "items); choose a smaller k.")
        if k > self.max_k:
            raise ValueError(f"k={k} exceeds max_k={self.max_k} fixed when this run was "
                             "exported; re-export with a larger --max-k.")

    def _retrieve(self, retrieval: Any, padded: np.ndarray, k: int,
                  context: Optional[Dict[str, tf.Tensor]] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
        result = retrieval.signatures["serving_default"](
            history=tf.constant(padded, tf.int64), k=tf.constant(min(k, self.max_k),
                                                                  tf.int32),
            **(context or {}))
        ids, scores = result["ids"].numpy(), result["scores"].numpy()
        if self.delta is None:
            return ids, scores
        # Items added since the index was built: scored exactly with the run's scorer
        # and merged with the index's top k.
        queries = self._query_model.signatures["serving_default"](
            history=tf.constant(padded, tf.int64), **(context or {}))["embedding"]
        delta_scores = self.scorer.score_matrix(queries, self.delta.embeddings).numpy()
        scores = np.concatenate([scores, delta_scores], axis=1)
        ids = np.concatenate([ids, np.broadcast_to(self.delta.ids, delta_scores.shape)],
                             axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, top, axis=1), np.take_along_axis(scores, top, axis=1)

    def _unknown(self, batch: List[List[int]]) -> List[List[int]]:
        flat = np.fromiter((i for history in batch for i in history), np.int64)
        unknown = (self.vocab.lookup(flat) == Vocabulary.OOV) & (flat != PAD_ID)
        rows = np.split(unknown, np.cumsum([len(history) for history in batch])[:-1])
        return [list(dict.fromkeys(np.asarray(history)[mask].tolist()))
                for history, mask in zip(batch, rows)]

    @staticmethod
    def _seen(batch: List[List[int]], unknown: List[List[int]]) -> List[set]:
        """Each history's distinct catalogue items (its known ids)."""
        return [set(history) - set(row_unknown) - {PAD_ID}
                for history, row_unknown in zip(batch, unknown)]

    def _check_room(self, seen: List[set], k: int) -> int:
        """Items to fetch so that k unseen ones remain; raises when above max_k."""
        fetch = [k + len(row_seen) for row_seen in seen]
        for row, needed in enumerate(fetch):
            if needed > self.max_k:
                raise HistoryError(
                    row, f"exclude_seen needs k + seen items = {k} + {len(seen[row])} = "
                    f"{needed} results, more than max_k={self.max_k} fixed when this run "
                    "was exported; ask for a smaller k, or re-export with a larger "
                    "--max-k (tfrec-proxy export --run DIR --max-k N).")
        return max(fetch)

    def _prepare(self, batch: List[List[int]], strict: bool
                 ) -> Tuple[np.ndarray, List[List[int]]]:
        """Checks unknown ids (raise or warn) and left-pads the batch with -1."""
        unknown = self._unknown(batch)
        if strict:
            _raise_unknown(unknown, len(self.vocab.ids))
        else:
            _warn_unknown(batch, unknown)
        width = max(len(history) for history in batch)
        padded = np.full((len(batch), width), PAD_ID, np.int64)
        for row, history in enumerate(batch):
            padded[row, width - len(history):] = history
        return padded, unknown


def load_run(run_dir: Union[str, Path]) -> Run:
    """Loads a run folder (any run kind) written by `export_run`.

    A FELRec run (manifest `model_kind` "felrec") loads as a
    `tfrec_proxy.felrec_serving.FELRecRun`, queried by user id (`recommend_users`).

    Raises:
        RunFormatError: the folder is missing, incomplete (a file the manifest lists
            is absent or has another size than the export wrote), damaged (a file
            that does not parse; ScaNN/brute-force indexes are read at their first
            query), or of an unknown format or model kind.
    """
    from tfrec_proxy.registry import MODEL_KINDS

    kind = read_manifest(run_dir).get("model_kind", "two_tower")
    known = sorted({"two_tower", "felrec", *MODEL_KINDS.names()})
    if kind not in known:
        raise RunFormatError(f"{str(run_dir)!r} is a run of model kind {kind!r}, which this "
                             f"process does not know (known: {known}); import the module "
                             "that registers it (MODEL_KINDS.register) before loading.")
    if kind == "felrec":
        from tfrec_proxy.felrec_serving import FELRecRun

        return FELRecRun(run_dir)
    return Run(run_dir)


def recommend(run_dir: Union[str, Path], history: Sequence[int], k: int = 10,
              index: Optional[str] = None, *, exclude_seen: bool = False,
              strict: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Loads a run and returns `(ids [k], scores [k])` for one raw-id history.

    `exclude_seen` and `strict` are as in `Run.recommend`.
    """
    ids, scores = load_run(run_dir).recommend([list(history)], k=k, index=index,
                                              exclude_seen=exclude_seen, strict=strict)
    return ids[0], scores[0]
