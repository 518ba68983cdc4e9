"""Benchmark: an exported run's ScaNN index against its brute-force index.

Queries both retrieval SavedModels of a run with the run's own test histories and
reports ScaNN's recall@k against the exact top-k, and the speed of each (queries per
second, min/median over repeats, same process), as a ratio ScaNN/brute force.

Usage:
    python pipelines/bench_run_retrieval.py --run saved_models/<run> [--queries 1000] [-k 10]
"""

import argparse
import statistics
import time

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy.data import prepare_data
from tfrec_proxy.export import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    run = load_run(args.run)
    if "scann" not in run.indexes:
        raise SystemExit(f"{args.run} has no ScaNN index (indexes: {run.indexes}).")
    data = prepare_data(run.config.data)
    histories = [data.vocab.raw_ids(row[row > 0]).tolist()
                 for row in data.split.test.history[:args.queries]]
    results, seconds = {}, {}
    for index in ("brute_force", "scann"):
        run.recommend(histories[:2], k=args.k, index=index)  # load + trace once
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[index], _ = run.recommend(histories, k=args.k, index=index)
            times.append(time.perf_counter() - start)
        seconds[index] = times
    recall = np.mean([len(set(a) & set(b)) / args.k
                      for a, b in zip(results["scann"], results["brute_force"])])
    print(f"run {args.run}: {len(run.candidate_ids)} candidates, ScaNN {run.manifest['scann']}")
    print(f"recall@{args.k} of ScaNN against brute force over {len(histories)} test "
          f"histories: {recall:.4f}")
    for index, times in seconds.items():
        print(f"  {index:<11} {len(histories) / statistics.median(times):9.0f} queries/s "
              f"(median), {len(histories) / min(times):9.0f} (best)")
    print(f"  speed ratio ScaNN/brute force (median): "
          f"{statistics.median(seconds['brute_force']) / statistics.median(seconds['scann']):.2f}")


if __name__ == "__main__":
    main()
