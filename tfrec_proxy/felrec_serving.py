"""Serving a FELRec run: users are queried by id, vectors come from the cache.

`load_run` returns a `FELRecRun` for a FELRec run folder (manifest `model_kind`
"felrec"; format in `tfrec_proxy.felrec_export`). A FELRec user is its cached
representation, not a history of item ids, so:

* `run.recommend_users(user_ids, k)` -> top-k raw item ids and cosine scores per user
  (ScaNN + exact re-score, or brute force), `run.embed_users(user_ids)` -> `[B, d]`
  normalised query vectors, `run.scores(user_ids, item_ids)` -> `[B, K]` cosines;
* unknown users (and users without a cached vector) get the encoder's
  representation of an empty history, the vector FELRec itself gives a user at its
  first interaction (`unknown_users` lists them); unknown items are never retrieved
  (only items with a cached vector are indexed) and are scored with the empty-history
  item vector;
* `run.update_cache(interactions)` encodes newer interactions with the trained
  encoder and rewrites the run atomically, so new users and items become servable
  without retraining;
* `recommend(histories)` / `embed(histories)` raise a `ValueError` pointing here.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.run_format import USERS_FILE, read_arrays, read_json, read_manifest
from tfrec_proxy.serving import Run, load_saved_model

_BY_USER = ("FELRec runs are queried by user id (a user is its cached representation): "
            "use run.recommend_users([...], k) / run.embed_users([...]) (CLI: tfrec-proxy "
            "recommend --run DIR --user ID).")


def _ids(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or not len(array) or array.dtype.kind not in "iu":
        raise ValueError(f"{what} must be a non-empty 1-D sequence of integer ids, got "
                         f"{np.asarray(values)!r:.120}.")
    return array.astype(np.int64)


class FELRecRun(Run):
    """A loaded FELRec run folder (see the module docstring).

    Example:

        run = load_run("saved_models/felrec")
        ids, scores = run.recommend_users([12, 40], k=10)
        run.update_cache(pd.DataFrame({"user_id": [9001], "item_id": [77],
                                       "timestamp": [run.last_timestamp + 1]}))
        ids, scores = run.recommend_users([9001], k=10)  # a user unseen in training
    """

    def __init__(self, run_dir: Any) -> None:
        super().__init__(run_dir)
        self._load_cache_ids()

    def _load_cache_ids(self) -> None:
        self.users = Vocabulary(read_json(self.path / USERS_FILE)["ids"])
        self._empty_item: Optional[np.ndarray] = None

    @property
    def last_timestamp(self) -> int:
        """The latest timestamp in the cache (`update_cache` takes newer ones)."""
        return int(self.manifest["last_timestamp"])

    @property
    def cache_memory(self) -> Dict[str, int]:
        """Cache sizes and bytes (per entity, this run, 1M users + 1M items)."""
        return dict(self.manifest["cache"])

    def unknown_users(self, user_ids: Sequence[int]) -> List[int]:
        """The distinct ids of `user_ids` that the cache has no row for."""
        ids = _ids(user_ids, "user_ids")
        unknown = ids[self.users.lookup(ids) == Vocabulary.OOV]
        return list(dict.fromkeys(unknown.tolist()))

    def embed_users(self, user_ids: Sequence[int]) -> np.ndarray:
        """`[B, d]` L2-normalised query vectors (unknown users: the empty-history one)."""
        ids = _ids(user_ids, "user_ids")
        return self._query_model.signatures["serving_default"](
            user_id=tf.constant(ids))["embedding"].numpy()

    def _item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        rows = self.candidate_positions(item_ids)
        if self._empty_item is None:
            empty = read_arrays(self.path / "cache.npz", ["empty_item"])["empty_item"]
            self._empty_item = (empty / max(np.linalg.norm(empty), 1e-12)).astype(np.float32)
        vectors = np.tile(self._empty_item, (len(item_ids), 1))
        vectors[rows >= 0] = self.candidate_embeddings[rows[rows >= 0]]
        return vectors

    def candidate_positions(self, item_ids: Sequence[int]) -> np.ndarray:
        """Candidate positions of raw item ids (-1: not retrievable)."""
        order = np.argsort(self.candidate_ids, kind="stable")
        ids = _ids(item_ids, "item_ids")
        found = np.minimum(np.searchsorted(self.candidate_ids[order], ids),
                           len(order) - 1)
        return np.where(self.candidate_ids[order][found] == ids, order[found], -1)

    def scores(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        """`[B, K]` cosine similarities of users and items (§2.7)."""
        queries = self.embed_users(user_ids)
        items = self._item_vectors(_ids(item_ids, "item_ids"))
        return self.scorer.score_matrix(queries, items).numpy()

    def recommend_users(self, user_ids: Sequence[int], k: int = 10,
                        index: Optional[str] = None, *, exclude_seen: bool = False
                        ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items per user.

        Args:
            user_ids: Raw user ids (unknown ones get the empty-history vector).
            k: Items per user, `1 <= k <= max_k`.
            index: "scann" or "brute_force" (default the run's first).
            exclude_seen: Drop the user's last `history_len` items (those the run
                keeps in `cache.npz`'s `user_recent`); k + their number must not
                exceed `max_k`.

        Returns:
            `(ids, scores)`: int64 `[B, k]` raw item ids, float32 `[B, k]` cosines.
        """
        self._check_k(k)
        ids = _ids(user_ids, "user_ids")
        retrieval = self._index(index)
        seen = self._recent_items(ids) if exclude_seen else [set() for _ in ids]
        fetch = k + max(len(row_seen) for row_seen in seen)
        if fetch > min(self.max_k, len(self.candidate_ids)):
            raise ValueError(f"exclude_seen needs k + seen items = {fetch} results, more "
                             f"than max_k={self.max_k} (or the {len(self.candidate_ids)} "
                             "indexed items); ask for a smaller k or re-export with a "
                             "larger --max-k.")
        result = retrieval.signatures["serving_default"](
            user_id=tf.constant(ids), k=tf.constant(fetch, tf.int32))
        items, scores = result["ids"].numpy(), result["scores"].numpy()
        if not exclude_seen:
            return items[:, :k], scores[:, :k]
        keep = np.array([[item not in row_seen for item in row]
                         for row, row_seen in zip(items.tolist(), seen)], dtype=bool)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)

    def _recent_items(self, user_ids: np.ndarray) -> List[set]:
        stored = read_arrays(self.path / "cache.npz", ["user_recent", "item_ids"])
        recent, item_ids = stored["user_recent"], stored["item_ids"]
        rows = self.users.lookup(user_ids).astype(np.int64) - 2
        return [set() if row < 0 else set(item_ids[recent[row][recent[row] >= 0]].tolist())
                for row in rows]

    def update_cache(self, interactions: Any, batch_size: Optional[int] = None
                     ) -> Dict[str, int]:
        """Encodes newer interactions into the cache and reloads the run (see
        `tfrec_proxy.felrec_export.update_cache`)."""
        from tfrec_proxy.felrec_export import update_cache

        report = update_cache(self.path, interactions, batch_size)
        self.manifest = read_manifest(self.path)
        self.vocab = Vocabulary.load(self.path / "vocabulary.json")
        self._query_model = load_saved_model(self.path / "query_model")
        from tfrec_proxy.serving import SavedScorer

        self.scorer = SavedScorer(self._query_model)
        self._load_candidates()
        self._load_cache_ids()
        return report

    def recommend(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(_BY_USER)

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(_BY_USER)

    def add_items(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("FELRec runs add items through interactions: "
                         "run.update_cache(frame of user_id, item_id, timestamp).")
