"""Benchmark: train-step time of MUR (parametric attention, M = 5, eq. 4 scorer) vs
SUR (M = 1) on the same prepared data, with a plain last-position dot-product step
for reference.

    python pipelines/bench_mur_speed.py                       # ML-1M (../shared/data)
    python pipelines/bench_mur_speed.py --data synthetic --steps 30 --repeats 1

Three models are built with `tfrec_proxy.models.build_model` from one config (the
library's IDW §4.4 sizes: d = 16, 2 x 4-head causal self-attention, item MLP 16-16,
all-positions training, `--batch-size` 256 targets and at least 64 sequences per
step, as `train` batches them): `last` (most recent position, dot product), `SUR`
(`extraction="mur"`, M = 1) and `MUR` (M = 5, scorer `"auto"` = eq. 4). Each is
compiled with Adam and fitted on the same shuffled training sequences for
`--warmup` (20) + `--steps` (100) steps; a Keras callback times every step after the
warm-up (which covers tracing), and a repeat's figure is the mean seconds per step
over its `--steps` steps. `--repeats` (3) alternate the models (last, SUR, MUR,
last, SUR, MUR, ...), each model keeping its traced step. Printed: one line per
model with min and median seconds per step over repeats and targets/s; the last line
`MUR/SUR step time ratio: X (median), Y (min)` (goal: <= 1.3).
"""

import argparse
import statistics
import time
from typing import Dict, List

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data import make_sequence_dataset, prepare_data, sequences_per_batch
from tfrec_proxy.data.loaders import default_data_dir
from tfrec_proxy.models import build_model, resolve_scorer

MODELS = {"last": {"extraction": "last", "scorer": "dot"},
          "SUR": {"extraction": "mur", "num_interests": 1, "scorer": "auto"},
          "MUR": {"extraction": "mur", "num_interests": 5, "scorer": "auto"}}


class StepTimer(tf.keras.callbacks.Callback):
    """Wall seconds of each train step after the first `warmup` of a `fit` call
    (batch begin to batch end; numpy logs make each step finish before its end)."""

    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.warmup = warmup
        self.seconds: List[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.warmup:
            self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = default_data_dir()
    has_ml1m = shared is not None and (shared / "ml-1m").exists()
    parser.add_argument("--data", choices=("synthetic", "ml1m"),
                        default="ml1m" if has_ml1m else "synthetic",
                        help="ML-1M from ../shared/data (default when present) or the "
                             "default synthetic data")
    parser.add_argument("--data-path", help="interaction file for --data ml1m")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256, help="targets per step")
    parser.add_argument("--min-sequences", type=int, default=64,
                        help="fewest sequences per step (train.min_sequences_per_batch)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA train steps")
    args = parser.parse_args()

    config = RunConfig()
    if args.data == "ml1m":
        config.data.source, config.data.path = "file", args.data_path
    config.model.embedding_dim = args.dim
    config.model.item_hidden_units = (args.dim, args.dim)
    data = prepare_data(config.data)
    sequences = data.split.train_sequences
    per_batch = max(sequences_per_batch(sequences, args.batch_size), args.min_sequences)
    targets_per_step = sequences.num_targets / len(sequences) * per_batch
    print(f"data: {args.data} {data.summary()}; {per_batch} sequences (~"
          f"{targets_per_step:.0f} targets) per step, d={args.dim}, history "
          f"{config.data.max_len}; {args.warmup} warm-up + {args.steps} timed steps x "
          f"{args.repeats} repeats", flush=True)

    dataset = make_sequence_dataset(sequences, per_batch, shuffle=True, seed=0).repeat()
    models = {}
    for name, overrides in MODELS.items():
        model_config = RunConfig.from_dict({"model": {**config.to_dict()["model"],
                                                      **overrides}}).model
        tf.keras.utils.set_random_seed(0)
        model = build_model(model_config, data.vocab.size, config.data.max_len,
                            data.sampling_probability)
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      jit_compile=args.jit_compile)
        models[name] = (model, resolve_scorer(model_config))
    per_step: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, (model, _) in models.items():
            timer = StepTimer(args.warmup)
            model.fit(dataset, epochs=1, steps_per_epoch=args.warmup + args.steps,
                      callbacks=[timer], verbose=0)
            per_step[name].append(statistics.mean(timer.seconds))
    for name, (_, scorer) in models.items():
        times = per_step[name]
        print(f"{name} ({MODELS[name]['extraction']}, M={MODELS[name].get('num_interests', 1)}"
              f", scorer {scorer}): s/step min {min(times) * 1e3:.1f} ms / median "
              f"{statistics.median(times) * 1e3:.1f} ms; targets/s median "
              f"{targets_per_step / statistics.median(times):,.0f}; per repeat "
              f"{[round(t * 1e3, 1) for t in times]} ms", flush=True)
    sur, mur = per_step["SUR"], per_step["MUR"]
    print(f"SUR/last step time ratio: "
          f"{statistics.median(sur) / statistics.median(per_step['last']):.2f} (median)")
    print(f"MUR/SUR step time ratio: {statistics.median(mur) / statistics.median(sur):.2f} "
          f"(median), {min(mur) / min(sur):.2f} (min)")


if __name__ == "__main__":
    main()
