"""Benchmark: adding new items to an exported run: rebuild ScaNN, or keep an exact delta?

New items (embedded from their attributes by a trained PIR item tower) arrive for a run
whose catalogue has `--catalogue` N items (d = `--dim`, float32). Is it faster to

(a) rebuild the ScaNN index over the N + n items (`savedmodels.build_index("scann")`
    with `scann_parameters(N + n, ExportConfig(), max_k)`, as the export does), or
(b) keep the n new items in a small exact "delta" segment, scored by brute force
    (`tf.linalg.matmul(queries, delta, transpose_b=True)` + `tf.math.top_k`) at query
    time and merged with the ScaNN top-k of the N old items (concatenate scores and
    ids, `tf.math.top_k`)?

Data (fixed `--seed`): `--clusters` Gaussian centres N(0, I_d); every catalogue item,
new item and query is a uniformly drawn centre plus N(0, `--noise`^2 I_d) noise, not
normalised (dot-product scoring, like unnormalised tower outputs). New items come from
the same mixture as the catalogue (the tower maps them into the same space).

For each n of `--sizes`, in one process: the rebuild seconds (min/median over
`--build-repeats`) and their ratio to a build over the N items alone; the delta add
seconds (np.savez of ids + embeddings to a temp file, min/median over 5); the latency
of one batch of `--queries` queries (min/median over `--repeats` rounds that time the
three paths in rotated order; each path a traced `tf.function`, top-k ids fetched) of
(i) ScaNN over N, (ii) ScaNN over N + n, (iii) ScaNN over N + exact delta, and the
ratios (ii)/(i), (iii)/(i) (medians); recall@k of (ii) and (iii) against exact brute
force over all N + n items; and the break-even number of queries the delta can serve
before its extra cost exceeds one rebuild, rebuild / (iii - i) x queries (medians;
from minima as `break_even_queries_min` in the JSON). ScaNN's C++ training and batched-parallel search use ScaNN's own thread
pools; the TF_NUM_*_THREADS variables govern the TF ops (delta matmul, top-k).

Results: a markdown table on stdout and one JSON line per n appended to
`pipelines/results/add_items.jsonl` (`add_items_quick.jsonl` with `--quick`); an n
already there for the same N and d is skipped unless `--force`.

Usage:
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        python pipelines/bench_add_items.py [--catalogue 1000000] [--dim 64]
        [--sizes 100 10000 100000] [--build-repeats 3] [--repeats 10] [--force]
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        python pipelines/bench_add_items.py --quick   # 50k catalogue, smoke run
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2; import first)
import tensorflow as tf
from tfrec_proxy.config import ExportConfig
from tfrec_proxy.savedmodels import build_index, scann_parameters
from tfrec_proxy.scoring import DotScorer

RESULTS = Path(__file__).resolve().parent / "results"
MAX_K = PROBE_K = 100


def mixture(rng: np.random.Generator, centres: np.ndarray, count: int,
            noise: float) -> np.ndarray:
    """`count` float32 points: a uniformly drawn centre plus Gaussian noise."""
    points = centres[rng.integers(0, len(centres), count)]
    return (points + noise * rng.standard_normal(points.shape)).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> Tuple[List[float], object]:
    """Wall-clock seconds of `repeats` calls of `fn` and its last result."""
    (times,), (result,) = interleaved([fn], repeats)
    return times, result


def interleaved(fns: List[Callable[[], object]], repeats: int
                ) -> Tuple[List[List[float]], List[object]]:
    """Seconds of `repeats` rounds of every fn (order rotated each round, so drifting
    load from other processes hits every path alike) and each fn's last result."""
    times, results = [[] for _ in fns], [None] * len(fns)
    for round_ in range(repeats):
        for j in np.roll(np.arange(len(fns)), round_):
            start = time.perf_counter()
            results[j] = fns[j]()
            times[j].append(time.perf_counter() - start)
    return times, results


def stats(times: List[float]) -> Dict[str, float]:
    """Min and median of `times`."""
    return {"min": min(times), "median": statistics.median(times)}


