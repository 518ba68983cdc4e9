"""Benchmark: exact and approximate retrieval indexes on 100k / 1M candidates.

Contenders, each a traced `tf.function` over one batch of `--queries` queries (k =
`-k`), in one process:

* `bruteforce`: TFRS `BruteForce` (one `[B, C]` matmul + `tf.math.top_k`), the baseline;
* `exact_chunked`: `tfrec_proxy.topk.ChunkedTopK` (blocks of `--block-size`, group
  maxima of `--group-size`; exact, ids compared with BruteForce's);
* `scann_tfrs_default`: TFRS `ScaNN(k)` with its defaults (100 leaves, 10 searched,
  no re-ordering);
* `scann_export`: TFRS `ScaNN` with the export's `scann_parameters` (max_k = k);
* `scann_tuned`: `tfrec_proxy.scann_tuning.tune_scann` to recall@k >= `--target` on
  `--tune-queries` tuning queries (disjoint from the measured ones), the measured
  index served as tuned;
* `matmul_floor` (only if listed in `--contenders`): the exact path's float32 block
  matmuls alone, no top-k: the floor of any exact dot-product scan, so its ratio is the
  most an exact brute-force method can gain over BruteForce here.

Data (fixed `--seed`): `--clusters` Gaussian centres N(0, I_d); candidates and queries
are a uniformly drawn centre plus N(0, `--noise`^2 I_d), not normalised (dot product),
or `--run DIR`: an exported single-vector run's candidates and the query embeddings of
its test histories (a first slice tunes, the rest is measured).

Per catalogue size: recall@k against BruteForce's top-k; queries/s from the min and the
median of `--rounds` timed calls (contenders interleaved, order rotated each round, so
drifting load from other processes hits all alike) and their ratios to BruteForce's;
index build seconds; index bytes (its variables); unless `--no-memory`, the peak RSS
growth of building the index and of one query batch, each contender in a fresh
subprocess (`--memory-probe`, so one contender's freed memory does not hide
another's). Results: a markdown table, JSON lines appended to
`pipelines/results/retrieval.jsonl` (`retrieval_quick.jsonl` with `--quick`), and a
recall vs queries/s plot `pipelines/results/retrieval.png` (`_quick` likewise).

Usage:
    nice -n 19 python pipelines/bench_retrieval.py [--sizes 100000 1000000] [--queries 1000]
        [--rounds 5] [--block-size 16384] [--intra 0 --inter 0] [--run DIR]
    python pipelines/bench_retrieval.py --quick   # 20k candidates, seconds
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("bruteforce", "exact_chunked", "scann_tfrs_default", "scann_export",
              "scann_tuned", "matmul_floor")
DEFAULT_CONTENDERS = CONTENDERS[:-1]


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """Peak resident memory growth (MB) over the `with` block, sampled every 2 ms."""

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.growth = self.peak - self.base


def mixture(rng: np.random.Generator, centres: np.ndarray, count: int,
            noise: float) -> np.ndarray:
    points = centres[rng.integers(0, len(centres), count)]
    return (points + noise * rng.standard_normal(points.shape)).astype(np.float32)


def synthetic(args: argparse.Namespace, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates, measured queries, tuning queries), deterministic in seed and size."""
    rng = np.random.default_rng([args.seed, size])
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    return (mixture(rng, centres, size, args.noise),
            mixture(rng, centres, args.queries, args.noise),
            mixture(rng, centres, args.tune_queries, args.noise))


