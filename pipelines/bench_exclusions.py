"""Benchmark: sampled-negative exclusion sets, per-row lists vs shared `Exclusions`.

Builds MovieLens-1M-sized data synthetically: 6,040 users, 3,416 items, per-user
history lengths >= 20 with a long tail (mean ~165 distinct items, like ML-1M's
1,000,209 ratings), item popularity Zipf-like, and one evaluation row per chunk of
`--max-len` items (the repository's chunking: chunks counted from the newest item,
a remainder chunk shorter than 3 dropped), ~35,700 rows.

Then, in the same process and on the same inputs, `metrics.sample_negatives` is run
with the exclusions in two forms:

* per-row lists, `[user_items[user] for user in row_users]` (the old calling
  convention; `sample_negatives` converts them with `Exclusions.from_rows`, which
  copies every user's set once per row),
* `Exclusions.from_user_sets(user_items, row_users)` (one set per user), its
  construction included in the timing.

Each form is timed `--repeats` times (min/median), then run once more under
`tracemalloc` for its peak of traced allocations (numpy arrays included). Both forms
must give identical negatives for the same seed; the script asserts it. With
`--baseline FILE`, the `sample_negatives` of another implementation (e.g. the
pre-split module, `git show ab32eea:tfrec_proxy/metrics.py > /tmp/old_metrics.py`)
is measured too, with the per-row lists, and must agree as well.

Usage:
    python pipelines/bench_exclusions.py [--users 6040] [--items 3416] [--repeats 3]
        [--baseline /tmp/old_metrics.py]
"""

import argparse
import importlib.util
import statistics
import time
import tracemalloc
from typing import Callable, Dict, List, Tuple

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy.metrics import Exclusions, sample_negatives

FIRST_ITEM = 2  # vocabulary indices 0 (padding) and 1 (OOV) are no items


def synthetic_ml1m(num_users: int, num_items: int, max_len: int, seed: int = 0
                   ) -> Tuple[Dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """`(user_items, row_users, targets)` shaped like MovieLens-1M's test split.

    Returns:
        user_items: raw user id -> sorted distinct int32 item indices in `[2, V)`.
        row_users: `[N]` int64 user of each evaluation row (one per kept chunk).
        targets: `[N]` int64 target of each row, an item of its user.
    """
    rng = np.random.default_rng(seed)
    # ML-1M: every user has >= 20 ratings, mean 165.6, max 2,314; the log-normal's
    # spread (1.05) matches its per-row expansion (13.4M entries over 35,737 rows).
    sigma = 1.05
    lengths = 20 + np.rint(rng.lognormal(np.log(145.6) - sigma ** 2 / 2, sigma,
                                         num_users)).astype(int)
    lengths = np.minimum(lengths, num_items)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    log_popularity = np.log(popularity / popularity.sum())
    user_items, row_users, targets = {}, [], []
    for user, length in enumerate(lengths):
        # Gumbel top-k: `length` distinct items drawn by popularity, in random order.
        keys = log_popularity + rng.gumbel(size=num_items)
        sequence = np.argpartition(-keys, length - 1)[:length] + FIRST_ITEM
        rng.shuffle(sequence)
        user_items[user] = np.sort(sequence).astype(np.int32)
        num_chunks = -(-length // max_len)
        oldest = length - (num_chunks - 1) * max_len
        chunk_ends = oldest + max_len * np.arange(num_chunks)  # exclusive ends
        kept = chunk_ends[(chunk_ends - np.r_[0, chunk_ends[:-1]]) >= 3]
        row_users.extend([user] * kept.size)
        targets.extend(sequence[kept - 1])
    return user_items, np.asarray(row_users, np.int64), np.asarray(targets, np.int64)


def _measure(fn: Callable[[], np.ndarray], repeats: int) -> Tuple[np.ndarray, List[float], int]:
    """`(result, wall times in s, tracemalloc peak in bytes of one extra traced run)`."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    del result
    tracemalloc.start()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, times, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3416)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--negatives", type=int, default=99)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="a module file whose sample_negatives to measure "
                        "too, with the per-row lists")
    args = parser.parse_args()

    user_items, row_users, targets = synthetic_ml1m(args.users, args.items, args.max_len)
    vocab_size = args.items + FIRST_ITEM
    per_row = [user_items[int(user)] for user in row_users]
    set_sizes = np.array([items.size for items in user_items.values()])
    print(f"data: {len(user_items)} users, {args.items} items, {row_users.size} evaluation "
          f"rows; {set_sizes.sum()} (user, item) pairs, mean {set_sizes.mean():.1f} per "
          f"user; per-row expansion {sum(items.size for items in per_row)} entries")

    def run_rows() -> np.ndarray:
        return sample_negatives(vocab_size, targets, per_row, args.negatives, seed=0)

    def run_sets() -> np.ndarray:
        exclusions = Exclusions.from_user_sets(user_items, row_users)
        return sample_negatives(vocab_size, targets, exclusions, args.negatives, seed=0)

    forms = {"per-row lists": run_rows, "Exclusions.from_user_sets": run_sets}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_metrics", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        forms["baseline, per-row lists"] = lambda: baseline.sample_negatives(
            vocab_size, targets, per_row, args.negatives, seed=0)

    sample_negatives(vocab_size, targets[:10], per_row[:10], args.negatives)  # warm-up
    measured = {name: _measure(fn, args.repeats) for name, fn in forms.items()}
    reference = measured["Exclusions.from_user_sets"][0]
    for name, (result, _, _) in measured.items():
        assert np.array_equal(result, reference), f"{name} disagrees"

    print(f"sample_negatives, {row_users.size} rows x {args.negatives} negatives, "
          f"{args.repeats} repeats:")
    for name, (_, times, peak) in measured.items():
        print(f"  {name:<26} time min {min(times):.3f} s median "
              f"{statistics.median(times):.3f} s; tracemalloc peak {peak / 2**20:.1f} MiB")
    _, shared_times, shared_peak = measured["Exclusions.from_user_sets"]
    for name, (_, times, peak) in measured.items():
        if name != "Exclusions.from_user_sets":
            print(f"  ratio {name} / shared sets: time (median) "
                  f"{statistics.median(times) / statistics.median(shared_times):.2f}x, "
                  f"peak memory {peak / shared_peak:.2f}x")
    print(f"  negatives identical across the {len(measured)} runs for the same seed: True")


if __name__ == "__main__":
    main()
