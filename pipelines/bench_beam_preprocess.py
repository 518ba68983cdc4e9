"""The Beam pipeline against the in-memory path on one interaction file (default:
MovieLens-1M in SASRec's format): wall time of each, and whether the outputs agree
exactly (vocabulary, item counts, every split's examples, training sequences,
exclusion sets). Appends one JSON line per run to `--results`.

    python pipelines/bench_beam_preprocess.py --repeats 3 \
        --results pipelines/results/beam_preprocess.jsonl
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfrec_proxy.config import DataConfig  # noqa: E402
from tfrec_proxy.data import prepare_data  # noqa: E402
from tfrec_proxy.data.loaders import default_data_dir  # noqa: E402


def differences(beam, memory) -> list:
    """Names of the outputs in which the two `PreparedData` differ (empty: equal)."""
    found = []

    def same(name, a, b):
        if not (np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b)):
            found.append(name)

    same("vocabulary", beam.vocab.ids, memory.vocab.ids)
    same("item_counts", beam.item_counts, memory.item_counts)
    for split in ("train", "validation", "test"):
        for field in ("history", "target", "user", "owner", "last_chunk"):
            same(f"{split}.{field}", getattr(getattr(beam.split, split), field),
                 getattr(getattr(memory.split, split), field))
    for field in ("history", "targets", "user"):
        same(f"train_sequences.{field}", getattr(beam.split.train_sequences, field),
             getattr(memory.split.train_sequences, field))
    if sorted(beam.split.user_items) != sorted(memory.split.user_items) or any(
            not np.array_equal(beam.split.user_items[u], items)
            for u, items in memory.split.user_items.items()):
        found.append("user_items")
    if beam.summary() != memory.summary():
        found.append("summary")
    return found


def main(argv=None) -> int:
    from tfrec_proxy.data.beam_preprocess import run_pipeline
    from tfrec_proxy.data.shards import load_prepared

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=None, help="default: ../shared/data ML-1M")
    parser.add_argument("--split", default="per-user", choices=("chunked", "per-user"))
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="DirectRunner workers")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    path = args.input or str(default_data_dir() / "ml-1m" / "ml-1m.txt")
    config = DataConfig(source="file", path=path, split=args.split, max_len=args.max_len)
    beam_args = ["--runner=DirectRunner", f"--direct_num_workers={args.workers}",
                 "--direct_running_mode=" + ("in_memory" if args.workers == 1
                                             else "multi_processing")]
    for repeat in range(args.repeats):
        started = time.perf_counter()
        memory = prepare_data(config)
        memory_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            run_pipeline(config, [path], folder, beam_args=beam_args)
            beam_s = time.perf_counter() - started
            started = time.perf_counter()
            beam = load_prepared(folder, max_len=args.max_len)
            load_s = time.perf_counter() - started
            shard_mb = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20
        result = {"input": Path(path).name, "split": args.split, "max_len": args.max_len,
                  "workers": args.workers, "repeat": repeat,
                  "in_memory_s": round(memory_s, 2), "beam_s": round(beam_s, 2),
                  "load_shards_s": round(load_s, 2), "shards_mib": round(shard_mb, 1),
                  "examples": memory.summary(), "differences": differences(beam, memory)}
        print(json.dumps(result), flush=True)
        if args.results:
            with open(args.results, "a") as handle:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