def from_run(args: argparse.Namespace) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.serving import load_run

    run = load_run(args.run)
    data = prepare_data(run.config.data)
    rows = data.split.test.history[:args.tune_queries + args.queries]
    queries = run.embed([data.vocab.raw_ids(row[row > 0]).tolist() for row in rows])
    if queries.ndim != 2:
        raise SystemExit(f"{args.run} has multi-vector queries {queries.shape[1:]}; TFRS "
                         "BruteForce/ScaNN take [B, d] queries only.")
    tune = max(1, min(args.tune_queries, len(queries) // 2))
    return np.asarray(run.candidate_embeddings, np.float32), queries[tune:], queries[:tune]


def build(name: str, candidates: np.ndarray, tune_queries: np.ndarray,
          args: argparse.Namespace) -> Tuple[Any, Dict[str, Any]]:
    """(index layer, facts) for one contender; identifiers are candidate positions."""
    from tfrec_proxy._tf import tf, tfrs
    from tfrec_proxy.config import ExportConfig
    from tfrec_proxy.savedmodels import scann_parameters
    from tfrec_proxy.scann_tuning import TunedScaNN, tune_scann
    from tfrec_proxy.topk import ChunkedTopK

    size, facts = len(candidates), {}
    ids = tf.range(size, dtype=tf.int64)
    start = time.perf_counter()
    if name == "bruteforce":
        index = tfrs.layers.factorized_top_k.BruteForce(k=args.k)
        index.index(tf.constant(candidates), ids)
    elif name == "exact_chunked":
        index = ChunkedTopK(k=args.k, block_size=args.block_size, group_size=args.group_size)
        index.index(tf.constant(candidates), ids)
        facts["settings"] = {"block_size": args.block_size, "group_size": args.group_size}
    elif name == "scann_tfrs_default":
        index = tfrs.layers.factorized_top_k.ScaNN(k=args.k)
        index.index(tf.constant(candidates))
        facts["settings"] = {"num_leaves": 100, "num_leaves_to_search": 10,
                             "num_reordering_candidates": None}
    elif name == "scann_export":
        settings = scann_parameters(size, ExportConfig(max_k=args.k), args.k)
        index = tfrs.layers.factorized_top_k.ScaNN(k=args.k, **settings)
        index.index(tf.constant(candidates))
        facts["settings"] = settings
    elif name == "matmul_floor":
        matrix = tf.constant(candidates)

        class Floor:  # each block's [B, n] scores, reduced to one number to fetch
            variables: List[Any] = []

            def __call__(self, queries: tf.Tensor, k: int) -> Tuple[tf.Tensor, tf.Tensor]:
                sums = [tf.reduce_sum(tf.linalg.matmul(
                    queries, matrix[start:start + args.block_size], transpose_b=True)[:, :1])
                    for start in range(0, size, args.block_size)]
                return tf.add_n(sums), tf.zeros([tf.shape(queries)[0], k], tf.int64)

        index = Floor()
    elif name == "scann_tuned" and args.settings is not None:  # memory probe: no tuning
        settings = json.loads(args.settings)
        index = TunedScaNN(k=args.k, num_leaves=settings["num_leaves"],
                           num_leaves_to_search=settings["num_leaves_to_search"],
                           num_reordering_candidates=settings["num_reordering_candidates"],
                           leaves_to_search=settings["num_leaves_to_search"],
                           reorder=settings["num_reordering_candidates"])
        index.index(tf.constant(candidates))
    else:
        tuning = tune_scann(candidates, tune_queries, args.k, args.target,
                            max_builds=args.max_builds)
        index = tuning.index
        summary = tuning.to_manifest()
        facts.update(settings=tuning.settings, tuning=summary,
                     tuning_seconds=tuning.tuning_seconds)
        facts["build_seconds"] = tuning.build_seconds
    facts.setdefault("build_seconds", time.perf_counter() - start)
    facts["index_bytes"] = int(sum(
        sum(len(x) for x in np.ravel(v.numpy())) if v.dtype == tf.string
        else int(np.prod(v.shape)) * v.dtype.size for v in index.variables))
    return index, facts


def query_fn(index: Any, k: int) -> Callable:
    from tfrec_proxy._tf import tf

    search = tf.function(lambda queries: index(queries, k=k))
    return lambda queries: [value.numpy() for value in search(queries)][1]


def interleaved(fns: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, List[float]]:
    """Seconds of `rounds` calls of every fn, the order rotated each round."""
    names, times = list(fns), {name: [] for name in fns}
    for round_ in range(rounds):
        for name in np.roll(names, -round_):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: peak RSS growth of building one index and of one query batch."""
    candidates, queries, tune = synthetic(args, args.size) if not args.run else from_run(args)
    from tfrec_proxy._tf import tf

    with PeakRSS() as building:
        index, _ = build(args.memory_probe, candidates, tune, args)
    search = query_fn(index, args.k)
    search(tf.constant(queries[:2]))  # trace outside the measurement
    with PeakRSS() as querying:
        search(tf.constant(queries))
    print(json.dumps({"build_peak_mb": building.growth, "query_peak_mb": querying.growth}))


def probe_memory(name: str, size: int, facts: Dict[str, Any],
                 args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, __file__, "--memory-probe", name, "--size", str(size),
               "--queries", str(args.queries), "--tune-queries", str(args.tune_queries),
               "-k", str(args.k), "--seed", str(args.seed), "--clusters", str(args.clusters),
               "--noise", str(args.noise), "--dim", str(args.dim),
               "--block-size", str(args.block_size), "--group-size", str(args.group_size),
               "--intra", str(args.intra), "--inter", str(args.inter)]
    if args.run:
        command += ["--run", args.run]
    if name == "scann_tuned":
        command += ["--settings", json.dumps(facts["settings"])]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        return {"memory_error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def bench_size(size: int, args: argparse.Namespace) -> List[Dict[str, Any]]:
    from tfrec_proxy._tf import tf

    candidates, queries_np, tune = synthetic(args, size) if not args.run else from_run(args)
    size = len(candidates)
    queries = tf.constant(queries_np)
    indexes, facts, fns = {}, {}, {}
    for name in args.contenders:
        indexes[name], facts[name] = build(name, candidates, tune, args)
        search = query_fn(indexes[name], args.k)
        search(tf.constant(queries_np[:2]))  # trace
        fns[name] = lambda search=search: search(queries)
        print(f"  {size:,}: built {name} in {facts[name]['build_seconds']:.2f} s", flush=True)
    results = {name: fn() for name, fn in fns.items()}
    exact = results["bruteforce"]
    times = interleaved(fns, args.rounds)
    base = times["bruteforce"]
    rows = []
    for name in args.contenders:
        seconds = times[name]
        row = {"bench": "retrieval", "method": name, "catalogue": size, "dim": args.dim,
               "data": args.run or f"clusters={args.clusters},noise={args.noise}",
               "seed": args.seed, "queries": len(queries_np), "k": args.k,
               "recall": recall_at_k(results[name], exact),
               "qps_best": len(queries_np) / min(seconds),
               "qps_median": len(queries_np) / statistics.median(seconds),
               "seconds": seconds,
               "ratio_vs_bruteforce_median": statistics.median(base) / statistics.median(seconds),
               "ratio_vs_bruteforce_best": min(base) / min(seconds),
               # per round (adjacent calls, same load), then the median over rounds
               "ratio_vs_bruteforce_paired": statistics.median(
                   b / t for b, t in zip(base, seconds)), **facts[name]}
        if name == "matmul_floor":
            row["recall"] = None
        if name == "exact_chunked":
            row["ids_equal_bruteforce"] = bool(np.array_equal(results[name], exact))
            row["rows_equal_bruteforce"] = float(np.mean(np.all(results[name] == exact, 1)))
        rows.append(row)
    indexes = fns = None  # free before the memory probes
    if args.memory:
        for row in rows:
            if row["method"] != "matmul_floor":
                row.update(probe_memory(row["method"], size, row, args))
    return rows


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(CONTENDERS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    sizes = sorted({row["catalogue"] for row in rows})
    for size, marker in zip(sizes, "os^Dv" * len(sizes)):
        for row in (r for r in rows if r["catalogue"] == size and r["recall"] is not None):
            axes.scatter(row["qps_median"], row["recall"], marker=marker, s=60,
                         color=colours[row["method"]], label=f"{row['method']} ({size:,})")
            for trial in row.get("tuning", {}).get("trials", []):
                if "queries_per_second" in trial:
                    axes.scatter(trial["queries_per_second"], trial["recall"], s=8,
                                 marker=marker, color="grey", alpha=0.5)
    axes.set_xscale("log")
    axes.set_xlabel("queries/s (median, batched)")
    axes.set_ylabel("recall@k vs exact")
    axes.set_title("Retrieval: recall vs speed (grey: timed tuning trials)")
    axes.legend(fontsize=7, loc="lower left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tune-queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95, help="tuned recall@k target")
    parser.add_argument("--max-builds", type=int, default=3, help="trees the tuner builds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=16_384)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--intra", type=int, default=0, help="TF intra-op threads (0: TF's)")
    parser.add_argument("--inter", type=int, default=0, help="TF inter-op threads (0: TF's)")
    parser.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS),
                        choices=CONTENDERS)
    parser.add_argument("--run", help="an exported run folder instead of synthetic data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the per-contender memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="20k candidates, seconds")
    parser.add_argument("--results", type=Path, help="JSON lines file")
    parser.add_argument("--memory-probe", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.tune_queries, args.rounds = [20_000], 200, 200, 3
        args.clusters, args.memory, args.max_builds = 200, False, 2
    if "bruteforce" not in args.contenders:
        args.contenders.insert(0, "bruteforce")  # the reference for recall and ratios
    if args.run:
        args.sizes = [0]

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2; import first)
    from tfrec_proxy._tf import tf

    tf.get_logger().setLevel("ERROR")  # one tf.function per contender is not retracing
    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    if args.memory_probe:
        return memory_probe(args)

    started = time.perf_counter()
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "intra_op_threads": args.intra, "inter_op_threads": args.inter,
               "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "command": " ".join(["python", "pipelines/bench_retrieval.py",
                                    *(argv if argv is not None else sys.argv[1:])])}
    rows = []
    for size in args.sizes:
        rows += [dict(row, **machine) for row in bench_size(size, args)]
    suffix = "_quick" if args.quick else ""
    out = args.results or RESULTS / f"retrieval{suffix}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        for row in rows:
            handle.write(json.dumps({key: value for key, value in row.items()
                                     if key != "seconds"} | {"seconds": row["seconds"]})
                         + "\n")
    plot(rows, out.with_suffix(".png"))

    print(f"\n{args.queries} queries per batch, k = {args.k}, {args.rounds} interleaved rounds; "
          f"q/s best / median; load average {machine['load_average']}\n")
    print("| catalogue | method | recall@k | q/s best | q/s median | x BruteForce (median) "
          "| x BruteForce (best) | x BruteForce (paired) | build s | index MB "
          "| peak build MB | peak query MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        memory = [f"{r[key]:.0f}" if key in r else "-" for key in ("build_peak_mb",
                                                                   "query_peak_mb")]
        recall = "-" if r["recall"] is None else f"{r['recall']:.4f}"
        print(f"| {r['catalogue']:,} | {r['method']} | {recall} | {r['qps_best']:,.0f} "
              f"| {r['qps_median']:,.0f} | {r['ratio_vs_bruteforce_median']:.1f} "
              f"| {r['ratio_vs_bruteforce_best']:.1f} | {r['ratio_vs_bruteforce_paired']:.1f} "
              f"| {r['build_seconds']:.2f} "
              f"| {r['index_bytes'] / 2 ** 20:.1f} | {memory[0]} | {memory[1]} |")
    for r in rows:
        if "tuning" in r:
            print(f"tuned {r['catalogue']:,}: {r['settings']}, tuning {r['tuning_seconds']:.1f} s "
                  f"({r['tuning']['candidates_tried']} settings, recall on tuning queries "
                  f"{r['tuning']['recall']:.4f})")
        if "ids_equal_bruteforce" in r:
            print(f"exact_chunked {r['catalogue']:,}: ids equal BruteForce's: "
                  f"{r['ids_equal_bruteforce']} (rows equal {r['rows_equal_bruteforce']:.4f})")
    print(f"results: {out} ({out.with_suffix('.png')}); {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
