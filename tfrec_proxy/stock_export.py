"""A retrieval SavedModel made of stock TensorFlow ops only: raw histories -> top-k ids.

The run folder's `retrieval/scann` SavedModel needs the ScaNN custom op (`Scann>...`),
so it is served only by a TensorFlow (or TF Serving build) with ScaNN linked in. The
SavedModel written by `save_stock_retrieval` holds the query tower, the candidate
embeddings and ids as variables, and the exact chunked top-k (`tfrec_proxy.topk`)
under the run's scorer (dot product, MUR's eq. 4 over `[B, M, d]` queries, ...): a
stock `tensorflow` (`tf.saved_model.load`), `saved_model_cli` or a stock TF Serving
image serves it without `scann` or `tfrec_proxy` installed.

Signatures:

* `serving_default(history int64 [B, L] (+ the tower's context features), k int32 [])
  -> {"ids": int64 [B, k], "scores": float32 [B, k]}`: raw item ids (-1 is padding,
  unknown ids map to the OOV row, as in the run's `query_model`), exact top-k,
  `1 <= k <= max_k`;
* `from_queries(queries float32 [B, *query_shape], k int32 []) -> {"ids", "scores"}`:
  the same top-k from precomputed query embeddings.
"""

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.topk import (DEFAULT_BLOCK_SIZE, DEFAULT_GROUP_SIZE, check_settings,
                              chunked_top_k)

QuerySource = Union[str, Path, Any]


def _query_parts(query: QuerySource) -> Tuple[Any, Callable, Dict[str, tf.TensorSpec],
                                              tf.TensorShape, Optional[Callable]]:
    """(object to track, embed fn, input specs, query shape, score_matrix fn or None).

    `query` is a run's query SavedModel folder, a `savedmodels.QueryModule`, or any
    object whose `embed` is a `tf.function` with an input signature of one dict.
    """
    if isinstance(query, (str, Path)):
        folder = Path(query)
        if not (folder / "saved_model.pb").exists():
            raise FileNotFoundError(f"{folder} is not a SavedModel folder (no saved_model.pb).")
        query = tf.saved_model.load(str(folder))
        signature = query.signatures["serving_default"]
        specs = dict(signature.structured_input_signature[1])
        shape = signature.structured_outputs["embedding"].shape
        matrix = query.signatures.get("score_matrix")
        score = None if matrix is None else (
            lambda queries, candidates: matrix(queries=queries, candidates=candidates)["scores"])
        return query, lambda features: signature(**features)["embedding"], specs, shape, score
    embed = getattr(query, "embed", None)
    signature = getattr(embed, "input_signature", None)
    if not signature or len(signature) != 1 or not isinstance(signature[0], Mapping):
        raise TypeError("query must be a query SavedModel folder, a QueryModule, or an object "
                        "whose `embed` is a tf.function with input_signature=[{name: "
                        f"TensorSpec}}]; got {type(query).__name__}.")
    specs = dict(signature[0])
    shape = embed.get_concrete_function().structured_outputs["embedding"].shape
    scorer = getattr(query, "scorer", None)
    score = None if scorer is None else scorer.score_matrix
    return query, lambda features: embed(features)["embedding"], specs, shape, score


def _resolve_scorer(scorer: Any, fallback: Optional[Callable]) -> Tuple[Any, Optional[Callable]]:
    """(object to track, score_matrix fn or None for the dot product)."""
    if scorer is None:
        return None, fallback
    if isinstance(scorer, str):
        from tfrec_proxy.scoring import build_scorer  # imports the scorer registry
        scorer = build_scorer(scorer)
    if not callable(getattr(scorer, "score_matrix", None)):
        raise TypeError(f"scorer must be a registered scorer name or have score_matrix(); "
                        f"got {type(scorer).__name__}.")
    return scorer, scorer.score_matrix


