"""The served model: one loaded run version, and the registry that hot-swaps versions.

A served path is either a run folder (served as version 1) or, as in TF Serving, a
base path of numbered version folders (`DIR/1`, `DIR/2`, ...), of which the highest
that loads is served. A background thread polls the path: a new highest version (or
a change to the served folder's files, e.g. `tfrec-proxy add-items` or a re-export)
is loaded, warmed up with one request per index and swapped in atomically once its
files have stayed unchanged for one poll. Requests hold the version they started
with, so none is dropped or mixes two versions; a version that fails to load is
reported in the status and retried when its files change, while the old one keeps
serving.
"""

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy.server.protocol import (CONTEXT_DEFAULTS, SERVING_DEFAULT, InputSpec,
                                         ModelInputs, Query)

logger = logging.getLogger("tfrec_proxy.server")

STATE_AVAILABLE, STATE_LOADING, STATE_END = "AVAILABLE", "LOADING", "END"
_FIXED_INPUTS = ("history", "k")


class ServedModel:
    """One loaded, warmed-up version of a run, answering batches of `Query`s.

    Args:
        run: The loaded run (`tfrec_proxy.serving.Run`).
        version: Its version number.
        fingerprint: Identity of its files (`folder_fingerprint`) when loaded.

    Example:

        model = ServedModel.load("saved_models/demo", version=1)
        [(ids, scores)] = model.retrieve([parse_recommend({"history": [3, 17]},
                                                          model.inputs)])
    """

    def __init__(self, run: Any, version: int, fingerprint: str = "") -> None:
        self.run = run
        self.version = version
        self.fingerprint = fingerprint
        self.signatures = {name: run._index(name).signatures[SERVING_DEFAULT]
                           for name in run.indexes}  # loads every index up front
        specs = self.signatures[run.indexes[0]].structured_input_signature[1]
        if "history" not in specs:
            from tfrec_proxy.run_format import RunFormatError

            raise RunFormatError(f"{str(run.path)!r}: this run's retrieval signature takes "
                                 f"{sorted(specs)}, no history (model kind "
                                 f"{run.model_kind!r}); the server serves history-based "
                                 "runs only.")
        context = {name: InputSpec(np.dtype(spec.dtype.as_numpy_dtype),
                                   tuple(spec.shape.as_list()[1:]))
                   for name, spec in specs.items() if name not in _FIXED_INPUTS}
        self.inputs = ModelInputs(
            max_k=min(run.max_k, len(run.candidate_ids)), indexes=run.indexes,
            context=context, max_len=run.manifest.get("max_len"), check=run.check_histories)

    @classmethod
    def load(cls, path: Union[str, Path], version: int = 1) -> "ServedModel":
        """Loads the run folder `path` and warms it up (one request per index)."""
        from tfrec_proxy.serving import load_run

        fingerprint = folder_fingerprint(path)
        model = cls(load_run(path), version, fingerprint)
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """One request per index, so the first real request pays no tracing cost."""
        history = [int(self.run.candidate_ids[0])]
        for index in self.inputs.indexes:
            context = {name: np.full((1, *[1 for _ in spec.shape]),
                                     CONTEXT_DEFAULTS.get(name, 0), spec.dtype)
                       for name, spec in self.inputs.context.items()}
            self.retrieve([Query([history], [1], context, index)])

    def retrieve(self, queries: Sequence[Query]) -> List[Tuple[List[np.ndarray],
                                                               List[np.ndarray]]]:
        """Runs queries of one batch key in one call of the run's retrieval signature.

        Returns:
            Per query, `(ids, scores)`: one array per history, of that history's k.
        """
        first = queries[0]
        histories = [history for query in queries for history in query.histories]
        context = {name: np.concatenate([query.context[name] for query in queries])
                   for name in self.inputs.context}
        k = max(max(query.ks) for query in queries)
        # Unknown ids are served through the OOV embedding (`serve` silences their
        # UnknownItemsWarning process-wide: `catch_warnings` is not thread-safe).
        ids, scores = self.run.recommend(histories, k=k, index=first.index,
                                         exclude_seen=first.exclude_seen,
                                         context=context or None)
        results, row = [], 0
        for query in queries:
            rows = range(row, row + query.rows)
            results.append(([ids[r, :kq] for r, kq in zip(rows, query.ks)],
                            [scores[r, :kq] for r, kq in zip(rows, query.ks)]))
            row += query.rows
        return results

    def signature_defs(self) -> Dict[str, Any]:
        """TF Serving's `signature_def` map: `serving_default` and one per index."""
        defs = {}
        for name in self.inputs.signature_names:
            function = self.signatures[self.inputs.index_of(name)]
            defs[name] = {
                "inputs": {key: _tensor_info(spec) for key, spec in
                           sorted(function.structured_input_signature[1].items())},
                "outputs": {key: _tensor_info(spec) for key, spec in
                            sorted(function.structured_outputs.items())},
                "method_name": "tensorflow/serving/predict"}
        return defs

    def describe(self) -> Dict[str, Any]:
        """The run's serving facts (beyond TF Serving's metadata)."""
        return {"max_k": self.inputs.max_k, "indexes": self.inputs.indexes,
                "context_features": sorted(self.inputs.context),
                "max_len": self.inputs.max_len, "model_kind": self.run.model_kind,
                "num_candidates": int(len(self.run.candidate_ids)),
                "items_added": self.run.items_added}


