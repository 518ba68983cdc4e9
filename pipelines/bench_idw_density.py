"""Benchmark: one IDW sleep phase (`weighting.density.update_weights`) on large catalogues.

Item embeddings are shaped like a trained item tower's outputs: a Gaussian mixture of
`--clusters` clusters in `--dim` dimensions (centres N(0, I), per-cluster spreads
0.2-0.5, cluster sizes and popularities following power laws), with power-law item
frequency weights (cluster popularity `(c + 1)^-1` times a within-cluster Zipf
`rank^-0.8`, normalised to sum 1), plus the padding and OOV rows 0 and 1, inactive.

For each of `--sizes`, one full sleep phase (Scott bandwidth, reference draw, eq. 7
density, eq. 8 and eq. 9) is timed `--repeats` times (min and median), with the
`--reference-size` Monte-Carlo density that `item_density` uses above
`exact_max_items` items.

Then on `--exact-check-size` items of the same kind, in the same process:

* the approximation error: relative density (eq. 8) of the exact eq. 7 (every item a
  reference) vs the `--reference-size` estimate, as max and mean absolute error and
  Pearson correlation, and the L1 distance of the eq. 9 targets `h / sum(h)`;
* a speed baseline: a plain numpy exact density (float64 squared distances by
  broadcasting of norms and a matmul, `np.exp` out of place, in 1,024-row chunks),
  timed against the module's exact and approximate densities on the same items.

Usage:
    python pipelines/bench_idw_density.py [--sizes 100000 1000000] [--dim 16]
        [--repeats 3] [--reference-size 4096] [--exact-check-size 20000]
        [--uniform-weights]
"""

import argparse
import math
import statistics
import time
from typing import Callable, List, Tuple

import numpy as np

from tfrec_proxy.weighting.density import (DEFAULT_REFERENCE_SIZE, item_density,
                                           relative_density, scott_bandwidth, update_weights)

FIRST_ITEM = 2  # vocabulary indices 0 (padding) and 1 (OOV) are no items


