"""The run-folder format: constants, the manifest check and atomic writing.

A run folder (`saved_models/<run>/`) holds:

* `manifest.json`: format version, model kind, scorer, query shape, dimensions,
  vocabulary size, max k, indexes, library/TensorFlow versions, creation time, the
  list of every file and each file's size in bytes (all checked by `read_manifest`:
  a missing, truncated or overwritten file is named at load time).
* `config.json`: the `RunConfig` the model was built and trained with.
* `vocabulary.json`: raw item id <-> index.
* `weights/`: a TensorFlow checkpoint of the Keras model (to re-export or resume).
* `query_model/`: SavedModel; `serving_default(history: int64 [B, L], ...context)` ->
  `{"embedding": float32 [B, d] or [B, M, d]}`, plus `score_matrix` and
  `score_candidates` signatures applying the run's scorer.
* `candidates.npz`: `ids` (int64 [N] raw item ids) and `embeddings` (float32 [N, d]).
* `items.npz`: `ids`, `counts` (training-target frequency) and, for synthetic data,
  `clusters` (ground truth), in candidate order (for reports).
* `retrieval/scann/` and `retrieval/brute_force/`: SavedModels (ScaNN only for
  catalogues of at least 16 items) with `serving_default(history, k)` ->
  `{"ids": int64 [B, k], "scores": float32 [B, k]}`, `1 <= k <= max_k`. The
  brute-force one (exact chunked top-k under the run's scorer) holds stock TensorFlow
  ops only, so a TensorFlow, TF Serving or Triton without ScaNN or this library
  serves it (manifest `stock_ops_retrieval`). ScaNN's settings are tuned at export
  to a recall target on validation queries; the manifest's `scann_tuning` records
  the measured recall, queries/s, build and tuning time.
* `metrics.json` (optional): evaluation results, the training history and phases,
  and which method trained (`method`: extraction, M, scorer, loss, item norm,
  weighting).
* `item_features.json` + `item_features.npz` (optional): the fitted item feature
  spec and the `[V, d_A]` attributes / `[V, d_C]` context by item index, for
  attribute-aware item towers (PIR) and for embedding items added later.
* `users.json` (optional): the raw user ids a query tower with a user embedding
  (RAM) knows; other users get u = 0 at serving time.
* `state/` (optional): training state of the method, one `.npz` per concern (e.g.
  `state/idw.npz`: IDW's item weights, iteration and phase), restorable with it.

This module needs neither TensorFlow nor ScaNN (only numpy).
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

import numpy as np

from tfrec_proxy.version import __version__

FORMAT = "tfrec_proxy.run"
# 2: scorer signatures in query_model/, manifest file list checked, causal encoder.
FORMAT_VERSION = 2
PAD_ID = -1
STATE_FOLDER = "state"
USERS_FILE = "users.json"  # the known users of a query tower with a user embedding
INDEXES = ("scann", "brute_force")  # in order of preference
REQUIRED_FILES = ("manifest.json", "config.json", "vocabulary.json", "candidates.npz",
                  "query_model/saved_model.pb", "weights/checkpoint")
# ScaNN's asymmetric hashing trains 16 centres per block and refuses fewer data points
# ("Number of clusters per block (16) is greater than ... training data size"); smaller
# catalogues get the exact brute-force index only.
MIN_SCANN_CANDIDATES = 16
# Run folders are read by servers that may run as another user.
_FOLDER_MODE = 0o755


class RunFormatError(ValueError):
    """A folder is not a valid, complete run export."""


def write_atomically(run_dir: Union[str, Path], write: Callable[[Path], None],
                     overwrite: bool = False) -> Path:
    """Runs `write(staging_folder)` and renames the folder into place.

    A crash leaves either the old folder or the new one, never a half-written run.

    Args:
        run_dir: Destination folder.
        write: Fills the (empty) staging folder.
        overwrite: Replace an existing `run_dir` (else it is an error).

    Returns:
        `run_dir` as a `Path`.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise FileExistsError(f"Run folder {str(run_dir)!r} exists; pass overwrite=True "
                              "or choose another run name.")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        write(staging)
        _make_readable(staging)
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


def _make_readable(folder: Path) -> None:
    """`mkdtemp` makes 0700 folders; a run is read by servers running as other users."""
    for root, folders, files in os.walk(folder):
        os.chmod(root, _FOLDER_MODE)
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)


def write_json(path: Path, values: Any) -> None:
    """Pretty, sorted JSON with a trailing newline."""
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def corrupted(path: Union[str, Path], error: BaseException) -> "RunFormatError":
    """The error for a run file that exists but cannot be read."""
    return RunFormatError(f"{str(path)!r} cannot be read ({type(error).__name__}: "
                          f"{_first_line(error)}); the run folder is corrupted. Re-export it "
                          "with `tfrec-proxy export` or copy it again.")


def read_json(path: Union[str, Path]) -> Any:
    """A run file's JSON value; a file that is not UTF-8 JSON is a `RunFormatError`
    naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or UTF-8
        raise corrupted(path, error) from error


def read_arrays(path: Union[str, Path], names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Arrays `names` of a run's `.npz` file; a damaged file or a missing array is a
    `RunFormatError` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise corrupted(path, error) from error


def file_inventory(folder: Union[str, Path]) -> Dict[str, Any]:
    """The manifest's `files` (every file under `folder`, plus `manifest.json`) and
    `file_sizes` (bytes of each, the manifest excepted), for `read_manifest` to
    check."""
    folder = Path(folder)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    names = [str(p.relative_to(folder)) for p in found]
    return {"files": sorted(names + ["manifest.json"]),
            "file_sizes": {name: p.stat().st_size for name, p in zip(names, found)}}


def _changed_sizes(run_dir: Path, sizes: Dict[str, Any]) -> List[str]:
    changed = []
    for name, expected in sorted(sizes.items()):
        path = run_dir / name
        if path.is_file() and path.stat().st_size != expected:
            changed.append(f"{name} ({path.stat().st_size} bytes; the export wrote "
                           f"{expected})")
    return changed


def read_manifest(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """Reads and validates a run folder's manifest.

    Checks the format and version, the index list, and that every file the manifest
    lists (and every file any run needs) exists.

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
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise RunFormatError(f"{str(run_dir / 'manifest.json')!r} is not valid JSON: "
                             f"{_first_line(error)}") from error
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
    listed = manifest.get("files")
    if not isinstance(listed, list):
        raise RunFormatError(f"{str(run_dir)!r}: manifest has no file list; re-export it "
                             "with `tfrec-proxy export`.")
    required = (list(REQUIRED_FILES) + [f"retrieval/{name}/saved_model.pb" for name in indexes]
                + [name for name in listed if name != "manifest.json"])
    missing = sorted({name for name in required if not (run_dir / name).is_file()},
                     key=required.index)
    if missing:
        raise RunFormatError(f"{str(run_dir)!r} is not a complete tfrec_proxy run: missing "
                             f"{missing}. Re-export it with `tfrec-proxy export`.")
    sizes = manifest.get("file_sizes")  # absent in runs exported before it was added
    if sizes is not None:
        if not isinstance(sizes, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
            raise RunFormatError(f"{str(run_dir)!r}: manifest file_sizes is not a map of "
                                 "file names to byte counts.")
        changed = _changed_sizes(run_dir, sizes)
        if changed:
            raise RunFormatError(f"{str(run_dir)!r} has files that changed since export "
                                 f"(truncated or overwritten): {changed}. Re-export it with "
                                 "`tfrec-proxy export` or copy the run again.")
    return manifest
