"""Benchmark: RAM vs SASRec train-step time by number of attention blocks (RAM §7.4).

    python pipelines/bench_ram_blocks.py                        # ML-1M, per-user split
    python pipelines/bench_ram_blocks.py --data synthetic --steps 5 --repeats 1

For n_b in `--blocks` (2 4 8), a SASRec and a RAM model (`tfrec_proxy.models.build_model`,
the `pipelines/configs/ml1m_sasrec.json` settings: d = 50, 1 head, dropout 0.2, tied
item embeddings, full softmax, histories of `--max-len` 200, the SASRec protocol's
per-user sequences, all positions trained, `--batch-size` 12,800 targets and at
least 64 sequences per step) are fitted on the same shuffled sequences for
`--warmup` + `--steps` steps; `bench_mur_speed.StepTimer` times every step after the
warm-up; `--repeats` alternate the models (each keeps its traced step). Printed per
n_b: seconds per step (min / median over repeats) of each and the ratio
RAM / SASRec (RAM §5.5: its blocks attend from one query per position over reused
item representations, the same O(n^2 d) attention as SASRec in this all-positions
form, but without the per-block key/value projections of the block's own output;
RAM §7.4 reports RAM faster per block on GPUs).
"""

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tfrec_proxy  # noqa: E402,F401  (TensorFlow with Keras 2)
from bench_mur_speed import StepTimer  # noqa: E402
from tfrec_proxy._tf import tf  # noqa: E402
from tfrec_proxy.config import RunConfig  # noqa: E402
from tfrec_proxy.data import make_sequence_dataset, prepare_data, sequences_per_batch  # noqa: E402
from tfrec_proxy.models import build_model  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("ml1m", "synthetic"), default="ml1m")
    parser.add_argument("--data-path", help="ML-1M folder (default ../shared/data/ml-1m)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=12800, help="targets per step")
    parser.add_argument("--dim", type=int, help="model width d (default: the config's 50)")
    parser.add_argument("--heads", type=int, help="attention heads (default: the config's 1)")
    parser.add_argument("--min-sequences", type=int,
                        help="fewest sequences per step (default: the config's 64)")
    args = parser.parse_args()

    config = RunConfig.from_json(HERE / "configs" / "ml1m_sasrec.json")
    config.data.max_len = args.max_len
    if args.dim is not None:
        config.model.embedding_dim = args.dim
    if args.heads is not None:
        config.model.num_heads = args.heads
    if args.min_sequences is not None:
        config.train.min_sequences_per_batch = args.min_sequences
    if args.data == "synthetic":
        config.data.source = "synthetic"
    elif args.data_path:
        config.data.path = args.data_path
    data = prepare_data(config.data)
    sequences = data.split.train_sequences
    per_batch = max(sequences_per_batch(sequences, args.batch_size),
                    config.train.min_sequences_per_batch)
    print(f"data: {args.data} {data.summary()}; {per_batch} sequences per step, "
          f"d={config.model.embedding_dim}, L={args.max_len}; {args.warmup} warm-up + "
          f"{args.steps} timed steps x {args.repeats} repeats", flush=True)
    # User ids ride along for RAM's user embedding (SASRec's query tower ignores them).
    dataset = make_sequence_dataset(sequences, per_batch, shuffle=True, seed=0,
                                    with_users=True).repeat()
    for blocks in args.blocks:
        models = {}
        for encoder in ("sasrec", "ram"):
            model_config = RunConfig.from_dict({"model": {
                **config.to_dict()["model"], "encoder": encoder, "num_layers": blocks}}).model
            tf.keras.utils.set_random_seed(0)
            model = build_model(model_config, data.vocab.size, args.max_len,
                                data.sampling_probability, trained_positions=args.max_len,
                                user_ids=sequences.user if encoder == "ram" else None)
            model.compile(optimizer=tf.keras.optimizers.Adam(config.train.learning_rate))
            models[encoder] = model
        seconds: Dict[str, List[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                timer = StepTimer(args.warmup)
                model.fit(dataset, epochs=1, steps_per_epoch=args.warmup + args.steps,
                          callbacks=[timer], verbose=0)
                seconds[name].append(statistics.mean(timer.seconds))
        ratio = statistics.median(seconds["ram"]) / statistics.median(seconds["sasrec"])
        print(f"n_b={blocks}: " + "; ".join(
            f"{name} s/step min {min(t) * 1e3:.1f} ms / median "
            f"{statistics.median(t) * 1e3:.1f} ms" for name, t in seconds.items())
              + f"; RAM/SASRec step time ratio {ratio:.2f} (median)", flush=True)


if __name__ == "__main__":
    main()