def synthetic_catalogue(num_items: int, dim: int, clusters: int, uniform: bool = False,
                        seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(embeddings [V, dim] float32, weights [V], active [V] bool)`, V = num_items + 2."""
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, clusters + 1) ** 0.5
    cluster = rng.choice(clusters, size=num_items, p=share / share.sum())
    centres = rng.standard_normal((clusters, dim))
    spread = rng.uniform(0.2, 0.5, clusters)
    items = centres[cluster] + spread[cluster, None] * rng.standard_normal((num_items, dim))
    if uniform:
        weights = np.full(num_items, 1.0 / num_items)
    else:
        popularity = 1.0 / (rng.permutation(clusters) + 1.0)  # cluster c: (rank + 1)^-1
        weights = np.empty(num_items)
        for c in range(clusters):
            members = np.flatnonzero(cluster == c)
            zipf = 1.0 / rng.permutation(np.arange(1, members.size + 1)) ** 0.8
            weights[members] = popularity[c] * zipf / zipf.sum()
        weights /= weights.sum()
    embeddings = np.zeros((num_items + FIRST_ITEM, dim), np.float32)
    embeddings[FIRST_ITEM:] = items
    all_weights = np.zeros(num_items + FIRST_ITEM)
    all_weights[FIRST_ITEM:] = weights
    active = np.arange(num_items + FIRST_ITEM) >= FIRST_ITEM
    return embeddings, all_weights, active


def plain_numpy_density(points: np.ndarray, weights: np.ndarray, bandwidth: float,
                        chunk: int = 1024) -> np.ndarray:
    """Exact eq. 7 the straightforward way: float64, out-of-place ops, row chunks."""
    points = points.astype(np.float64)
    norms = np.square(points).sum(axis=1)
    out = np.empty(points.shape[0])
    for start in range(0, points.shape[0], chunk):
        block = points[start:start + chunk]
        squared = norms[start:start + chunk, None] + norms[None, :] - 2.0 * block @ points.T
        kernel = np.exp(-np.maximum(squared, 0.0) / (2.0 * bandwidth ** 2))
        out[start:start + chunk] = kernel @ weights
    return out / (bandwidth * math.sqrt(2.0 * math.pi))


def _times(fn: Callable[[], object], repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _h(relative: np.ndarray) -> np.ndarray:
    h = 1.0 - relative
    return h / h.sum() if h.sum() > 0 else np.full(h.shape, 1.0 / h.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100000, 1000000])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-size", type=int, default=DEFAULT_REFERENCE_SIZE,
                        help="Monte-Carlo references (default: the module's, %(default)s)")
    parser.add_argument("--exact-check-size", type=int, default=20000)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--uniform-weights", action="store_true",
                        help="uniform item weights (no repeated reference draws: the "
                             "slowest case) instead of power-law ones")
    args = parser.parse_args()
    weights_kind = "uniform" if args.uniform_weights else "power-law"
    print(f"setup: {args.clusters}-cluster Gaussian mixture in {args.dim}-d, {weights_kind} "
          f"weights, momentum {args.momentum}, reference size {args.reference_size}, "
          f"{args.repeats} repeats")

    for size in args.sizes:
        embeddings, weights, active = synthetic_catalogue(size, args.dim, args.clusters,
                                                          args.uniform_weights)
        # Monte Carlo at every size (the default exact_max_items, 16384, is below them).
        options = dict(exact_max_items=0, reference_size=args.reference_size)

        def sleep() -> np.ndarray:
            return update_weights(weights, embeddings, args.momentum, active, **options)

        times = _times(sleep, args.repeats)
        distinct = np.unique(np.random.default_rng(0).choice(
            size, size=args.reference_size, p=weights[active] / weights[active].sum())).size
        print(f"sleep phase, {size} items x {args.dim}-d ({distinct} distinct references): "
              f"min {min(times):.3f} s, median {statistics.median(times):.3f} s")

    n = args.exact_check_size
    embeddings, weights, active = synthetic_catalogue(n, args.dim, args.clusters,
                                                      args.uniform_weights, seed=1)
    items, item_weights = embeddings[active], weights[active]
    bandwidth = scott_bandwidth(items, item_weights)
    results = {}

    def timed(name: str, fn: Callable[[], np.ndarray]) -> float:
        def run() -> None:
            results[name] = fn()
        return statistics.median(_times(run, args.repeats))

    plain_s = timed("plain", lambda: plain_numpy_density(items, item_weights, bandwidth))
    exact_s = timed("exact", lambda: item_density(items, item_weights, exact_max_items=n)[0])
    approx_s = timed("approx", lambda: item_density(items, item_weights, exact_max_items=0,
                                                    reference_size=args.reference_size)[0])
    exact, approx, plain = results["exact"], results["approx"], results["plain"]
    exact_rel, approx_rel = relative_density(exact), relative_density(approx)
    error = np.abs(exact_rel - approx_rel)
    versus = f"exact vs {args.reference_size} references"
    print(f"exact check, {n} items: bandwidth {bandwidth:.4f}")
    print(f"  module exact vs plain numpy float64, max relative difference of eq. 7: "
          f"{np.max(np.abs(exact / plain - 1.0)):.2e}")
    print(f"  relative density (eq. 8), {versus}: max abs error {error.max():.4f}")
    print(f"  relative density (eq. 8), {versus}: mean abs error {error.mean():.4f}")
    print(f"  relative density (eq. 8), {versus}: Pearson correlation "
          f"{np.corrcoef(exact_rel, approx_rel)[0, 1]:.5f}")
    print(f"  eq. 9 targets h / sum(h), {versus}: L1 difference "
          f"{np.abs(_h(exact_rel) - _h(approx_rel)).sum():.5f}")
    print(f"  time, plain numpy exact density: median {plain_s:.3f} s")
    print(f"  time, module exact density: median {exact_s:.3f} s "
          f"(plain numpy / module: {plain_s / exact_s:.1f}x)")
    print(f"  time, module {args.reference_size}-reference density: median {approx_s:.3f} s "
          f"(plain numpy exact / module approximate: {plain_s / approx_s:.1f}x)")

if __name__ == "__main__":
    main()
