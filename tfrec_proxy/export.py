"""Export a trained model as a run folder (format: `tfrec_proxy.run_format`).

`export_run` writes the folder atomically. Loading and serving a run is
`tfrec_proxy.serving` (`load_run`, `Run.recommend`); the names are re-exported here
lazily, so `from tfrec_proxy.export import load_run` keeps working without training
code importing the serving module.
"""

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.models import resolve_scorer
from tfrec_proxy.run_format import (FORMAT, FORMAT_VERSION, INDEXES, MIN_SCANN_CANDIDATES,
                                    PAD_ID, STATE_FOLDER, USERS_FILE, RunFormatError,
                                    file_inventory, read_manifest, write_atomically,
                                    write_json)
from tfrec_proxy.new_items import ADDED_PREFIX, ITEM_MODEL, AddedItems, added_items_for_repair
from tfrec_proxy.registry import ITEM_TOWERS
from tfrec_proxy.savedmodels import (ItemModule, QueryModule, build_index, pack_histories,
                                     save_retrieval_model, scann_parameters)
from tfrec_proxy.version import __version__

__all__ = ["INDEXES", "MIN_SCANN_CANDIDATES", "PAD_ID", "RunFormatError", "export_run",
           "pack_histories", "parameter_report", "read_item_stats", "read_state",
           "reexport_run", "read_manifest", "scann_parameters",
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
               item_features: Optional[Any] = None, added_items: Optional[Any] = None,
               tuning_queries: Optional[Any] = None,
               scann_tuning: Optional[Dict[str, Any]] = None,
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
        item_features: The run's `ItemFeatures` (attribute-aware item towers),
            saved as `item_features.json` / `.npz`; None for none. With an
            attribute-aware item tower (PIR) the tower is also saved as
            `item_model/`, which embeds new items from their attributes.
        added_items: Items added since training
            (`tfrec_proxy.new_items.AddedItems`): embedded with the model's item
            tower and put in the candidates and both indexes after the vocabulary's.
        tuning_queries: Query-tower inputs of real queries (validation examples:
            `{"history": [Q, L] indices, ...}`): with `config.export.tunes_scann()`,
            ScaNN's settings are tuned on them to `scann_target_recall`
            (`tune_scann`, recall@10 against exact) and the measured index is
            exported; the result goes into the manifest's `scann_tuning`.
        scann_tuning: A previous export's `manifest["scann_tuning"]`, whose settings
            are reused as they are (re-exports: no queries to measure on).
        overwrite: Replace an existing folder (else an existing folder is an error).

    Returns:
        The run folder's path.
    """
    if np.any(vocab.ids == PAD_ID):
        raise ValueError(f"Item id {PAD_ID} is reserved as history padding in exports; "
                         "re-index the items.")
    return write_atomically(
        run_dir, lambda folder: _write_run(model, folder, vocab, config, metrics, item_stats,
                                           state or {}, item_features, added_items,
                                           tuning_queries, scann_tuning),
        overwrite=overwrite)


def _embed_added(model: tf.keras.Model, added: AddedItems) -> AddedItems:
    """The added items with embeddings from the model's item tower (OOV index)."""
    ids = tf.fill([len(added)], tf.constant(1, tf.int32))
    vectors = model.candidate_tower({"item_id": ids, "attributes": added.attributes,
                                     "context": added.context}, training=False)
    return dataclasses.replace(added, embeddings=np.asarray(vectors, np.float32))


def reexport_run(run_dir: Union[str, Path], target: Optional[Union[str, Path]] = None, *,
                 max_k: Optional[int] = None,
                 added: Optional[AddedItems] = None) -> Path:
    """Rebuilds a run's model from its folder and exports it again (atomically), keeping
    its metrics, training state, item statistics, item features and added items.

    Args:
        run_dir: The run folder.
        target: Destination (default: replace `run_dir` in place).
        max_k: A new largest k (default the run's).
        added: Every item added since training (default the run's); all of them go
            into the indexes.

    Returns:
        The written folder.
    """
    from tfrec_proxy.training import read_item_features, restore_model  # no cycle

    run_dir = Path(run_dir)
    target = Path(target) if target is not None else run_dir
    if (run_dir / "cache.npz").exists():  # a FELRec run: weights + cache
        from tfrec_proxy.felrec_export import reexport_felrec_run

        return reexport_felrec_run(run_dir, target, max_k=max_k)
    model, vocab, config = restore_model(run_dir)
    if max_k is not None:
        config.export.max_k = max_k
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    if added is None:
        added = added_items_for_repair(run_dir)
    tuning = _previous_scann_tuning(run_dir)
    return export_run(model, target, vocab=vocab, config=config, metrics=metrics,
                      item_stats=read_item_stats(run_dir), state=read_state(run_dir),
                      item_features=read_item_features(run_dir),
                      added_items=added, scann_tuning=tuning,
                      overwrite=target.resolve() == run_dir.resolve())


def _previous_scann_tuning(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The tuned ScaNN record of a run's manifest, if it has a readable one; None
    otherwise (a run being repaired may have lost its manifest; with no queries to
    measure on, its re-export then uses the size rule)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    tuning = manifest.get("scann_tuning") if isinstance(manifest, dict) else None
    settings = tuning.get("settings") if isinstance(tuning, dict) else None
    return tuning if isinstance(settings, dict) else None


def read_item_stats(run_dir: Union[str, Path]) -> Optional[Dict[str, np.ndarray]]:
    """A run's `items.npz` back in vocabulary-index order (rows 0 and 1 zero), as
    `export_run(item_stats=...)` takes it; None when the run has none."""
    path = Path(run_dir) / "items.npz"
    if not path.exists():
        return None
    with np.load(path) as stored:
        return {name: np.concatenate([np.zeros(2, stored[name].dtype), stored[name]])
                for name in stored.files if name != "ids"}


def parameter_report(model: tf.keras.Model) -> Dict[str, int]:
    """Trainable parameter counts: `query_tower`, `candidate_tower` (a layer shared by
    both towers, e.g. PIR's item encoder under `share_item_encoder`, counts in each),
    `scorer` and `total` (every trainable variable once)."""
    def count(variables: Any) -> int:
        unique = {id(v): v for v in variables}.values()
        return int(sum(int(np.prod(v.shape)) for v in unique))

    return {"query_tower": count(model.query_tower.trainable_variables),
            "candidate_tower": count(model.candidate_tower.trainable_variables),
            "scorer": count(model.scorer.trainable_variables),
            "total": count(model.trainable_variables)}


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
               state: Dict[str, Dict[str, np.ndarray]], item_features: Optional[Any],
               added: Optional[Any], tuning_queries: Optional[Any],
               scann_tuning: Optional[Dict[str, Any]]) -> None:
    max_len = config.data.max_len
    embeddings = model.item_embeddings(vocab.size)[2:]
    ids = vocab.ids
    if added is not None and len(added):
        added = _embed_added(model, added)
        ids = np.concatenate([ids, added.ids])
        embeddings = np.concatenate([embeddings, added.embeddings])
        added.save(folder / f"{ADDED_PREFIX}-{len(added)}.npz")
    max_k = min(config.export.max_k, len(ids))

    config.to_json(folder / "config.json")
    vocab.save(folder / "vocabulary.json")
    np.savez(folder / "candidates.npz", ids=ids, embeddings=embeddings)
    if item_stats:
        np.savez(folder / "items.npz", ids=vocab.ids,
                 **{name: np.asarray(values)[2:] for name, values in item_stats.items()})
    model.save_weights(str(folder / "weights" / "model"))
    if item_features is not None:
        item_features.save(folder)
        if ITEM_TOWERS.get(config.model.item_tower).metadata.get("attributes"):
            items = ItemModule(model.candidate_tower, item_features.attribute_dim,
                               item_features.context_dim)
            tf.saved_model.save(items, str(folder / ITEM_MODEL),
                                signatures={"serving_default": items.embed.get_concrete_function()})
    for name, arrays in state.items():
        if not name.endswith(".npz") or "/" in name:
            raise ValueError(f"state file name {name!r} must be a plain '<name>.npz'.")
        (folder / STATE_FOLDER).mkdir(exist_ok=True)
        np.savez(folder / STATE_FOLDER / name, **arrays)

    sample = model.query_tower(model.sample_query_features(tf.constant([[2]], tf.int32)),
                               training=False)
    users = getattr(model.query_tower, "user_embedding", None)
    if users is not None:
        write_json(folder / USERS_FILE, {"ids": users.user_ids.numpy().tolist()})
    query_shape = tuple(int(size) for size in sample.shape[1:])
    query = QueryModule(model.query_tower, model.scorer, vocab, max_len, query_shape)
    tf.saved_model.save(query, str(folder / "query_model"), signatures=query.signatures())

    index_names = ["brute_force"]
    scann = tuned = None
    probe_k = max_k
    if len(ids) >= MIN_SCANN_CANDIDATES:
        index_names.insert(0, "scann")
        if scann_tuning:  # a re-export keeps the measured settings
            scann, scann_tuning = dict(scann_tuning["settings"]), dict(scann_tuning,
                                                                        reused=True)
        elif tuning_queries is not None and config.export.tunes_scann():
            tuned = _tune_scann(model, tuning_queries, embeddings, max_k, probe_k,
                                config.export)
            scann, scann_tuning = tuned.settings, tuned.to_manifest()
        else:
            scann, scann_tuning = scann_parameters(len(ids), config.export, max_k), None
    for name in index_names:
        if name == "scann" and tuned is not None:
            index = tuned.index  # the index that was measured (k-means is randomised)
        else:
            index = build_index(name, model.scorer, embeddings, ids, max_k, scann, probe_k)
        save_retrieval_model(folder / "retrieval" / name, query, index, ids, embeddings,
                             max_k, probe_k)

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
        "item_tower": config.model.item_tower,
        "parameters": parameter_report(model),
        "added_items": ({"file": f"{ADDED_PREFIX}-{len(added)}.npz", "count": len(added),
                         "indexed": len(added)} if added is not None and len(added) else None),
        "vocab_size": vocab.size,
        "num_candidates": len(ids),
        "max_len": max_len,
        "max_k": max_k,
        "indexes": [name for name in INDEXES if name in index_names],
        "scann": scann,
        "scann_candidates_per_probe": probe_k if scann else None,
        "scann_tuning": scann_tuning if scann else None,
        "stock_ops_retrieval": "retrieval/brute_force",
        "library_version": __version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **file_inventory(folder),
    }
    write_json(folder / "manifest.json", manifest)


def _tune_scann(model: tf.keras.Model, features: Any, embeddings: np.ndarray, max_k: int,
                probe_k: int, export: Any) -> Any:
    """ScaNN tuned to `export.scann_target_recall` (recall@10) on the probe vectors
    (`Scorer.probe_vectors`: M per query for MUR) of up to
    `export.scann_tuning_queries` real queries."""
    from tfrec_proxy.scann_tuning import tune_scann  # ScaNN's ops load on first use

    count = int(export.scann_tuning_queries)
    features = {name: np.asarray(values)[:count] for name, values in features.items()}
    history = features.pop("history")
    queries = model.query_embeddings(history, context=features or None)
    probes = np.asarray(model.scorer.probe_vectors(tf.constant(queries)), np.float32)
    probes = probes.reshape(-1, probes.shape[-1])
    return tune_scann(embeddings, probes, k=min(10, probe_k), num_neighbors=probe_k,
                      target_recall=float(export.scann_target_recall))