def _tensor_info(spec: Any) -> Dict[str, Any]:
    from tensorflow.core.framework import types_pb2

    dims = [{"size": str(-1 if size is None else size), "name": ""}
            for size in (spec.shape.as_list() if spec.shape.rank is not None else [])]
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
            "tensor_shape": {"dim": dims, "unknown_rank": spec.shape.rank is None},
            "name": f"{spec.name}:0"}


def folder_fingerprint(path: Union[str, Path]) -> str:
    """A digest of every file's name, size, mtime and inode under `path`."""
    digest = hashlib.sha1()
    for root, folders, files in os.walk(path):
        folders.sort()
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:  # removed while walking: the next poll sees the change
                continue
            digest.update(f"{os.path.relpath(os.path.join(root, name), path)}\0"
                          f"{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode())
    return digest.hexdigest()


class ModelRegistry:
    """The versions of one served path; `current` is the version requests get.

    Args:
        path: A run folder, or a base path of numbered version folders.
        name: The model name in URLs (default: the folder's name).
        poll_interval_s: Seconds between checks for new versions (0: never poll).

    Example:

        registry = ModelRegistry("models/recsys")   # models/recsys/1, /2 -> serves 2
        registry.start()                            # picks up models/recsys/3 later
        model = registry.current                    # a ServedModel
    """

    def __init__(self, path: Union[str, Path], name: Optional[str] = None,
                 poll_interval_s: float = 1.0) -> None:
        from tfrec_proxy.run_format import RunFormatError

        self.path = Path(path)
        if not self.path.is_dir():
            raise RunFormatError(f"{str(self.path)!r} does not exist or is not a folder; "
                                 "expected a run folder or a base path of numbered "
                                 "version folders (DIR/1, DIR/2, ...).")
        self.versioned = not (self.path / "manifest.json").exists()
        self.name = name or self.path.resolve().name
        self.poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._failed: Dict[int, Tuple[str, str]] = {}  # version -> (fingerprint, error)
        self._loading: Optional[int] = None
        self._seen: Dict[int, str] = {}  # fingerprints of the previous poll
        self._missing_polls = 0  # polls in a row that found the served version gone
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.current = self._load_initial()

    def versions(self) -> List[int]:
        """The version folders present, highest first (`[1]` for a run folder)."""
        if not self.versioned:
            return [1]
        found = []
        for entry in self.path.iterdir():
            if entry.name.isdigit() and entry.is_dir():
                found.append(int(entry.name))
        return sorted(found, reverse=True)

    def _folder(self, version: int) -> Path:
        return self.path / str(version) if self.versioned else self.path

    def _load_initial(self) -> ServedModel:
        from tfrec_proxy.run_format import RunFormatError

        versions = self.versions()
        if not versions:
            raise RunFormatError(f"{str(self.path)!r} is neither a run folder (no "
                                 "manifest.json) nor a base path with numbered version "
                                 "folders (DIR/1, DIR/2, ...).")
        errors = []
        for version in versions:
            try:
                return ServedModel.load(self._folder(version), version)
            except Exception as error:  # noqa: BLE001 - try the next version
                self._failed[version] = (folder_fingerprint(self._folder(version)),
                                         _one_line(error))
                errors.append(f"version {version}: {_one_line(error)}")
                logger.error("could not load %s version %d: %s", self.name, version,
                             _one_line(error))
        raise RunFormatError(f"no version of {str(self.path)!r} could be loaded: "
                             + "; ".join(errors))

    def get(self, version: Optional[int] = None) -> Optional[ServedModel]:
        """The current model, or None when `version` is given and is not it."""
        model = self.current
        return model if version is None or version == model.version else None

    def poll(self) -> bool:
        """One check of the path; loads and swaps in a changed version.

        Returns:
            Whether a new model was swapped in.
        """
        current = self.current
        seen, self._seen = self._seen, {}
        present = self.versions()
        # Failures of version folders since removed are no longer reported.
        self._failed = {v: failure for v, failure in self._failed.items() if v in present}
        for version in present:
            if version < current.version and self.versioned:
                break  # older versions are never chosen while the current one exists
            folder = self._folder(version)
            fingerprint = folder_fingerprint(folder)
            self._seen[version] = fingerprint
            is_current = version == current.version or not self.versioned
            if is_current and fingerprint == current.fingerprint:
                break  # the current version is unchanged and nothing newer loaded
            if self._failed.get(version, ("",))[0] == fingerprint:
                continue  # failed before with these very files
            if seen.get(version) != fingerprint:
                break  # still changing (being copied): wait for it to settle
            return self._swap(folder, version, current)
        missing = self.versioned and not (self._folder(current.version) /
                                          "manifest.json").exists()
        self._missing_polls = self._missing_polls + 1 if missing else 0
        if self._missing_polls >= 2:  # not a folder being replaced by a rename
            # The served version was removed: fall back to the highest that loads.
            for version in present:
                if version != current.version and version not in self._failed:
                    return self._swap(self._folder(version), version, current)
        return False

    def _swap(self, folder: Path, version: int, current: ServedModel) -> bool:
        number = version if self.versioned else current.version + 1
        self._loading = number
        started = time.monotonic()
        try:
            model = ServedModel.load(folder, number)
        except Exception as error:  # noqa: BLE001 - keep serving the current version
            self._failed[version] = (self._seen.get(version, ""), _one_line(error))
            logger.error("could not load %s version %d (still serving version %d): %s",
                         self.name, version, current.version, _one_line(error))
            return False
        finally:
            self._loading = None
        with self._lock:
            self.current = model
        self._missing_polls = 0
        self._failed.pop(version, None)
        logger.info("serving %s version %d (loaded in %.1f s)", self.name, number,
                    time.monotonic() - started)
        return True

    def status(self) -> List[Dict[str, Any]]:
        """TF Serving's `model_version_status` list, newest first."""
        entries = []
        if self._loading is not None:
            entries.append(_status(self._loading, STATE_LOADING))
        entries.append(_status(self.current.version, STATE_AVAILABLE))
        for version, (_, error) in sorted(self._failed.items(), reverse=True):
            if version != self.current.version:
                entries.append(_status(version, STATE_END, "UNKNOWN", error))
        return entries

    def start(self) -> None:
        """Starts polling in a daemon thread (no-op when `poll_interval_s` is 0)."""
        if self.poll_interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_loop, daemon=True,
                                        name="tfrec-serve-poll")
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 - the poller must survive
                logger.error("polling %s failed: %s", self.path, _one_line(error))

    def stop(self) -> None:
        """Stops the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _status(version: int, state: str, code: str = "OK", message: str = "") -> Dict[str, Any]:
    return {"version": str(version), "state": state,
            "status": {"error_code": code, "error_message": message}}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