class StockRetrievalModule(tf.Module):
    """Histories (+ context) or query embeddings, and k -> exact top-k ids and scores.

    Holds the candidates and their ids as variables and runs `chunked_top_k` on them
    (not a Keras `ChunkedTopK` layer, whose SavedModel tracing would only add save time).

    Args:
        embed: `features -> [B, *query_shape]` query embeddings (traced into the graph).
        input_specs: `{name: TensorSpec}` of the features (`"history"` first).
        query_shape: `[d]` or `[M, d]`.
        candidate_ids: `[C]` int64 raw ids by candidate position.
        candidate_embeddings: `[C, d]` float32.
        score_fn: `(queries, [n, d] block) -> [B, n]` scores; None: dot product.
        max_k: Largest k a caller may ask for (max_k are retrieved, then sliced).
        block_size, group_size: `chunked_top_k` settings.
        tracked: Objects whose variables and tables the SavedModel must hold (the
            query model, the scorer).

    Example:

        module = StockRetrievalModule(embed, specs, [64], ids, embeddings, None, 100)
        tf.saved_model.save(module, path, signatures=module.signatures())
    """

    def __init__(self, embed: Callable[[Mapping[str, tf.Tensor]], tf.Tensor],
                 input_specs: Mapping[str, tf.TensorSpec], query_shape: Any,
                 candidate_ids: np.ndarray, candidate_embeddings: np.ndarray,
                 score_fn: Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]],
                 max_k: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 group_size: int = DEFAULT_GROUP_SIZE, tracked: Tuple[Any, ...] = ()) -> None:
        super().__init__()
        self.candidate_ids = tf.Variable(np.asarray(candidate_ids, np.int64),
                                         trainable=False, name="candidate_ids")
        self.candidate_embeddings = tf.Variable(
            np.asarray(candidate_embeddings, np.float32), trainable=False,
            name="candidate_embeddings")
        self.tracked = [item for item in tracked if item is not None]
        self.max_k = int(max_k)
        self._embed, self._score = embed, score_fn
        self._settings = {"block_size": block_size, "group_size": group_size}
        check_settings(self.max_k, len(candidate_ids), block_size, group_size)
        self.retrieve = tf.function(self._retrieve, input_signature=[
            dict(input_specs), tf.TensorSpec([], tf.int32, name="k")])
        self.from_queries = tf.function(self._top_k, input_signature=[
            tf.TensorSpec([None, *query_shape], tf.float32, name="queries"),
            tf.TensorSpec([], tf.int32, name="k")])

    def _top_k(self, queries: tf.Tensor, k: tf.Tensor) -> Dict[str, tf.Tensor]:
        tf.debugging.assert_positive(k, message="k must be >= 1")
        tf.debugging.assert_less_equal(
            k, self.max_k, message=f"k must be <= max_k={self.max_k} fixed at export")
        scores, positions = chunked_top_k(queries, self.candidate_embeddings, self.max_k,
                                          self._score, **self._settings)
        return {"ids": tf.gather(self.candidate_ids, positions[:, :k]),
                "scores": tf.cast(scores[:, :k], tf.float32)}

    def _retrieve(self, features: Mapping[str, tf.Tensor], k: tf.Tensor
                  ) -> Dict[str, tf.Tensor]:
        return self._top_k(tf.cast(self._embed(features), tf.float32), k)

    def signatures(self) -> Dict[str, Any]:
        return {"serving_default": self.retrieve.get_concrete_function(),
                "from_queries": self.from_queries.get_concrete_function()}


def save_stock_retrieval(path: Union[str, Path], query: QuerySource,
                         candidate_ids: np.ndarray, candidate_embeddings: np.ndarray,
                         scorer: Any = None, max_k: int = 100, *,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         group_size: int = DEFAULT_GROUP_SIZE,
                         overwrite: bool = False) -> Path:
    """Writes a stock-op retrieval SavedModel (exact chunked top-k) to `path`.

    Args:
        path: Destination folder (must not exist, or be empty, unless `overwrite`).
        query: The query tower: a run's `query_model/` folder (its `serving_default`
            and `score_matrix` signatures are reused), a `savedmodels.QueryModule`
            (its `embed` and `scorer`), or an object with such an `embed`.
        candidate_ids: `[C]` int64 raw item ids by candidate position.
        candidate_embeddings: `[C, d]` float32 candidate embeddings.
        scorer: A `Scorer` (e.g. `model.scorer`) or registered name (`"dot"`,
            `"mur"`); None takes the query's own scorer (QueryModule.scorer, the
            saved `score_matrix` signature), else the dot product.
        max_k: Largest k served; at most C.
        block_size, group_size: `chunked_top_k` settings.
        overwrite: Replace an existing SavedModel at `path`.

    Returns:
        The SavedModel folder.

    Raises:
        ValueError: mismatched ids / embeddings, a bad max_k, block or group size.
        FileExistsError: `path` holds files and `overwrite` is False.

    Example:

        query = QueryModule(model.query_tower, model.scorer, vocab, max_len, (64,))
        save_stock_retrieval(run_dir / "retrieval" / "stock", query, ids, embeddings,
                             model.scorer, max_k=100)
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True.")
    ids = np.asarray(candidate_ids)
    embeddings = np.asarray(candidate_embeddings, np.float32)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"candidate_ids must be 1-D integers, got {ids.dtype} {ids.shape}.")
    if embeddings.ndim != 2 or len(embeddings) != len(ids) or not len(ids):
        raise ValueError(f"candidate_embeddings must be [C, d] with C = len(candidate_ids) "
                         f"= {len(ids)} > 0, got {embeddings.shape}.")
    if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) \
            or not 1 <= max_k <= len(ids):
        raise ValueError(f"max_k must be an integer in [1, {len(ids)}] (the catalogue), "
                         f"got {max_k!r}.")
    source, embed, specs, shape, own_score = _query_parts(query)
    if shape[-1] != embeddings.shape[1]:
        raise ValueError(f"query embeddings have d = {shape[-1]} but candidates d = "
                         f"{embeddings.shape[1]}.")
    tracked_scorer, score = _resolve_scorer(scorer, own_score)
    module = StockRetrievalModule(embed, specs, list(shape[1:]), ids, embeddings, score,
                                  int(max_k), block_size=block_size, group_size=group_size,
                                  tracked=(source, tracked_scorer))
    tf.saved_model.save(module, str(path), signatures=module.signatures())
    return path
