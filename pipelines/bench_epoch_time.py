"""Benchmark: seconds per training epoch of the ML-1M SASRec configuration at several
targets-per-step settings and widths, through `tfrec_proxy.training.train` (the path
real runs take: `EpochShuffled` batches, the validation pass and callbacks included).

    python pipelines/bench_epoch_time.py                         # 3,200 vs 12,800 targets, d = 64
    python pipelines/bench_epoch_time.py --settings 12800:64:50 12800:64:64

Each setting is `targets:min_sequences:dim`; every one trains one epoch (no early
stopping, no export) of `pipelines/configs/ml1m_sasrec.json` with the full softmax,
on data prepared once, in the order given; printed: the train phase's seconds and
the steps it took. Compare settings within one invocation (the machine is shared).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import with_overrides  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["3200:16:64", "12800:64:64"],
                        help="targets:min_sequences:dim per run (default: 3200:16:64 "
                             "12800:64:64)")
    parser.add_argument("--data-path", help="ML-1M folder (default ../shared/data/ml-1m)")
    parser.add_argument("--quick", action="store_true",
                        help="synthetic data, d = 8 (smoke run)")
    args = parser.parse_args()
    settings = []
    for text in args.settings:
        parts = text.split(":")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--settings takes targets:min_sequences:dim with positive "
                         f"integers, got {text!r}")
        settings.append(tuple(int(p) for p in parts))

    from tfrec_proxy.config import RunConfig
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.training import train

    base = RunConfig.from_json(HERE / "configs" / "ml1m_sasrec.json")
    if args.data_path:
        base.data.path = args.data_path
    if args.quick:
        base.data.source, base.data.max_len = "synthetic", 20
    data = prepare_data(base.data)
    print(f"data: {data.summary()}", flush=True)
    for targets, min_sequences, dim in settings:
        config = with_overrides(base, {
            "model.loss": "full-softmax", "model.embedding_dim": 8 if args.quick else dim,
            "train.batch_size": targets, "train.min_sequences_per_batch": min_sequences,
            "train.epochs": 1, "train.early_stopping_patience": 0}, 0)
        started = time.perf_counter()
        result = train(config, export=False, verbose=0, data=data)
        phase = result.phases[0]
        steps = result.model.optimizer.iterations.numpy()
        print(f"targets {targets}, min sequences {min_sequences}, d={dim}: "
              f"{phase['seconds']:.1f} s for the epoch ({steps} steps, validation "
              f"included), {time.perf_counter() - started:.1f} s with the test "
              f"evaluation", flush=True)


if __name__ == "__main__":
    main()
