"""FELRec run folders: the cache exported, served and updated without retraining.

A FELRec run folder has the files of every run (`tfrec_proxy.run_format`), with
these meanings, plus `cache.npz`:

* `cache.npz`: the representation cache and what updating it needs, in cache-row
  order: `user_ids` int64 `[U]` / `item_ids` int64 `[I]` (raw ids), `user_table`
  float32 `[U, d]` / `item_table` `[I, d]` (the latest representation the encoder
  computed), `user_filled` / `item_filled` int8 (1 where one was written),
  `user_recent` int32 `[U, L]` (each user's last L items, item rows, oldest first,
  -1 padding) / `item_recent` `[I, L]` (each item's last L users), `empty_user` /
  `empty_item` float32 `[d]` (the encoder's representation of an empty history:
  what an entity gets at its first interaction) and `last_timestamp` (the time line's
  latest timestamp), `score_sign`.
* `users.json` (`{"ids": [...]}`) and `vocabulary.json`: the raw user and item ids
  in cache-row order.
* `query_model/`: `serving_default(user_id: int64 [B])` -> `embedding` float32
  `[B, d]`, the L2-normalised cached user vector times `score_sign` (1, or -1 when
  validation ranked better by -cosine, as the reference code decides); a user the
  run does not know, or one without a cached vector, gets the normalised
  `empty_user` vector (the model's own cold-start representation, §2.4), so it is
  served the items nearest that vector rather than an error. Plus `score_matrix` / `score_candidates` (dot products of the
  normalised vectors = cosine, §2.7).
* `candidates.npz` and `retrieval/{scann,brute_force}/` (`serving_default(user_id,
  k)`): the L2-normalised cached vectors of every item that has one (every item
  that occurred in an interaction); items never seen are not retrievable.
  `Run.scores` gives them the normalised `empty_item` vector.
* `weights/`: the `FELRecModel` checkpoint (encoder, heads, queues, and the cache).

`update_cache(run_dir, interactions)` (`Run.update_cache`) encodes interactions newer
than the run's with the trained encoder, in time order (histories from
`*_recent`, batches read the cache at their start, as in training), grows the cache
for new users and items, and rewrites the folder atomically (`write_atomically`: a
crash leaves the old run or the new one, never a mix).
"""

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.chronological import past_neighbours
from tfrec_proxy.data.frames import validate_interactions
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.felrec import FELRecModel
from tfrec_proxy.layers.felrec import ITEMS_OF_USER, USERS_OF_ITEM
from tfrec_proxy.run_format import (FORMAT, FORMAT_VERSION, INDEXES, MIN_SCANN_CANDIDATES,
                                    USERS_FILE, RunFormatError, file_inventory,
                                    read_manifest, write_atomically, write_json)
from tfrec_proxy.savedmodels import build_index, save_retrieval_model, scann_parameters
from tfrec_proxy.scoring import DotScorer
from tfrec_proxy.version import __version__

CACHE_FILE = "cache.npz"
MODEL_KIND = "felrec"


@dataclasses.dataclass
class ServingState:
    """What serving and `update_cache` need besides the model (cache-row order).

    Attributes:
        user_ids: int64 `[U]` raw user ids.
        item_ids: int64 `[I]` raw item ids.
        user_recent: int32 `[U, L]` each user's last L item rows (-1 padding).
        item_recent: int32 `[I, L]` each item's last L user rows.
        last_timestamp: The latest timestamp seen (int64).
        score_sign: 1 (rank by cosine) or -1 (by -cosine), chosen on validation
            (`tfrec_proxy.felrec_evaluation`); the query vectors carry it.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_recent: np.ndarray
    item_recent: np.ndarray
    last_timestamp: int
    score_sign: int = 1


def recent_neighbours(owner: np.ndarray, other: np.ndarray, num_owners: int,
                      length: int) -> np.ndarray:
    """`[num_owners, L]` each owner's last L `other`s over interactions in time order
    (the history a next interaction of the owner would have)."""
    owners = np.concatenate([np.asarray(owner, np.int64), np.arange(num_owners)])
    others = np.concatenate([np.asarray(other, np.int64), np.zeros(num_owners, np.int64)])
    return past_neighbours(owners, others, length, rows=len(owner) + np.arange(num_owners))


def serving_state(data: Any, score_sign: int = 1) -> ServingState:
    """The `ServingState` after a `ChronologicalData`'s whole time line."""
    split = data.split
    return ServingState(
        user_ids=np.asarray(split.user_ids, np.int64),
        item_ids=np.asarray(split.item_ids, np.int64),
        user_recent=recent_neighbours(split.user, split.item, split.num_users,
                                      split.history_len),
        item_recent=recent_neighbours(split.item, split.user, split.num_items,
                                      split.history_len),
        last_timestamp=int(data.last_timestamp), score_sign=int(score_sign))


