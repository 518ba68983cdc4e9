"""ScaNN settings tuned to a recall target, measured on real query vectors.

TFRS's `ScaNN` layer takes `num_leaves`, `num_leaves_to_search` and
`num_reordering_candidates` as given, and the export's `scann_parameters` picks them
from the catalogue size alone; neither checks what recall they give. `tune_scann`
measures it: on a sample of query vectors it compares candidate settings with the
exact top-k (`tfrec_proxy.topk.chunked_top_k`) and keeps the fastest setting whose
recall@k meets the target (default recall@10 >= 0.95) on queries it was not chosen on:
the sample is split; on one part the one-sided 95% lower confidence bound of a
setting's recall must meet the target, and then its recall on the held-out part must
too (picking the fastest of many settings near the target on one sample would
otherwise overstate its recall), and the held-out recall is what is reported.

Search, bounded:

* one TFRS `ScaNN` index (k-means tree + asymmetric hashing, TFRS's builder) is built
  per `num_leaves` candidate (default ~sqrt(C), then 2x and 0.5x; `max_builds`,
  `max_seconds`); building is the expensive step;
* on each built tree, `num_leaves_to_search` and the re-ordered candidates are
  query-time settings of ScaNN's searcher, so they are swept without rebuilding:
  leaves searched ascending; for each, re-order counts ascending until the target is
  met (recall grows with both), the first that meets it is timed (min over `repeats`
  batched searches of the sample); a larger leaves-searched count is only tried
  with fewer re-ordered candidates than the best so far, so the sweep stops early.

The result carries the index that was measured (`TunedScaNN`, a TFRS `ScaNN` whose
searches use the chosen query-time settings, so the served index is the measured one:
ScaNN's k-means is randomised and a rebuild gives a slightly different tree), the
settings in `scann_parameters`' format and what the manifest records.
"""

import dataclasses
import math
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.topk import chunked_top_k


class TunedScaNN(tfrs.layers.factorized_top_k.ScaNN):
    """TFRS `ScaNN` that searches with given leaves-searched / re-order counts.

    Args:
        leaves_to_search: Leaves searched per query.
        reorder: Candidates re-scored exactly (>= k).
        **kwargs: TFRS `ScaNN` arguments (`k`, `num_leaves`, ...); the tree is
            built with `num_leaves_to_search` / `num_reordering_candidates` set to the
            largest values the tuner may ask for, which only sets defaults.

    Example:

        index = TunedScaNN(leaves_to_search=5, reorder=100, k=10, num_leaves=1000,
                           num_leaves_to_search=50, num_reordering_candidates=400)
        index.index(tf.constant(embeddings))
        scores, positions = index(queries)  # [B, 10] each
    """

    def __init__(self, *, leaves_to_search: int, reorder: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leaves_to_search = int(leaves_to_search)
        self.reorder = int(reorder)

    def searcher(self) -> Any:
        """The ScaNN searcher of the built index (`scann_ops` searcher)."""
        from scann.scann_ops.py import scann_ops

        if self._serialized_searcher is None:  # TFRS 0.7.7's attribute (pinned)
            raise ValueError("The `index` method must be called first.")
        return scann_ops.searcher_from_module(self._serialized_searcher)

    def call(self, queries: tf.Tensor, k: Optional[int] = None
             ) -> Tuple[tf.Tensor, tf.Tensor]:
        """`[B, d]` queries -> `([B, k] scores, [B, k] positions or identifiers)`.

        TFRS's `ScaNN.call` with the tuned query-time settings passed to the search.
        """
        k = self._k if k is None else k
        if self.query_model is not None:
            queries = self.query_model(queries)
        if queries.shape.rank != 2:
            raise ValueError(f"Queries must be of rank 2, got {queries.shape.rank}.")
        result = self.searcher().search_batched_parallel(
            queries, final_num_neighbors=k, leaves_to_search=self.leaves_to_search,
            pre_reorder_num_neighbors=max(self.reorder, k))
        if self._identifiers is None:
            return result.distances, result.indices
        return result.distances, tf.gather(self._identifiers, result.indices)


@dataclasses.dataclass
class ScannTuning:
    """What `tune_scann` chose and measured.

    Attributes:
        settings: `{"num_leaves", "num_leaves_to_search", "num_reordering_candidates"}`
            (the format of `savedmodels.scann_parameters` / `build_index`).
        recall: Recall@k of `settings` against the exact top-k on the held-out
            queries (on the selection queries when `holdout` is 0).
        recall_selection, recall_lower_bound, confidence: Its recall on the
            selection queries and that recall's one-sided `confidence` lower bound.
        queries_per_second: Of `settings` (batched, best of the repeats).
        met_target: Whether the lower bound and the held-out recall meet
            `target_recall` (if no setting does, the highest-recall one is returned).
        target_recall, k: The target.
        build_seconds: Building the chosen `num_leaves`' index.
        tuning_seconds: The whole tuning, exact top-k and builds included.
        index_bytes: Bytes of the chosen index's variables (tree, codes, re-order data).
        trials: Every measured setting (recall, and queries/s for those timed).
        index: The measured `TunedScaNN` (identifiers = candidate positions).
    """

    settings: Dict[str, int]
    recall: float
    recall_selection: float
    recall_lower_bound: float
    confidence: float
    queries_per_second: float
    met_target: bool
    target_recall: float
    k: int
    build_seconds: float
    tuning_seconds: float
    index_bytes: int
    trials: List[Dict[str, Any]]
    index: Any = dataclasses.field(repr=False, default=None)

    def to_manifest(self) -> Dict[str, Any]:
        """JSON-ready summary (no index) for a run's manifest."""
        summary = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "index"}
        summary["candidates_tried"] = len(self.trials)
        return summary


