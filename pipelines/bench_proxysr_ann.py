"""Benchmark: ProxySR's ANN path (ScaNN candidates by the probe + exact eq. 7 re-rank)
against exact eq. 7 brute force over the whole catalogue: recall@k and speed.

ProxySR scores items by `-||a - I_perp||^2` (eq. 7), not an inner product. An exported
run generates candidates with a ScaNN (dot-product) index searched by the probe
`a_perp = a - (a.v) v` (`ProxyDistanceScorer.probe_vectors`), then re-ranks them exactly
(`score_candidates`); the probe ranks by `2 a_perp.I` and drops `||I_perp||^2`, which
lies in [0, 1] for unit-ball items. This script measures what that costs in recall.

Code paths (the product's, not re-implementations): the index is
`savedmodels.build_index("scann", ...)` with `scann_parameters(N, ExportConfig(max_k=L),
L)` and the candidate list length `probe_k = L` (what `export_run` builds for
`config.export.max_k = L`); the query path is `RetrievalModule._generate_and_rescore`
(probe -> ScaNN -> de-duplicate -> `score_candidates` -> top-k), i.e. the retrieval
SavedModel after its query tower; the reference is `build_index("brute_force", ...)`
(`ScorerBruteForce`: `score_matrix` over every item, TFRS top-k). Both run as traced
`tf.function`s over the same packed query batches.

Data (fixed `--seed`), d = `--dim`, N = `--catalogue` items in the unit ball as ProxySR
keeps them: directions isotropic (`--clusters 0`) or a unit centre of `--clusters`
plus N(0, `--cluster-noise`^2 / d I) noise, normalised; norms `1 - spread * U(0, 1)`
for each `--spreads` value (0.1: near the sphere, as trained ProxySR items; 1: uniform
in [0, 1]); the same directions for every spread. Queries are `pack_query(p, s, v)`
with v a random unit normal and p a random proxy in the unit ball (norm U(0.5, 1)):

* `targeted`: s = I* - p + noise for a random catalogue item I* (noise norm
  `--query-noise`), so a_perp = I*_perp + noise_perp: the query sits near an item,
  as a trained model puts it near the next item; ||a_perp|| ~ ||I*||;
* `random`: s ~ N(0, I/d) (norm ~ 1), unrelated to the items; ||a_perp|| ~ 1.2;
* `short`: as `random` with p and s scaled by `--short-scale` (||a_perp|| ~ 0.1).

`--trained` adds a tiny ProxySR model trained here (synthetic data, `--trained-items`
items, `--encoder proxysr --item-tower shared`, margin loss, `--trained-epochs`): its
candidate table and its test-history queries. That table is NOT kept in the unit ball
(only the encoder's own history table is), so its norms exceed 1;
`--trained-item-norm train` L2-normalises the candidates (`ModelConfig.item_norm`).

For each (items, queries, L in `--lengths`): recall@k of the ANN path against the
exact top-k; `probe_exact_recall`, the recall if the candidates were the EXACT top-L
by the probe's dot product (no ScaNN error: what is lost to the dropped
`||I_perp||^2` alone); `probe_len_99`, the shortest such exact-probe list reaching
recall 0.99; and the latency of one pass over `--queries` queries in batches of
`--batch`, ANN vs brute force, in rotated order over `--repeats` rounds (min/median),
with the speed ratio brute force / ANN (medians) and queries/s. ScaNN's searches use
ScaNN's own threads; TF_NUM_*_THREADS govern the TF ops.

Results: a markdown table on stdout and one JSON line per setting appended to
`pipelines/results/proxysr_ann.jsonl` (`proxysr_ann_quick.jsonl` with `--quick`).

Usage:
    python pipelines/bench_proxysr_ann.py                      # 100k items, d = 64
    python pipelines/bench_proxysr_ann.py --catalogue 1000000  # 1M items
    python pipelines/bench_proxysr_ann.py --quick              # 2k items, seconds
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2; import first)
from tfrec_proxy._tf import tf
from tfrec_proxy.config import ExportConfig
from tfrec_proxy.layers.proxysr import ProxyDistanceScorer, pack_query
from tfrec_proxy.savedmodels import RetrievalModule, build_index, scann_parameters

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (10, 50, 100, 200, 500)
QUERY_KINDS = ("targeted", "random", "short")
QUICK = {"catalogue": 2000, "dim": 16, "queries": 100, "batch": 50, "repeats": 2,
         "lengths": [10, 50, 200], "spreads": [0.1, 1.0]}


# --- data ---------------------------------------------------------------------------

def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def item_directions(rng: np.random.Generator, count: int, dim: int, clusters: int = 0,
                    cluster_noise: float = 0.5) -> np.ndarray:
    """`[count, dim]` unit directions: isotropic (`clusters=0`) or around unit centres."""
    if clusters <= 0:
        return unit_rows(rng.standard_normal((count, dim))).astype(np.float32)
    centres = unit_rows(rng.standard_normal((clusters, dim)))
    noise = rng.standard_normal((count, dim)) * cluster_noise / np.sqrt(dim)
    return unit_rows(centres[rng.integers(0, clusters, count)] + noise).astype(np.float32)


def unit_ball_items(rng: np.random.Generator, directions: np.ndarray,
                    spread: float) -> np.ndarray:
    """Items with norms `1 - spread * U(0, 1)` (in the unit ball)."""
    if not 0 <= spread <= 1:
        raise ValueError(f"spread must be in [0, 1], got {spread}.")
    norms = 1.0 - spread * rng.uniform(0.0, 1.0, (len(directions), 1))
    return (directions * norms).astype(np.float32)


def synthetic_queries(rng: np.random.Generator, kind: str, items: np.ndarray, count: int,
                      query_noise: float = 0.3, short_scale: float = 0.1) -> np.ndarray:
    """`[count, 2, d]` packed queries `pack_query(p, s, v)` (see the module docstring)."""
    dim = items.shape[1]
    v = unit_rows(rng.standard_normal((count, dim)))
    p = unit_rows(rng.standard_normal((count, dim))) * rng.uniform(0.5, 1.0, (count, 1))
    if kind == "targeted":
        noise = unit_rows(rng.standard_normal((count, dim))) * query_noise
        s = items[rng.integers(0, len(items), count)] - p + noise
    elif kind in ("random", "short"):
        s = rng.standard_normal((count, dim)) / np.sqrt(dim)
        if kind == "short":
            p, s = p * short_scale, s * short_scale
    else:
        raise ValueError(f"unknown query kind {kind!r}; expected one of {QUERY_KINDS}.")
    packed = pack_query(tf.constant(p, tf.float32), tf.constant(s, tf.float32),
                        tf.constant(v, tf.float32))
    return packed.numpy()


def trained_geometry(num_items: int, dim: int, epochs: int, queries: int, seed: int,
                     item_norm: str = "none") -> Tuple[np.ndarray, np.ndarray, Dict]:
    """(items `[N, d]`, packed test queries `[Q, 2, d]`, info) of a tiny ProxySR model
    trained on synthetic data (no export); `item_norm` is `ModelConfig.item_norm`."""
    from tfrec_proxy.config import RunConfig
    from tfrec_proxy.training import train

    config = RunConfig()
    syn = config.data.synthetic
    syn.num_items, syn.num_users, syn.num_clusters, syn.seq_len, syn.seed = (
        num_items, max(1000, num_items // 2), 20, 20, seed)
    config.data.max_len = 10
    model = config.model
    model.encoder, model.item_tower, model.loss = "proxysr", "shared", "margin"
    model.embedding_dim, model.num_proxies, model.sampled_negatives = dim, 16, 100
    model.item_norm = item_norm
    config.train.epochs, config.train.early_stopping_patience = epochs, 0
    config.train.batch_size = 256
    start = time.perf_counter()
    result = train(config, export=False, verbose=0)
    seconds = time.perf_counter() - start
    items = result.model.item_embeddings(result.data.vocab.size)[2:].astype(np.float32)
    histories = result.data.split.test.history[:queries]
    packed = np.asarray(result.model.query_embeddings(histories), np.float32)
    info = {"train_seconds": seconds, "epochs": epochs, "num_items": len(items),
            "item_tower": model.item_tower, "item_norm": item_norm,
            "test_metrics": {name: float(value) for name, value in result.metrics.items()
                             if name.count("/") == 1 and not name.endswith("/count")
                             and isinstance(value, (int, float))}}
    return items, packed, info


# --- the two query paths -----------------------------------------------------------

class PackedQueries(tf.Module):
    """`QueryModule` stand-in for `RetrievalModule`: the queries arrive packed, so only
    the run's scorer is used (no query tower, no vocabulary)."""

    def __init__(self, scorer: tf.keras.layers.Layer) -> None:
        super().__init__()
        self.scorer = scorer
        self.query_tower = None


