"""Export a trained model as a run folder (format: `tfrec_proxy.run_format`).

`export_run` writes the folder atomically. Loading and serving a run is
`tfrec_proxy.serving` (`load_run`, `Run.recommend`); the names are re-exported here
lazily, so `from tfrec_proxy.export import load_run` keeps working without training
code importing the serving module.
"""

import datetime
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.models import resolve_scorer
from tfrec_proxy.run_format import (FORMAT, FORMAT_VERSION, INDEXES, MIN_SCANN_CANDIDATES,
                                    PAD_ID, STATE_FOLDER, RunFormatError, read_manifest,
                                    write_atomically, write_json)
from tfrec_proxy.savedmodels import (QueryModule, RetrievalModule, build_index,
                                     pack_histories, scann_parameters)
from tfrec_proxy.version import __version__

__all__ = ["INDEXES", "MIN_SCANN_CANDIDATES", "PAD_ID", "RunFormatError", "export_run",
           "pack_histories", "read_state", "read_manifest", "scann_parameters",
           "Run", "load_run", "recommend"]


def __getattr__(name: str) -> Any:
    if name in ("Run", "load_run", "recommend"):
        from tfrec_proxy import serving
        return getattr(serving, name)
    raise AttributeError(f"module 'tfrec_proxy.export' has no attribute {name!r}")


def export_run(model: tf.keras.Model, run_dir: Union[str, Path], *, vocab: Vocabulary,
               config: RunConfig, metrics: Optional[Dict[str, Any]] = None,
               item_stats: Optional[Dict[str, np.ndarray]] = None,
               state: Optional[Dict[str, Dict[str, np.ndarray]]] = None,
               overwrite: bool = False) -> Path:
    """Writes a complete run folder (see `tfrec_proxy.run_format`), atomically.

    Args:
        model: A trained `RetrievalModel`.
        run_dir: Destination folder.
        vocab: The item vocabulary the model was trained with.
        config: The run's configuration (`config.export` sets max k and ScaNN).
        metrics: Optional evaluation results (and training history) for
            `metrics.json`.
        item_stats: Optional `[V]` arrays by item index (`counts`, `clusters`),
            stored in candidate order in `items.npz` for reports.
        state: Training state to keep with the run, `{file name: {array name:
            array}}`, each written as `state/<file name>` (an `.npz`), e.g. IDW's
            item weights and iteration (`tfrec_proxy.weighting.idw.IDWState`).
        overwrite: Replace an existing folder (else an existing folder is an error).

    Returns:
        The run folder's path.
    """
    if np.any(vocab.ids == PAD_ID):
        raise ValueError(f"Item id {PAD_ID} is reserved as history padding in exports; "
                         "re-index the items.")
    return write_atomically(
        run_dir, lambda folder: _write_run(model, folder, vocab, config, metrics, item_stats,
                                           state or {}),
        overwrite=overwrite)


def read_state(run_dir: Union[str, Path]) -> Dict[str, Dict[str, np.ndarray]]:
    """A run folder's saved training state (`state/*.npz`), as `export_run` takes it."""
    folder = Path(run_dir) / STATE_FOLDER
    state = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        with np.load(path) as arrays:
            state[path.name] = {name: arrays[name] for name in arrays.files}
    return state


def _write_run(model: tf.keras.Model, folder: Path, vocab: Vocabulary, config: RunConfig,
               metrics: Optional[Dict[str, Any]],
               item_stats: Optional[Dict[str, np.ndarray]],
               state: Dict[str, Dict[str, np.ndarray]]) -> None:
    max_len = config.data.max_len
    embeddings = model.item_embeddings(vocab.size)[2:]
    ids = vocab.ids
    max_k = min(config.export.max_k, len(ids))

    config.to_json(folder / "config.json")
    vocab.save(folder / "vocabulary.json")
    np.savez(folder / "candidates.npz", ids=ids, embeddings=embeddings)
    if item_stats:
        np.savez(folder / "items.npz", ids=ids,
                 **{name: np.asarray(values)[2:] for name, values in item_stats.items()})
    model.save_weights(str(folder / "weights" / "model"))
    for name, arrays in state.items():
        if not name.endswith(".npz") or "/" in name:
            raise ValueError(f"state file name {name!r} must be a plain '<name>.npz'.")
        (folder / STATE_FOLDER).mkdir(exist_ok=True)
        np.savez(folder / STATE_FOLDER / name, **arrays)

    sample = model.query_tower({"history": tf.constant([[2]], tf.int32)}, training=False)
    query_shape = tuple(int(size) for size in sample.shape[1:])
    query = QueryModule(model.query_tower, model.scorer, vocab, max_len, query_shape)
    tf.saved_model.save(query, str(folder / "query_model"), signatures=query.signatures())

    index_names = ["brute_force"]
    scann = None
    probe_k = max_k
    if len(ids) >= MIN_SCANN_CANDIDATES:
        scann = scann_parameters(len(ids), config.export, max_k)
        index_names.insert(0, "scann")
    for name in index_names:
        index = build_index(name, model.scorer, embeddings, ids, max_k, scann, probe_k)
        module = RetrievalModule(query, index, ids, embeddings, max_k, probe_k)
        tf.saved_model.save(
            module, str(folder / "retrieval" / name),
            signatures={"serving_default": module.retrieve.get_concrete_function()},
            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))

    if metrics is not None:
        write_json(folder / "metrics.json", metrics)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_kind": config.model.kind,
        "scorer": resolve_scorer(config.model),
        "query_shape": list(query_shape),
        "query_features": sorted(["history", *getattr(model.query_tower, "context_specs", {})]),
        "embedding_dim": int(embeddings.shape[1]),
        "num_interests": 1 if len(query_shape) == 1 else query_shape[0],
        "vocab_size": vocab.size,
        "num_candidates": len(ids),
        "max_len": max_len,
        "max_k": max_k,
        "indexes": [name for name in INDEXES if name in index_names],
        "scann": scann,
        "scann_candidates_per_probe": probe_k if scann else None,
        "library_version": __version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                 + ["manifest.json"],
    }
    write_json(folder / "manifest.json", manifest)