def _positive_ints(name: str, values: Sequence[int]) -> List[int]:
    values = sorted({int(v) for v in values})
    if not values or values[0] < 1:
        raise ValueError(f"{name} must be a non-empty list of integers >= 1, got {values}.")
    return values


def _geometric(low: int, high: int, factor: float = 2.0) -> List[int]:
    values, value = [], float(low)
    while value < high:
        values.append(int(round(value)))
        value *= factor
    return sorted(set(values + [high]))


def _timed(fn: Any, repeats: int) -> List[float]:
    """Wall-clock seconds of `repeats` calls of `fn`."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - began)
    return seconds


def _variable_bytes(variable: tf.Variable) -> int:
    if variable.dtype == tf.string:
        return int(sum(len(item) for item in np.ravel(variable.numpy())))
    return int(np.prod(variable.shape)) * variable.dtype.size


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of `exact` ([Q, k]) found in `found` ([Q, >= k])."""
    return float(np.mean(_recalls(found, exact)))


def _recalls(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    k = exact.shape[1]
    return np.array([len(set(f[:k].tolist()) & set(e.tolist())) / k
                     for f, e in zip(found, exact)])


def tune_scann(candidates: np.ndarray, queries: np.ndarray, k: int = 10,
               target_recall: float = 0.95, *, num_neighbors: Optional[int] = None,
               num_leaves: Optional[Sequence[int]] = None,
               leaves_to_search: Optional[Sequence[int]] = None,
               reorder: Optional[Sequence[int]] = None,
               exact: Optional[np.ndarray] = None, confidence: float = 0.95,
               holdout: float = 0.5, repeats: int = 3, max_builds: int = 3,
               max_seconds: Optional[float] = None) -> ScannTuning:
    """Picks the fastest ScaNN settings whose recall@k meets `target_recall`.

    Args:
        candidates: `[C, d]` float32 catalogue (dot-product search).
        queries: `[Q, d]` sample of real query (probe) vectors, e.g. a thousand
            validation queries; for multi-vector queries, the scorer's
            `probe_vectors` flattened to `[Q * P, d]`.
        k: The k of recall@k.
        target_recall: In (0, 1].
        num_neighbors: Results the served index returns per probe (the export's
            probe k, >= k; default k); re-order counts start there.
        num_leaves: Trees to try, in order (default ~sqrt(C), 2x, 0.5x).
        leaves_to_search: Leaves-searched grid (default 1, 2, 4, ... up to the
            leaves, at most 256).
        reorder: Re-order grid (default num_neighbors x 1, 1.5, 2, 3, 4, ... 16).
        exact: `[Q, k]` exact top-k positions, if already known.
        confidence: The selection queries' recall must meet the target with this
            one-sided confidence (mean - z x standard error); 0: the mean itself.
        holdout: Fraction of the queries (a fixed random subset) held out to
            confirm a selected setting; 0 selects and reports on all of them.
        repeats: Timed searches of all the queries per setting (the best is kept).
        max_builds: Most trees built; max_seconds: no new tree after this long.

    Returns:
        A `ScannTuning` (its `index` is ready to serve).

    Raises:
        ValueError: bad shapes or arguments.

    Example:

        tuning = tune_scann(item_embeddings, validation_queries, k=10)
        tuning.settings  # {"num_leaves": 1000, "num_leaves_to_search": 2, ...}
        scores, positions = tuning.index(tf.constant(validation_queries))
    """
    start = time.perf_counter()
    candidates = np.asarray(candidates, np.float32)
    queries = np.asarray(queries, np.float32)
    if candidates.ndim != 2 or not len(candidates):
        raise ValueError(f"candidates must be a non-empty [C, d] matrix, got "
                         f"{candidates.shape}.")
    if queries.ndim != 2 or not len(queries) or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries must be a non-empty [Q, d = {candidates.shape[1]}] "
                         f"matrix, got {queries.shape}.")
    size = len(candidates)
    num_neighbors = k if num_neighbors is None else num_neighbors
    for name, value in (("k", k), ("num_neighbors", num_neighbors), ("repeats", repeats),
                        ("max_builds", max_builds)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if k > size or num_neighbors > size or num_neighbors < k:
        raise ValueError(f"need k <= num_neighbors <= catalogue size ({size}); got k={k}, "
                         f"num_neighbors={num_neighbors}.")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}.")
    if not 0 <= confidence < 1:
        raise ValueError(f"confidence must be in [0, 1), got {confidence!r}.")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}.")
    z = statistics.NormalDist().inv_cdf(confidence) if confidence > 0 else 0.0
    base = max(1, round(math.sqrt(size)))
    leaf_grid = [int(n) for n in (num_leaves or (base, 2 * base, max(1, base // 2)))]
    leaf_grid = list(dict.fromkeys(min(max(n, 1), size) for n in leaf_grid))
    reorder_grid = _positive_ints("reorder", reorder or [
        min(size, round(num_neighbors * f)) for f in (1, 1.5, 2, 3, 4, 6, 8, 12, 16)])
    reorder_grid = [r for r in reorder_grid if r >= num_neighbors] or [num_neighbors]
    if exact is None:
        exact = chunked_top_k(tf.constant(queries), tf.constant(candidates), k)[1].numpy()
    exact = np.asarray(exact)[:, :k]
    held = int(round(holdout * len(queries))) if len(queries) > 1 else 0
    order = np.random.default_rng(0).permutation(len(queries))
    parts = {"selection": order[held:], "holdout": order[:held]}
    tensors = {name: tf.constant(queries[rows]) for name, rows in parts.items()}
    every_query = tf.constant(queries)

    def recall_of(found: np.ndarray, part: str) -> Tuple[float, float]:
        recalls = _recalls(found, exact[parts[part]])
        error = recalls.std(ddof=1) / math.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
        return float(recalls.mean()), float(recalls.mean() - z * error)

    trials: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None  # fastest trial meeting the target
    fallback: Optional[Dict[str, Any]] = None  # highest recall, if none meets it
    for tree_index, leaves in enumerate(leaf_grid[:max_builds]):
        if tree_index and max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        search_grid = _positive_ints("leaves_to_search", leaves_to_search or _geometric(
            1, min(leaves, 256)))
        search_grid = [s for s in search_grid if s <= leaves] or [leaves]
        built = time.perf_counter()
        layer = TunedScaNN(k=num_neighbors, num_leaves=leaves,
                           num_leaves_to_search=search_grid[-1],
                           num_reordering_candidates=reorder_grid[-1],
                           leaves_to_search=search_grid[-1], reorder=reorder_grid[-1])
        layer.index(tf.constant(candidates))
        build_seconds = time.perf_counter() - built
        searcher = layer.searcher()

        def search(batch: tf.Tensor, searched: int, reordered: int) -> np.ndarray:
            return searcher.search_batched_parallel(
                batch, final_num_neighbors=num_neighbors, leaves_to_search=searched,
                pre_reorder_num_neighbors=reordered).indices.numpy()

        reorder_cap = len(reorder_grid)  # a larger leaves count must use fewer re-orders
        ceiling = -1.0  # best recall of the previous leaves count (plateau check)
        for searched in search_grid:
            met, reached = None, -1.0
            for position, reordered in enumerate(reorder_grid[:reorder_cap]):
                recall, lower = recall_of(search(tensors["selection"], searched, reordered),
                                          "selection")
                trial = {"num_leaves": leaves, "num_leaves_to_search": searched,
                         "num_reordering_candidates": reordered, "recall": recall,
                         "recall_lower_bound": lower}
                trials.append(trial)
                if fallback is None or recall > fallback["recall"]:
                    fallback = dict(trial, build_seconds=build_seconds, layer=layer)
                if lower >= target_recall:
                    if held:
                        trial["recall_holdout"] = recall_of(
                            search(tensors["holdout"], searched, reordered), "holdout")[0]
                    if trial.get("recall_holdout", recall) >= target_recall:
                        met = position
                        break
                if recall <= reached:  # more re-ordering no longer helps
                    break
                reached = recall
            if met is None:
                if reached <= ceiling + 1e-4:  # more leaves no longer help either
                    break
                ceiling = reached
                continue
            seconds = _timed(lambda: search(every_query, searched, reorder_grid[met]), repeats)
            trial["queries_per_second"] = len(queries) / min(seconds)
            trial["queries_per_second_median"] = len(queries) / statistics.median(seconds)
            if best is None or trial["queries_per_second"] > best["queries_per_second"]:
                best = dict(trial, build_seconds=build_seconds, layer=layer)
            reorder_cap = met
            if reorder_cap == 0:
                break

    winner = best or fallback
    layer, build_seconds = winner.pop("layer"), winner.pop("build_seconds")
    layer.leaves_to_search = winner["num_leaves_to_search"]
    layer.reorder = winner["num_reordering_candidates"]
    if held and "recall_holdout" not in winner:
        winner["recall_holdout"] = recall_of(layer(tensors["holdout"])[1].numpy(),
                                             "holdout")[0]
    if "queries_per_second" not in winner:
        seconds = _timed(lambda: layer(every_query)[1].numpy(), repeats)
        winner["queries_per_second"] = len(queries) / min(seconds)
    settings = {name: int(winner[name]) for name in
                ("num_leaves", "num_leaves_to_search", "num_reordering_candidates")}
    recall = winner.get("recall_holdout", winner["recall"])
    return ScannTuning(
        settings=settings, recall=float(recall), recall_selection=float(winner["recall"]),
        recall_lower_bound=float(winner["recall_lower_bound"]), confidence=confidence,
        queries_per_second=float(winner["queries_per_second"]),
        met_target=bool(winner["recall_lower_bound"] >= target_recall
                        and recall >= target_recall),
        target_recall=target_recall, k=k, build_seconds=build_seconds,
        tuning_seconds=time.perf_counter() - start,
        index_bytes=sum(_variable_bytes(v) for v in layer.variables),
        trials=trials, index=layer)