@dataclasses.dataclass
class QueryPath:
    """A traced query path: packed `[B, 2, d]` -> top-k positions `[B, k]`."""

    name: str
    fn: Callable[[tf.Tensor], tf.Tensor]
    build_seconds: float
    scann: Optional[Dict[str, int]] = None

    def run(self, batches: Sequence[tf.Tensor]) -> np.ndarray:
        return np.concatenate([self.fn(b).numpy() for b in batches])


def ann_path(items: np.ndarray, length: int, k: int, export: ExportConfig) -> QueryPath:
    """The exported ScaNN retrieval of a run with `max_k = probe_k = length`."""
    count, dim = items.shape
    length = min(length, count)
    scorer = ProxyDistanceScorer()
    scann = scann_parameters(count, dataclasses.replace(export, max_k=length), length)
    ids = np.arange(count, dtype=np.int64)
    start = time.perf_counter()
    index = build_index("scann", scorer, items, ids, length, scann, length)
    seconds = time.perf_counter() - start
    module = RetrievalModule(PackedQueries(scorer), index, ids, items, max_k=length,
                             probe_k=length)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, dim], tf.float32)])
    def query(queries: tf.Tensor) -> tf.Tensor:
        return module._generate_and_rescore(queries)[1][:, :k]

    return QueryPath(f"ann@{length}", query, seconds, scann)


