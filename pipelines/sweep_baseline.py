"""Sweep: the baseline's test metrics under config overrides, on one prepared data set.

Each `--set` is one run: `;`-separated `section.field=value` overrides of a `RunConfig`
(values are JSON), applied on top of `--config` (default: `RunConfig()`), e.g.

    python pipelines/sweep_baseline.py --config pipelines/configs/ml1m_d64.json \\
        --set "train.learning_rate=0.01" --set "train.learning_rate=0.003;model.dropout=0.0"

prints one line per run: wall time, test metrics (sampled and full NDCG@20, full
HR@20, full tail NDCG@20) and the validation NDCG@20 of every epoch.
"""

import argparse
import json
import time

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data import prepare_data
from tfrec_proxy.training import train


def _override(config: RunConfig, spec: str) -> RunConfig:
    values = config.to_dict()
    for assignment in filter(None, (part.strip() for part in spec.split(";"))):
        key, _, text = assignment.partition("=")
        section, _, name = key.strip().partition(".")
        if section not in values or name not in values[section]:
            raise ValueError(f"--set {assignment!r}: unknown field {key!r}; expected "
                             "section.field, e.g. train.learning_rate")
        values[section][name] = json.loads(text)
    return RunConfig.from_dict(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="RunConfig JSON (default: the built-in defaults)")
    parser.add_argument("--set", action="append", default=[], dest="runs",
                        help="one run's overrides, e.g. 'train.learning_rate=0.003'")
    args = parser.parse_args()
    base = RunConfig.from_json(args.config) if args.config else RunConfig()
    data = prepare_data(base.data)
    print(f"data: {data.summary()}")
    for spec in args.runs or [""]:
        config = _override(base, spec)
        if config.data != base.data:
            raise ValueError(f"--set {spec!r} changes the data settings; the sweep shares "
                             "one prepared data set, so change them in --config instead.")
        started = time.perf_counter()
        result = train(config, export=False, verbose=0, data=data)
        m = result.metrics
        print(f"[{spec or 'defaults'}] {time.perf_counter() - started:.0f} s, "
              f"{len(result.history['loss'])} epochs: sampled NDCG@20 "
              f"{m['sampled/ndcg@20']:.4f}; full HR@20 {m['full/hr@20']:.4f} NDCG@20 "
              f"{m['full/ndcg@20']:.4f} tail NDCG@20 {m['full/tail/ndcg@20']:.4f}; "
              f"val NDCG@20 by epoch {[round(v, 4) for v in result.history['val_ndcg@20']]}",
              flush=True)


if __name__ == "__main__":
    main()
