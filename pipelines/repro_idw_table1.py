"""Reproduction: IDW Table 1 on MovieLens-1M: SUR, MUR, five imbalance baselines and
SUR-/MUR-IDW, sampled and full-ranking HR/NDCG@20 and @5, head vs tail NDCG@20.

    python pipelines/repro_idw_table1.py                          # the grid (resumable)
    python pipelines/repro_idw_table1.py --summarize              # markdown tables
    python pipelines/repro_idw_table1.py --quick --methods sur mur_idw   # smoke run

Base config `--config` (default `pipelines/configs/ml1m_idw.json`: the ml1m_sur.json
settings, d = 16, MUR parametric attention, eq. 4 scorer, up to 30 epochs, early
stopping on validation sampled NDCG@20 with patience 3; IDW m = 0.9, eta = 4e-4, at
most 10 iterations, calibration on), data from `../shared/data/ml-1m` unless
`--data-path` is given; the data is prepared once and shared by every run. Methods
(`--methods`, default all nine presets of `pipelines/methods.py` in Table 1 order):
`sur`, `mur`, `sur_idw`, `mur_idw` run with `--seeds` (0 1 2), the baselines
(`frequency`, `focal`, `qmargin`, `item_norm`, `posthoc`) with `--baseline-seeds`
(0). The seed is the training seed (init, shuffling, evaluation negatives). The
most informative runs come first: the first seed of sur, mur_idw, mur, sur_idw,
then the baselines, then the other seeds.

Each finished run appends one JSON line to `--results` (method, seed, wall seconds,
per-phase epochs and seconds, the IDW trace, every test metric of `train`) and
prints one progress line; runs already in the file are skipped, so a rerun resumes.

`--summarize` prints markdown tables (×100, mean ± std over seeds): sampled (99
negatives, the paper's protocol; with the paper's Table 1 numbers) and full-ranking
HR@20 / NDCG@20 / HR@5 / NDCG@5 and head / tail NDCG@20 (head = the 20% most
frequent training items); the relative gain over SUR (full NDCG@20, full tail
NDCG@20, sampled NDCG@20 and HR@20) next to the paper's (MUR-IDW vs SUR: +2.52%
HR@20, +5.14% NDCG@20); the time each method took; and IDW's overhead per IDW run:
(sum of sleep seconds + calibration seconds) / (pretrain + idw phase seconds - sleep
seconds).

`--quick` swaps in small synthetic data (200 users, 100 items), 1 epoch per phase,
no early stopping and one IDW iteration (seconds per run; results default to
`pipelines/results/idw_table1_quick.jsonl`).
"""

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import (LABELS, METHODS, append_result, apply_method, check_methods,  # noqa: E402
                     config_hash, grid_todo, markdown_table, mean, mean_std, runs_by_method)

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "ml1m_idw.json"
RESULTS_DIR = HERE / "results"
MAIN_METHODS = ("sur", "mur_idw", "mur", "sur_idw")  # run order of the first seed
KEY = ("method", "seed")
# IDW Table 1, MovieLens-1M (sampled protocol, 99 negatives): HR@20, NDCG@20 (%).
PAPER = {"sur": (80.62, 47.24), "mur": (80.82, 47.72), "frequency": (75.75, 40.36),
         "focal": (80.88, 45.48), "qmargin": (80.35, 45.43), "item_norm": (81.36, 47.19),
         "posthoc": (80.20, 45.87), "sur_idw": (81.85, 48.95), "mur_idw": (82.65, 49.67)}
NUM_INTERESTS = {name: overrides["model.num_interests"] for name, overrides in METHODS.items()}
METRIC_COLUMNS = (("HR@20", "hr@20"), ("NDCG@20", "ndcg@20"), ("HR@5", "hr@5"),
                  ("NDCG@5", "ndcg@5"), ("head NDCG@20", "head/ndcg@20"),
                  ("tail NDCG@20", "tail/ndcg@20"), ("head HR@20", "head/hr@20"),
                  ("tail HR@20", "tail/hr@20"))