def cache_memory(dim: int, history_len: int, num_users: int, num_items: int
                 ) -> Dict[str, int]:
    """Bytes of the cache: per entity `4 d + 1` (a float32 row and its filled flag),
    plus `4 L` for the last-L neighbour list `update_cache` keeps; totals for this
    run and for 1M users + 1M items."""
    per, update = 4 * dim + 1, 4 * history_len
    entities = num_users + num_items
    return {"bytes_per_entity": per, "update_state_bytes_per_entity": update,
            "users": int(num_users), "items": int(num_items),
            "cache_bytes": per * entities, "serving_bytes": (per + update) * entities,
            "cache_bytes_1m_users_1m_items": per * 2_000_000,
            "serving_bytes_1m_users_1m_items": (per + update) * 2_000_000}


def _normalize(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def empty_representations(model: FELRecModel) -> Tuple[np.ndarray, np.ndarray]:
    """`[d]` encoder outputs for an empty user history and an empty item history."""
    zeros = tf.zeros([1, 1, model.dim])
    mask = tf.zeros([1, 1], tf.bool)
    user = model.encoder(zeros, mask, ITEMS_OF_USER, training=False)
    item = model.encoder(zeros, mask, USERS_OF_ITEM, training=False)
    return user.numpy()[0].astype(np.float32), item.numpy()[0].astype(np.float32)


class CacheQueryModule(tf.Module):
    """Raw user ids -> L2-normalised cached user vectors (unknown: the empty-history
    vector), and the dot-product scorer (cosine on normalised vectors).

    Args:
        user_ids: `[U]` raw user ids by row.
        vectors: `[U, d]` normalised user vectors by row.
        fallback: `[d]` normalised vector of unknown users.
    """

    def __init__(self, user_ids: np.ndarray, vectors: np.ndarray,
                 fallback: np.ndarray) -> None:
        super().__init__()
        self.scorer = DotScorer()
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(user_ids, tf.int64),
                                                tf.range(len(user_ids), dtype=tf.int64)),
            default_value=-1)
        self.vectors = tf.Variable(vectors, trainable=False, name="user_vectors")
        self.fallback = tf.Variable(fallback, trainable=False, name="unknown_user")
        self.input_specs = {"user_id": tf.TensorSpec([None], tf.int64, name="user_id")}
        self.embed = tf.function(self._embed, input_signature=[self.input_specs])
        dim = vectors.shape[1]
        query = tf.TensorSpec([None, dim], tf.float32, name="queries")
        self.score_matrix = tf.function(
            lambda queries, candidates: {"scores": self.scorer.score_matrix(queries,
                                                                            candidates)},
            input_signature=[query, tf.TensorSpec([None, dim], tf.float32,
                                                  name="candidates")])
        self.score_candidates = tf.function(
            lambda queries, candidates: {"scores": self.scorer.score_candidates(
                queries, candidates)},
            input_signature=[query, tf.TensorSpec([None, None, dim], tf.float32,
                                                  name="candidates")])

    def _embed(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        rows = self.table.lookup(features["user_id"])
        known = tf.gather(self.vectors, tf.maximum(rows, 0))
        fallback = tf.broadcast_to(self.fallback[None, :], tf.shape(known))
        return {"embedding": tf.where((rows >= 0)[:, None], known, fallback)}

    def signatures(self) -> Dict[str, Any]:
        return {"serving_default": self.embed.get_concrete_function(),
                "score_matrix": self.score_matrix.get_concrete_function(),
                "score_candidates": self.score_candidates.get_concrete_function()}


def export_felrec_run(model: FELRecModel, run_dir: Union[str, Path], *, config: RunConfig,
                      state: ServingState, metrics: Optional[Dict[str, Any]] = None,
                      overwrite: bool = False) -> Path:
    """Writes a FELRec run folder (see the module docstring) atomically."""
    return write_atomically(run_dir, lambda folder: _write(model, folder, config, state,
                                                           metrics), overwrite=overwrite)


def _write(model: FELRecModel, folder: Path, config: RunConfig, state: ServingState,
           metrics: Optional[Dict[str, Any]]) -> None:
    from tfrec_proxy.felrec_training import parameter_counts

    cache = model.cache
    arrays = {name: getattr(cache, name).numpy() for name in
              ("user_table", "user_filled", "item_table", "item_filled")}
    if arrays["user_table"].shape[0] != len(state.user_ids) \
            or arrays["item_table"].shape[0] != len(state.item_ids):
        raise ValueError(f"FELRec export: the cache has {arrays['user_table'].shape[0]} "
                         f"user and {arrays['item_table'].shape[0]} item rows but the "
                         f"serving state {len(state.user_ids)} and {len(state.item_ids)}.")
    empty_user, empty_item = empty_representations(model)
    np.savez(folder / CACHE_FILE, user_ids=state.user_ids, item_ids=state.item_ids,
             user_recent=state.user_recent, item_recent=state.item_recent,
             last_timestamp=np.int64(state.last_timestamp),
             score_sign=np.int64(state.score_sign), empty_user=empty_user,
             empty_item=empty_item, **arrays)
    config.to_json(folder / "config.json")
    Vocabulary(state.item_ids).save(folder / "vocabulary.json")
    write_json(folder / USERS_FILE, {"ids": state.user_ids.tolist()})
    model.save_weights(str(folder / "weights" / "model"))

    sign = np.float32(state.score_sign)  # score = sign * cosine, on the query side
    user_vectors = sign * np.where(arrays["user_filled"][:, None] > 0,
                                   _normalize(arrays["user_table"]), _normalize(empty_user))
    query = CacheQueryModule(state.user_ids, user_vectors.astype(np.float32),
                             sign * _normalize(empty_user))
    tf.saved_model.save(query, str(folder / "query_model"), signatures=query.signatures())
    filled = arrays["item_filled"] > 0
    ids = state.item_ids[filled]
    embeddings = _normalize(arrays["item_table"][filled])
    if not len(ids):
        raise ValueError("FELRec export: no item has a cached representation to index.")
    np.savez(folder / "candidates.npz", ids=ids, embeddings=embeddings)
    max_k = min(config.export.max_k, len(ids))
    names = (["scann"] if len(ids) >= MIN_SCANN_CANDIDATES else []) + ["brute_force"]
    scann = scann_parameters(len(ids), config.export, max_k) if "scann" in names else None
    for name in names:
        index = build_index(name, query.scorer, embeddings, ids, max_k, scann, max_k)
        save_retrieval_model(folder / "retrieval" / name, query, index, ids, embeddings,
                             max_k, max_k)
    if metrics is not None:
        write_json(folder / "metrics.json", metrics)
    felrec = config.model.felrec
    memory = cache_memory(felrec.dim, felrec.history_len, len(state.user_ids),
                          len(state.item_ids))
    memory.update(filled_users=int((arrays["user_filled"] > 0).sum()),
                  filled_items=int(filled.sum()))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_kind": MODEL_KIND,
        "scorer": "cosine", "query_shape": [felrec.dim], "query_features": ["user_id"],
        "embedding_dim": felrec.dim, "num_interests": 1, "item_tower": "felrec-cache",
        "variant": model.variant, "score_sign": int(state.score_sign),
        "parameters": parameter_counts(model), "cache": memory,
        "added_items": None, "vocab_size": len(state.item_ids) + 2,
        "num_candidates": len(ids), "max_len": felrec.history_len, "max_k": max_k,
        "indexes": [name for name in INDEXES if name in names], "scann": scann,
        "scann_candidates_per_probe": max_k if scann else None,
        "last_timestamp": int(state.last_timestamp), "library_version": __version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **file_inventory(folder)}
    write_json(folder / "manifest.json", manifest)


