"""Benchmark: chunked full-ranking evaluation, memory and speed.

Two measurements, each repeated `--repeats` times (min/median reported):

1. Speed ratio on a catalogue where a dense `[N, V]` score matrix still fits: chunked
   `metrics.full_ranks` vs a dense numpy rank (`scores >= target`, one matmul), same
   process, same inputs, identical ranks asserted.
2. Peak memory on 1M- and 4M-item catalogues, where a dense `N x V x 4`-byte score
   matrix would not fit comfortably: resident-set growth of the chunked evaluation,
   one fresh process per size, for two chunk sizes. Bounded memory shows as growth
   that depends on the chunk size, not on the catalogue size.

Usage:
    python pipelines/bench_full_ranking.py [--items 1000000,4000000] [--queries 2000]
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy.metrics import full_ranks


def _dense_ranks(queries: np.ndarray, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    scores = queries @ items[2:].T
    target_scores = np.einsum("nd,nd->n", queries, items[targets])[:, None]
    # Pessimistic ties, the target's own column removed: same rule as full_ranks.
    return (scores >= target_scores).sum(axis=1) - 1


def _timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _memory_run(num_items: int, num_queries: int, dim: int, chunk_size: int,
                repeats: int) -> None:
    """One fresh process per catalogue size: ru_maxrss is a process-wide peak."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    # Warm-up, so TensorFlow's own start-up allocations are not counted.
    full_ranks(None, queries[:2], queries[:10], np.array([2, 3]))
    items = rng.standard_normal(size=(num_items + 2, dim), dtype=np.float32)
    targets = rng.integers(2, num_items + 2, size=num_queries)
    before = _peak_rss_mib()
    _, times = _timed(lambda: full_ranks(None, queries, items, targets, chunk_size=chunk_size),
                      repeats)
    print(f"  {num_items:>9} items, chunk {chunk_size}: time min {min(times):.2f} s median "
          f"{statistics.median(times):.2f} s; peak RSS growth during evaluation "
          f"{_peak_rss_mib() - before:.0f} MiB (catalogue {items.nbytes / 2**20:.0f} MiB, a "
          f"dense score matrix {num_queries * num_items * 4 / 2**20:.0f} MiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="1000000,4000000",
                        help="comma-separated catalogue sizes for the memory runs")
    parser.add_argument("--chunk-sizes", default="65536,16384")
    parser.add_argument("--speed-items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-run", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        _memory_run(args.memory_run[0], args.queries, args.dim, args.memory_run[1],
                    args.repeats)
        return

    print(f"memory, {args.queries} queries x {args.dim} dims (one process per line):",
          flush=True)
    for chunk_size in args.chunk_sizes.split(","):
        for num_items in args.items.split(","):
            subprocess.run([sys.executable, __file__, "--memory-run", num_items, chunk_size,
                            "--queries", str(args.queries), "--dim", str(args.dim),
                            "--repeats", str(args.repeats)], check=True)

    rng = np.random.default_rng(0)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    items = rng.normal(size=(args.speed_items + 2, args.dim)).astype(np.float32)
    targets = rng.integers(2, args.speed_items + 2, size=args.queries)
    dense, dense_times = _timed(lambda: _dense_ranks(queries, items, targets), args.repeats)
    chunked, chunked_times = _timed(
        lambda: full_ranks(None, queries, items, targets), args.repeats)
    print(f"speed, {args.queries} queries x {args.speed_items} items x {args.dim} dims:")
    print(f"  dense numpy  min {min(dense_times):.3f} s  median "
          f"{statistics.median(dense_times):.3f} s")
    print(f"  chunked      min {min(chunked_times):.3f} s  median "
          f"{statistics.median(chunked_times):.3f} s")
    print(f"  ratio chunked/dense (median): "
          f"{statistics.median(chunked_times) / statistics.median(dense_times):.2f}")
    # numpy and TensorFlow sum in different orders, so near-exact ties can flip.
    print(f"  ranks identical for {np.mean(dense == chunked):.4f} of queries, largest "
          f"difference {np.abs(dense - chunked).max()}")

if __name__ == "__main__":
    main()