def base_config(args: argparse.Namespace):
    from tfrec_proxy.config import RunConfig

    config = RunConfig.from_json(args.config)
    if args.data_path:
        config.data.source, config.data.path = "file", args.data_path
    if args.quick:
        config.data.source = "synthetic"
        config.data.synthetic.num_users, config.data.synthetic.num_items = 200, 100
        config.train.epochs, config.train.early_stopping_patience = 1, 0
        config.train.idw.max_iterations = 1
        config.train.idw.pretrain_epochs = config.train.idw.calibration_epochs = None
    return config


def work_order(methods: Sequence[str], seeds: Sequence[int],
               baseline_seeds: Sequence[int]) -> List[Tuple[str, int]]:
    """(method, seed) pairs, most important first (see the module docstring)."""
    main = [m for m in MAIN_METHODS if m in methods]
    baselines = [m for m in methods if m not in MAIN_METHODS]
    order = [(m, seeds[0]) for m in main] if seeds else []
    order += [(m, s) for s in baseline_seeds for m in baselines]
    order += [(m, s) for s in seeds[1:] for m in main]
    return list(dict.fromkeys(order))


def run_config(base, method: str, seed: int):
    config = apply_method(base, method)
    config.train.seed = int(seed)
    return config


def run_grid(args: argparse.Namespace) -> None:
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.training import train

    base = base_config(args)
    order = work_order(check_methods(args.methods), args.seeds, args.baseline_seeds)
    grid, todo = grid_todo(args.results, base, order, KEY)
    if not todo:
        return
    started = time.perf_counter()
    data = prepare_data(base.data)
    print(f"data: {data.summary()} ({time.perf_counter() - started:.0f} s)", flush=True)
    for number, (method, seed) in enumerate(todo, start=1):
        config = run_config(base, method, seed)
        started = time.perf_counter()
        result = train(config, export=False, verbose=0, data=data)
        seconds = time.perf_counter() - started
        idw = next((p.get("idw") for p in result.phases if p["name"] == "idw"), None)
        record = {"method": method, "seed": int(seed), "seconds": round(seconds, 2),
                  "config_hash": config_hash(config), "grid_hash": grid,
                  "epochs": sum(p["epochs"] for p in result.phases),
                  "phases": [{"name": p["name"], "epochs": p["epochs"],
                              "seconds": p["seconds"]} for p in result.phases],
                  "idw": idw, "metrics": result.metrics}
        append_result(args.results, record)
        m = result.metrics
        phases = ", ".join(f"{p['name']} {p['epochs']} ep {p['seconds'] / 60:.1f} min"
                           for p in result.phases)
        print(f"[{number}/{len(todo)}] {method} seed {seed}: {seconds / 60:.1f} min "
              f"({phases}); sampled HR@20 {m['sampled/hr@20']:.4f} NDCG@20 "
              f"{m['sampled/ndcg@20']:.4f}; full HR@20 {m['full/hr@20']:.4f} NDCG@20 "
              f"{m['full/ndcg@20']:.4f} tail NDCG@20 {m['full/tail/ndcg@20']:.4f}"
              + (f"; IDW {idw['iterations']} iterations, converged {idw['converged']}"
                 if idw else ""), flush=True)


def _gain(value: float, reference: float) -> str:
    if not (reference and reference == reference and value == value):
        return "-"
    return f"{100 * (value / reference - 1):+.2f}%"