def read_serving_state(run_dir: Union[str, Path]) -> Tuple[ServingState, Dict[str, np.ndarray]]:
    """A FELRec run's `ServingState` and the rest of `cache.npz` (tables, flags,
    empty-history vectors)."""
    with np.load(Path(run_dir) / CACHE_FILE) as stored:
        arrays = {name: stored[name] for name in stored.files}
    state = ServingState(arrays.pop("user_ids"), arrays.pop("item_ids"),
                         arrays.pop("user_recent"), arrays.pop("item_recent"),
                         int(arrays.pop("last_timestamp")),
                         int(arrays.pop("score_sign", 1)))
    return state, arrays


def restore_felrec_model(run_dir: Union[str, Path]
                         ) -> Tuple[FELRecModel, RunConfig, ServingState]:
    """Rebuilds a FELRec run's model (cache included) from `config.json`, `cache.npz`
    and `weights/`.

    Raises:
        RunFormatError: not a FELRec run folder.
    """
    from tfrec_proxy.felrec_training import build_felrec_model, build_variables

    run_dir = Path(run_dir)
    missing = [name for name in ("config.json", CACHE_FILE, "weights/checkpoint")
               if not (run_dir / name).exists()]
    if missing:
        raise RunFormatError(f"{str(run_dir)!r} is not a FELRec run: missing {missing}.")
    config = RunConfig.from_json(run_dir / "config.json")
    state, _ = read_serving_state(run_dir)
    model = build_felrec_model(config, len(state.user_ids), len(state.item_ids))
    build_variables(model)
    model.load_weights(str(run_dir / "weights" / "model")).expect_partial()
    return model, config, state