def scann(embeddings: np.ndarray) -> tf.keras.layers.Layer:
    """The product's ScaNN index over `embeddings` (identifiers = positions)."""
    count = len(embeddings)
    return build_index("scann", DotScorer(), embeddings, np.arange(count, dtype=np.int64),
                       MAX_K, scann_parameters(count, ExportConfig(), MAX_K), PROBE_K)


def scann_query(index: tf.keras.layers.Layer, k: int) -> Callable:
    """Traced query path: ScaNN probe_k hits -> top-k (scores, positions)."""
    @tf.function
    def query(queries: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        scores, positions = index(queries, k=PROBE_K)
        top, at = tf.math.top_k(scores, k=k)
        return top, tf.gather(tf.cast(positions, tf.int64), at, batch_dims=1)
    return lambda queries: query(queries)[1].numpy()


def delta_query(index: tf.keras.layers.Layer, k: int, offset: int) -> Callable:
    """Traced query path: ScaNN over the old items merged with an exact delta segment
    (delta positions are `offset + row`)."""
    @tf.function
    def query(queries: tf.Tensor, delta: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        scores, positions = index(queries, k=PROBE_K)
        exact = tf.linalg.matmul(queries, delta, transpose_b=True)
        delta_scores, rows = tf.math.top_k(exact, k=min(k, delta.shape[0]))
        merged = tf.concat([scores, delta_scores], axis=1)
        ids = tf.concat([tf.cast(positions, tf.int64), tf.cast(rows, tf.int64) + offset], 1)
        top, at = tf.math.top_k(merged, k=k)
        return top, tf.gather(ids, at, batch_dims=1)
    return lambda queries, delta: query(queries, delta)[1].numpy()


def exact_top_k(queries: np.ndarray, items: np.ndarray, k: int,
                chunk: int = 100_000) -> np.ndarray:
    """Exact top-k positions by dot product, over `items` in chunks."""
    best_s = np.empty((len(queries), 0), np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(items), chunk):
        block = queries @ items[start:start + chunk].T
        rows = np.arange(start, start + block.shape[1])
        scores = np.concatenate([best_s, block], axis=1)
        ids = np.concatenate([best_i, np.broadcast_to(rows, block.shape)], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def done_sizes(path: Path, catalogue: int, dim: int) -> set:
    """Sizes n already in the results file for this N and d."""
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["n"] for row in rows if row["N"] == catalogue and row["d"] == dim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="new-item counts n (default 100 10000 100000)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="50k catalogue, smoke run")
    parser.add_argument("--force", action="store_true", help="redo sizes already stored")
    parser.add_argument("--results", type=Path, help="results file (default "
                        "pipelines/results/add_items[_quick].jsonl)")
    args = parser.parse_args()
    if args.quick:
        args.catalogue, args.build_repeats, args.repeats = 50_000, 2, 5
    args.sizes = args.sizes or ([100, 1000, 10_000] if args.quick else [100, 10_000, 100_000])
    out = args.results or RESULTS / ("add_items_quick.jsonl" if args.quick
                                     else "add_items.jsonl")
    sizes = [n for n in args.sizes
             if args.force or n not in done_sizes(out, args.catalogue, args.dim)]
    if not sizes:
        print(f"all sizes already in {out} for N={args.catalogue}, d={args.dim} (--force to redo)")
        return

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    catalogue = mixture(rng, centres, args.catalogue, args.noise)
    new_all = mixture(rng, centres, max(args.sizes), args.noise)
    queries_np = mixture(rng, centres, args.queries, args.noise)
    queries = tf.constant(queries_np)

    build_times, base = timed(lambda: scann(catalogue), args.build_repeats)
    base_query = scann_query(base, args.k)
    base_query(queries)  # trace + warm up
    print(f"N={args.catalogue} d={args.dim}: build {stats(build_times)} s", flush=True)

    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "processor": platform.processor(),
               "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS"),
               "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS")}
    rows = []
    for n in sizes:
        new = new_all[:n]
        everything = np.concatenate([catalogue, new])
        truth = exact_top_k(queries_np, everything, args.k)

        rebuild_times, rebuilt = timed(lambda: scann(everything), args.build_repeats)
        rebuilt_query = scann_query(rebuilt, args.k)
        rebuilt_query(queries)

        with tempfile.TemporaryDirectory() as tmp:
            ids_new = np.arange(args.catalogue, args.catalogue + n, dtype=np.int64)
            add_times, _ = timed(lambda: np.savez(os.path.join(tmp, "delta.npz"),
                                                  ids=ids_new, embeddings=new), 5)
        delta = tf.constant(new)
        merged_query = delta_query(base, args.k, args.catalogue)
        merged_query(queries, delta)
        (base_lat, rebuilt_lat, delta_lat), (_, ids_ii, ids_iii) = interleaved(
            [lambda: base_query(queries), lambda: rebuilt_query(queries),
             lambda: merged_query(queries, delta)], args.repeats)
        rebuilt = rebuilt_query = None  # free the N + n index before the next n

        extra = statistics.median(delta_lat) - statistics.median(base_lat)
        rebuild_median = statistics.median(rebuild_times)
        extra_min = min(delta_lat) - min(base_lat)
        row = {"n": n, "N": args.catalogue, "d": args.dim, "clusters": args.clusters,
               "noise": args.noise, "seed": args.seed, "queries": args.queries,
               "k": args.k, "max_k": MAX_K, "probe_k": PROBE_K,
               "scann_N": scann_parameters(args.catalogue, ExportConfig(), MAX_K),
               "scann_N_plus_n": scann_parameters(args.catalogue + n, ExportConfig(), MAX_K),
               "build_N_s": stats(build_times), "rebuild_s": stats(rebuild_times),
               "rebuild_times_s": rebuild_times,
               "rebuild_ratio": rebuild_median / statistics.median(build_times),
               "delta_add_s": stats(add_times),
               "latency_i_s": stats(base_lat), "latency_ii_s": stats(rebuilt_lat),
               "latency_iii_s": stats(delta_lat),
               "ratio_ii_i": statistics.median(rebuilt_lat) / statistics.median(base_lat),
               "ratio_iii_i": statistics.median(delta_lat) / statistics.median(base_lat),
               "recall_ii": recall(ids_ii, truth), "recall_iii": recall(ids_iii, truth),
               "break_even_queries": (rebuild_median / extra * args.queries
                                      if extra > 0 else None),
               "break_even_queries_min": (min(rebuild_times) / extra_min * args.queries
                                          if extra_min > 0 else None),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **machine}
        rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"n={n}: done (rebuild {rebuild_median:.2f} s, delta extra {extra * 1e3:.2f} ms)",
              flush=True)

    ms = lambda s: f"{s['min'] * 1e3:.1f}/{s['median'] * 1e3:.1f}"  # noqa: E731
    print(f"\nN={args.catalogue:,}, d={args.dim}, {args.queries} queries/batch, k={args.k}, "
          f"probe_k={PROBE_K}; seconds and ms as min/median; cpus={os.cpu_count()}, "
          f"intra-op threads={machine['TF_NUM_INTRAOP_THREADS']}\n")
    print("| n | build N (s) | rebuild N+n (s) | rebuild/build | delta add (ms) "
          "| (i) ScaNN N (ms) | (ii) rebuilt (ms) | (iii) N+delta (ms) | (ii)/(i) | (iii)/(i) "
          "| recall (ii) | recall (iii) | break-even queries |")
    print("|" + "---|" * 13)
    for r in rows:
        even = "inf" if r["break_even_queries"] is None else f"{r['break_even_queries']:,.0f}"
        print(f"| {r['n']:,} | {r['build_N_s']['min']:.2f}/{r['build_N_s']['median']:.2f} "
              f"| {r['rebuild_s']['min']:.2f}/{r['rebuild_s']['median']:.2f} "
              f"| {r['rebuild_ratio']:.2f} | {ms(r['delta_add_s'])} | {ms(r['latency_i_s'])} "
              f"| {ms(r['latency_ii_s'])} | {ms(r['latency_iii_s'])} | {r['ratio_ii_i']:.2f} "
              f"| {r['ratio_iii_i']:.2f} | {r['recall_ii']:.4f} | {r['recall_iii']:.4f} "
              f"| {even} |")
    print(f"\nappended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