def idw_overhead(record: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """IDW's extra cost in one run: (sleeps + calibration) / (pretrain + wakes)."""
    if not record.get("idw"):
        return None
    seconds = defaultdict(float)
    for phase in record["phases"]:
        seconds[phase["name"]] += phase["seconds"]
    sleep = float(sum(record["idw"].get("sleep_seconds", [])))
    training = seconds["pretrain"] + seconds["idw"] - sleep
    extra = sleep + seconds["calibrate"]
    return {"sleep": sleep, "calibrate": seconds["calibrate"], "training": training,
            "overhead": extra / training if training > 0 else float("nan")}


def summarize_results(args: argparse.Namespace) -> None:
    runs = runs_by_method(args.results)
    methods = [m for m in METHODS if m in runs]

    def values(method: str, key: str) -> List[float]:
        return [r["metrics"].get(key) for r in runs[method]]

    for protocol, title in (("sampled", "sampled ranking (99 negatives, the paper's "
                             "protocol)"), ("full", "full ranking (all items)")):
        header = ["method", "M", "seeds"] + [name for name, _ in METRIC_COLUMNS]
        if protocol == "sampled":
            header += ["paper HR@20", "paper NDCG@20"]
        rows = []
        for method in methods:
            row = [LABELS[method], NUM_INTERESTS[method], len(runs[method])]
            row += [mean_std(values(method, f"{protocol}/{key}"), 100)
                    for _, key in METRIC_COLUMNS]
            if protocol == "sampled":
                row += [f"{PAPER[method][0]:.2f}", f"{PAPER[method][1]:.2f}"]
            rows.append(row)
        print(f"\nIDW Table 1 on MovieLens-1M, test {title}, x100, mean ± std over seeds "
              f"({args.results}):")
        print(markdown_table(header, rows))

    if "sur" in runs:
        rows = []
        for method in methods:
            if method == "sur":
                continue
            ours = [_gain(mean(values(method, key)), mean(values("sur", key)))
                    for key in ("full/ndcg@20", "full/tail/ndcg@20", "sampled/ndcg@20",
                                "sampled/hr@20")]
            paper = [_gain(PAPER[method][i], PAPER["sur"][i]) for i in (1, 0)]
            rows.append([f"{LABELS[method]} vs SUR"] + ours + paper)
        print("\nRelative gain over SUR (ratio of the means over seeds):")
        print(markdown_table(["comparison", "full NDCG@20", "full tail NDCG@20",
                              "sampled NDCG@20", "sampled HR@20", "paper NDCG@20",
                              "paper HR@20"], rows))

    rows = []
    for method in methods:
        by_phase: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        for record in runs[method]:
            for phase in record["phases"]:
                by_phase[phase["name"]].append(phase)
        phases = "; ".join(
            f"{name} {mean([p['epochs'] for p in done]):.1f} ep "
            f"{mean([p['seconds'] for p in done]) / 60:.1f} min"
            for name, done in by_phase.items())
        rows.append([LABELS[method], len(runs[method]),
                     f"{mean([r['seconds'] for r in runs[method]]) / 60:.1f}",
                     f"{mean([r['epochs'] for r in runs[method]]):.1f}", phases])
    print("\nTime per run (mean over seeds):")
    print(markdown_table(["method", "runs", "minutes", "epochs", "phases (mean epochs, "
                          "minutes)"], rows))

    rows = []
    for record in [r for method_runs in runs.values() for r in method_runs]:
        overhead = idw_overhead(record)
        if overhead is None:
            continue
        idw = record["idw"]
        rows.append([LABELS[record["method"]], record["seed"], idw["iterations"],
                     idw["converged"], f"{overhead['sleep']:.1f}",
                     f"{overhead['calibrate']:.1f}", f"{overhead['training']:.1f}",
                     f"{100 * overhead['overhead']:.1f}%"])
    if rows:
        print("\nIDW overhead per run: (sleep + calibration s) / (pretrain + idw - sleep s):")
        print(markdown_table(["method", "seed", "iterations", "converged", "sleep s",
                              "calibration s", "pretrain + wake s", "overhead"], rows))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help=f"presets of pipelines/methods.py: {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help=f"training seeds of {', '.join(MAIN_METHODS)}")
    parser.add_argument("--baseline-seeds", type=int, nargs="+", default=[0],
                        help="training seeds of the other methods")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="base RunConfig JSON")
    parser.add_argument("--data-path", help="interaction file (default: the config's, "
                        "or ../shared/data/ml-1m)")
    parser.add_argument("--quick", action="store_true",
                        help="small synthetic data, 1 epoch, 1 IDW iteration (smoke test)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON-lines results file (default pipelines/results/"
                             "idw_table1.jsonl, or idw_table1_quick.jsonl with --quick)")
    parser.add_argument("--summarize", action="store_true",
                        help="print the tables of --results; no training")
    args = parser.parse_args(argv)
    try:
        check_methods(args.methods)
    except ValueError as error:
        parser.error(str(error))
    if args.results is None:
        args.results = RESULTS_DIR / ("idw_table1_quick.jsonl" if args.quick
                                      else "idw_table1.jsonl")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarize:
        summarize_results(args)
        return
    import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)

    if args.quick:  # 100 items: the sampled protocol cannot draw 99 negatives
        warnings.filterwarnings("ignore", message=".*fewer than num_negatives.*")
    run_grid(args)


if __name__ == "__main__":
    main()