def exact_path(items: np.ndarray, k: int) -> QueryPath:
    """The exported brute-force retrieval (eq. 7 over every item, TFRS top-k)."""
    count, dim = items.shape
    start = time.perf_counter()
    index = build_index("brute_force", ProxyDistanceScorer(), items,
                        np.arange(count, dtype=np.int64), k, None, k)
    seconds = time.perf_counter() - start

    @tf.function(input_signature=[tf.TensorSpec([None, 2, dim], tf.float32)])
    def query(queries: tf.Tensor) -> tf.Tensor:
        return index(queries, k=k)[1]

    return QueryPath("exact", query, seconds)


# --- measurements ------------------------------------------------------------------

def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth|."""
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(found, truth)]))


def probe_ranks(queries: np.ndarray, items: np.ndarray, truth: np.ndarray,
                chunk: int = 32) -> np.ndarray:
    """`[Q, k]` 0-based rank of each exact top-k item in its query's EXACT probe order
    (items with a larger `a_perp.I`); an exact probe list of length L holds it iff
    rank < L."""
    probes = ProxyDistanceScorer().probe_vectors(tf.constant(queries))[:, 0].numpy()
    ranks = np.empty(truth.shape, np.int64)
    for start in range(0, len(queries), chunk):
        scores = probes[start:start + chunk] @ items.T
        target = np.take_along_axis(scores, truth[start:start + chunk], axis=1)
        for row in range(len(scores)):
            ranks[start + row] = (scores[row][None, :] > target[row][:, None]).sum(axis=1)
    return ranks


def interleaved(fns: List[Callable[[], object]], repeats: int) -> List[List[float]]:
    """Seconds of `repeats` rounds of every fn, the order rotated each round (drifting
    load from other processes hits every path alike)."""
    times = [[] for _ in fns]
    for round_ in range(repeats):
        for j in np.roll(np.arange(len(fns)), round_):
            start = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - start)
    return times


def stats(times: List[float]) -> Dict[str, float]:
    return {"min": min(times), "median": statistics.median(times)}


def geometry_stats(items: np.ndarray, queries: np.ndarray) -> Dict[str, float]:
    """Quantiles of the item norms and of the probe length ||a_perp||."""
    a, v = queries[:, 0], queries[:, 1]
    a_perp = a - np.sum(a * v, axis=1, keepdims=True) * v
    norms, perp = np.linalg.norm(items, axis=1), np.linalg.norm(a_perp, axis=1)
    return {"item_norm_p05": float(np.quantile(norms, 0.05)),
            "item_norm_median": float(np.median(norms)),
            "a_perp_p05": float(np.quantile(perp, 0.05)),
            "a_perp_median": float(np.median(perp))}


def benchmark(items: np.ndarray, queries: np.ndarray, lengths: Sequence[int], *,
              k: int = 10, batch: int = 100, repeats: int = 3,
              export: Optional[ExportConfig] = None,
              paths: Optional[Dict[int, QueryPath]] = None) -> List[Dict]:
    """One row per candidate list length L: ANN recall@k against exact eq. 7, the
    exact-probe recall, and ANN / brute-force latency (see the module docstring).

    Args:
        items: `[N, d]` float32 catalogue. queries: `[Q, 2, d]` packed queries.
        lengths: Candidate list lengths L (`probe_k = max_k = L`).
        export: ScaNN overrides (`scann_num_leaves`, ...); default the export's.
        paths: Already built ANN paths by L (reused across query sets), filled in.
    """
    export = export or ExportConfig()
    paths = {} if paths is None else paths
    items = np.ascontiguousarray(items, np.float32)
    batches = [tf.constant(queries[i:i + batch], tf.float32)
               for i in range(0, len(queries), batch)]
    exact = paths.get("exact") or exact_path(items, k)
    paths["exact"] = exact
    truth = exact.run(batches)  # also traces
    ranks = probe_ranks(queries, items, truth)
    runnable, rows = [], []
    for length in lengths:
        if length not in paths:
            paths[length] = ann_path(items, length, k, export)
        path, error = paths[length], None
        try:
            found = path.run(batches)  # traces; fails if ScaNN returns < L hits
        except tf.errors.InvalidArgumentError as exc:
            lines = [line for line in str(exc).splitlines() if "Input to" in line]
            found, error = None, (lines or str(exc).splitlines())[0].strip()[:300]
        rows.append({"L": length, "scann": path.scann,
                     "build_seconds": path.build_seconds,
                     "recall_ann": None if found is None else recall(found, truth),
                     "probe_exact_recall": float(np.mean(ranks < length)),
                     "error": error})
        if found is not None:
            runnable.append((rows[-1], path))
    times = interleaved([lambda: exact.run(batches)] +
                        [lambda p=p: p.run(batches) for _, p in runnable], repeats)
    exact_times = times[0]
    common = {"N": len(items), "d": items.shape[1], "k": k, "queries": len(queries),
              "batch": batch, "repeats": repeats,
              "probe_len_99": int(np.quantile(ranks, 0.99, method="higher")) + 1,
              "probe_len_max": int(ranks.max()) + 1,
              "exact_s": stats(exact_times),
              "exact_qps": len(queries) / statistics.median(exact_times),
              **geometry_stats(items, queries)}
    for row in rows:
        row.update(common)
    for (row, _), ann_times in zip(runnable, times[1:]):
        row.update(ann_s=stats(ann_times),
                   ann_qps=len(queries) / statistics.median(ann_times),
                   speedup=statistics.median(exact_times) / statistics.median(ann_times),
                   speedup_min=min(exact_times) / min(ann_times))
    return rows


# --- script -------------------------------------------------------------------------

def print_table(rows: List[Dict]) -> None:
    ms = lambda s: f"{s['min'] * 1e3:.1f} / {s['median'] * 1e3:.1f}"  # noqa: E731
    print("| items | queries | median ‖a⊥‖ | L | ScaNN leaves / searched / reorder "
          "| recall@10 ANN | recall@10 exact probe top-L | ANN ms (min / med) "
          "| exact ms (min / med) | speed-up exact/ANN (med) | ANN q/s | exact q/s |")
    print("|" + "---|" * 12)
    summary = {}
    for r in rows:
        s = r["scann"]
        rec = "error" if r["recall_ann"] is None else f"{r['recall_ann']:.4f}"
        ann = "-" if r.get("ann_s") is None else ms(r["ann_s"])
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"
        qps = "-" if r.get("ann_qps") is None else f"{r['ann_qps']:,.0f}"
        print(f"| {r['items']} | {r['query_kind']} | {r['a_perp_median']:.2f} | {r['L']} "
              f"| {s['num_leaves']} / {s['num_leaves_to_search']} / "
              f"{s['num_reordering_candidates']} | {rec} | {r['probe_exact_recall']:.4f} "
              f"| {ann} | {ms(r['exact_s'])} | {speed} | {qps} | {r['exact_qps']:,.0f} |")
        key = (r["items"], r["query_kind"])
        entry = summary.setdefault(key, {"probe": r["probe_len_99"], "ann": None, "L": 0})
        entry["L"] = max(entry["L"], r["L"])
        if entry["ann"] is None and (r["recall_ann"] or 0) >= 0.99:
            entry["ann"] = r["L"]
    print("\n| items | queries | shortest L with ANN recall@10 >= 0.99 "
          "| shortest exact-probe list with recall@10 >= 0.99 |")
    print("|---|---|---|---|")
    for (items, kind), entry in summary.items():
        ann = f"> {entry['L']}" if entry["ann"] is None else entry["ann"]
        print(f"| {items} | {kind} | {ann} | {entry['probe']:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--kinds", nargs="+", default=list(QUERY_KINDS),
                        choices=QUERY_KINDS)
    parser.add_argument("--clusters", type=int, default=0,
                        help="item direction clusters (0: isotropic directions)")
    parser.add_argument("--cluster-noise", type=float, default=0.5)
    parser.add_argument("--query-noise", type=float, default=0.3)
    parser.add_argument("--short-scale", type=float, default=0.1)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-leaves", type=int, help="ScaNN override (export default ~sqrt N)")
    parser.add_argument("--leaves-to-search", type=int, help="ScaNN override")
    parser.add_argument("--reorder", type=int, help="ScaNN override (export default 4 L)")
    parser.add_argument("--trained", action="store_true",
                        help="also a tiny ProxySR model trained here")
    parser.add_argument("--trained-items", type=int, default=5000)
    parser.add_argument("--trained-epochs", type=int, default=3)
    parser.add_argument("--trained-item-norm", default="none", choices=["none", "train"],
                        help="ModelConfig.item_norm of the trained model ('train': "
                             "candidates L2-normalised, on the unit sphere)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="2k items, d = 16, 100 queries, L = 10 50 200: seconds")
    parser.add_argument("--results", type=Path, help="results file (default "
                        "pipelines/results/proxysr_ann[_quick].jsonl)")
    args = parser.parse_args()
    if args.quick:  # the quick settings, except those given on the command line
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    out = args.results or RESULTS / ("proxysr_ann_quick.jsonl" if args.quick
                                     else "proxysr_ann.jsonl")
    export = ExportConfig(scann_num_leaves=args.num_leaves,
                          scann_leaves_to_search=args.leaves_to_search,
                          scann_reorder=args.reorder)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS"),
               "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS")}
    settings = {"seed": args.seed, "clusters": args.clusters,
                "cluster_noise": args.cluster_noise, "query_noise": args.query_noise,
                "short_scale": args.short_scale,
                "scann_overrides": {"num_leaves": args.num_leaves,
                                    "leaves_to_search": args.leaves_to_search,
                                    "reorder": args.reorder}}
    rng = np.random.default_rng(args.seed)
    directions = item_directions(rng, args.catalogue, args.dim, args.clusters,
                                 args.cluster_noise)
    catalogues = [(f"norms U[{1 - s:g}, 1]", {"spread": s},
                   lambda s=s: unit_ball_items(np.random.default_rng([args.seed, 1]),
                                               directions, s)) for s in args.spreads]
    all_rows = []
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(rows: List[Dict], label: str, kind: str, extra: Dict) -> None:
        for row in rows:
            row.update(items=label, query_kind=kind, **extra, **settings, **machine,
                       time=time.strftime("%Y-%m-%dT%H:%M:%S"))
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        all_rows.extend(rows)
        best = [r["L"] for r in rows if (r["recall_ann"] or 0) >= 0.99]
        print(f"{label}, {kind}: recall@{args.k} "
              + ", ".join(f"L={r['L']}: {r['recall_ann']}" for r in rows)
              + f"; L for >= 0.99: {best[0] if best else 'none'}", flush=True)

    for label, extra, make in catalogues:
        items, paths = make(), {}
        for j, kind in enumerate(args.kinds):
            queries = synthetic_queries(np.random.default_rng([args.seed, 2, j]), kind,
                                        items, args.queries, args.query_noise,
                                        args.short_scale)
            rows = benchmark(items, queries, args.lengths, k=args.k, batch=args.batch,
                             repeats=args.repeats, export=export, paths=paths)
            record(rows, label, kind, extra)
    if args.trained:
        items, queries, info = trained_geometry(args.trained_items, args.dim,
                                                args.trained_epochs, args.queries,
                                                args.seed, args.trained_item_norm)
        lengths = [n for n in args.lengths if n <= len(items)]
        rows = benchmark(items, queries, lengths, k=args.k, batch=args.batch,
                         repeats=args.repeats, export=export)
        norm = "" if args.trained_item_norm == "none" else ", item_norm=train"
        record(rows, f"trained ProxySR ({len(items):,} items{norm})", "test histories",
               {"trained": info})

    print(f"\nN={args.catalogue:,}, d={args.dim}, {args.queries} queries in batches of "
          f"{args.batch}, k={args.k}, {args.repeats} rounds; ms per pass over all queries; "
          f"cpus={os.cpu_count()}, directions: "
          f"{'isotropic' if args.clusters <= 0 else f'{args.clusters} clusters'}\n")
    print_table(all_rows)
    print(f"\nappended {len(all_rows)} rows to {out}")


if __name__ == "__main__":
    main()