def _indices(known: np.ndarray, raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of `raw` ids in `known`; unknown ids get new rows after `known`, in order
    of first appearance. Returns `(rows, new ids)`."""
    rows = pd.Index(known).get_indexer(raw)
    unknown = rows < 0
    new_ids = pd.unique(raw[unknown])
    rows[unknown] = len(known) + pd.Index(new_ids).get_indexer(raw[unknown])
    return rows.astype(np.int64), np.asarray(new_ids, np.int64)


def _histories(recent: np.ndarray, owner: np.ndarray, other: np.ndarray,
               num_owners: int) -> Tuple[np.ndarray, np.ndarray]:
    """Histories of new interactions (owner side) after the `[R, L]` recent lists,
    and the owners' recent lists afterwards."""
    length = recent.shape[1]
    padded = np.full((num_owners, length), -1, np.int32)
    padded[:len(recent)] = recent
    real = padded >= 0
    past_owner = np.repeat(np.arange(num_owners), length)[real.ravel()]
    past_other = padded.ravel()[real.ravel()]
    owners = np.concatenate([past_owner, owner])
    others = np.concatenate([past_other, other])
    history = past_neighbours(owners, others, length,
                              rows=len(past_owner) + np.arange(len(owner)))
    return history, recent_neighbours(owners, others, num_owners, length)


def update_cache(run_dir: Union[str, Path], interactions: pd.DataFrame,
                 batch_size: Optional[int] = None) -> Dict[str, int]:
    """Encodes interactions newer than the run's into its cache; rewrites the run.

    Args:
        run_dir: A FELRec run folder.
        interactions: Columns `user_id`, `item_id`, `timestamp` (integers), every
            timestamp >= the run's `last_timestamp` (manifest); any row order (sorted
            by timestamp, stable). Unknown users and items are new rows of the cache.
        batch_size: Interactions per encoder call (default the run's batch size).

    Returns:
        `{"interactions", "new_users", "new_items", "users", "items",
        "num_candidates"}`.

    Raises:
        ValueError: a missing column or non-integer value, a timestamp older than the
            run's, or no interaction; the run is unchanged.
    """
    from tfrec_proxy.felrec_evaluation import OnlineEvaluator

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("model_kind") != MODEL_KIND:
        raise ValueError(f"update_cache needs a FELRec run; {str(run_dir)!r} is of kind "
                         f"{manifest.get('model_kind')!r}.")
    frame = validate_interactions(interactions, source="update_cache interactions")
    model, config, state = restore_felrec_model(run_dir)
    older = frame["timestamp"].to_numpy() < state.last_timestamp
    if older.any():
        row = int(np.flatnonzero(older)[0])
        raise ValueError(f"update_cache interactions must not be older than the run's "
                         f"last timestamp {state.last_timestamp}; row {row} has timestamp "
                         f"{int(frame['timestamp'].iloc[row])} ({int(older.sum())} older "
                         "row(s)). Nothing was changed.")
    frame = frame.sort_values("timestamp", kind="stable")
    users, new_users = _indices(state.user_ids, frame["user_id"].to_numpy(np.int64))
    items, new_items = _indices(state.item_ids, frame["item_id"].to_numpy(np.int64))
    num_users = len(state.user_ids) + len(new_users)
    num_items = len(state.item_ids) + len(new_items)
    model.ensure_capacity(num_users, num_items)
    user_history, user_recent = _histories(state.user_recent, users, items, num_users)
    item_history, item_recent = _histories(state.item_recent, items, users, num_items)
    OnlineEvaluator(model, batch_size or config.train.batch_size).replay(
        {"user": users.astype(np.int32), "item": items.astype(np.int32),
         "user_history": user_history, "item_history": item_history})
    new_state = ServingState(np.concatenate([state.user_ids, new_users]),
                             np.concatenate([state.item_ids, new_items]), user_recent,
                             item_recent, int(frame["timestamp"].max()), state.score_sign)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    export_felrec_run(model, run_dir, config=config, state=new_state, metrics=metrics,
                      overwrite=True)
    written = read_manifest(run_dir)
    return {"interactions": len(frame), "new_users": len(new_users),
            "new_items": len(new_items), "users": num_users, "items": num_items,
            "num_candidates": int(written["num_candidates"])}


def reexport_felrec_run(run_dir: Union[str, Path], target: Optional[Union[str, Path]] = None,
                        *, max_k: Optional[int] = None) -> Path:
    """Rebuilds a FELRec run from its weights and cache and exports it again."""
    run_dir = Path(run_dir)
    target = Path(target) if target is not None else run_dir
    model, config, state = restore_felrec_model(run_dir)
    if max_k is not None:
        config.export.max_k = max_k
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    return export_felrec_run(model, target, config=config, state=state, metrics=metrics,
                             overwrite=target.resolve() == run_dir.resolve())
