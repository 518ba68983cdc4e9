"""Reproduction: IDW §3.2 / Figure 3 on synthetic data: HR@20 on tail, head and all
clusters and the item silhouette, against the skew of the interest distribution.

    python pipelines/repro_idw_synthetic.py                       # the grid (resumable)
    python pipelines/repro_idw_synthetic.py --summarize           # table + PNG plot

Data (`tfrec_proxy.data.generate_long_tail`, IDW Appendix A) as in Figure 3: 50 items
in 5 clusters (`--num-items`, `--num-clusters`), 2,000 users (`--num-users`) with 2
interests each, 30 clicks per user, within-cluster item skew 0.5; the interest skew
(the power-law exponent of the cluster weights) is each of `--skews` (default 0 1 2).
Methods (`--methods`, presets of `pipelines/methods.py`): SUR (parametric attention,
M = 1), MUR (M = 5, eq. 4 scorer), and both with IDW. Each of `--seeds` sets the
data seed and the training seed. Model: the library's IDW §4.4 defaults (d = 16,
2 x 4-head self-attention, Adam 0.01), up to `--epochs` 20 epochs with early
stopping on validation sampled NDCG@20 (patience `--patience` 3); IDW at its
defaults (m = 0.9, eta = 4e-4, at most `--max-iterations` 10 sleep/wake iterations,
calibration on).

Metrics, on the test examples, from full-ranking ranks (the target against all 50
items; items in the user's history stay candidates, as in the library's `full/`
metrics; on 50 items the 99-negative sampled protocol would just rank against every
item the user never clicked):

* HR@20 over all test examples;
* HR@20 of the examples whose target lies in a head cluster vs a tail cluster. The
  clusters are sorted by training-target frequency (the summed training-target
  counts of their items); head = the most frequent 20% of clusters (at least one:
  one of 5), tail = the rest;
* the mean silhouette of the item vectors against the ground-truth clusters
  (`items/silhouette`, IDW §3.2), and the IDW iteration count.

Each finished run appends one JSON line to `--results` (method, skew, seed, seconds,
the metrics, the head clusters, the IDW trace); (method, skew, seed) already in the
file are skipped, so a rerun resumes. `--summarize` prints a markdown table (mean ±
std over seeds, HR in %) and writes a 4-panel plot (`--plot`): HR@20 tail / head /
all and silhouette against the skew, one line per method with std error bars
(default `pipelines/results/idw_synthetic.png`, i.e. `--results` with `.png`).
"""

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import (LABELS, METHODS, append_result, apply_method, check_methods,  # noqa: E402
                     config_hash, markdown_table, mean, mean_std, open_grid, read_results,
                     std)

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "idw_synthetic.jsonl"
DEFAULT_METHODS = ("sur", "mur", "sur_idw", "mur_idw")
KEY = ("method", "skew", "seed")
HEAD_SHARE = 0.2


def base_config(args: argparse.Namespace):
    from tfrec_proxy.config import RunConfig

    config = RunConfig()
    synthetic = config.data.synthetic
    synthetic.num_users, synthetic.num_items = args.num_users, args.num_items
    synthetic.num_clusters, synthetic.seq_len = args.num_clusters, args.seq_len
    synthetic.item_skew, synthetic.interests_per_user = 0.5, args.interests_per_user
    config.data.source, config.data.max_len = "synthetic", 30
    config.train.epochs = args.epochs
    config.train.early_stopping_patience = args.patience
    config.train.monitor = "val_ndcg@20"
    config.train.idw.max_iterations = args.max_iterations
    return config


def run_config(base, method: str, skew: float, seed: int):
    config = apply_method(base, method)
    config.data.synthetic.interest_skew = float(skew)
    config.data.synthetic.seed = config.train.seed = int(seed)
    return config


def head_clusters(data, num_clusters: int) -> np.ndarray:
    """The most frequent `HEAD_SHARE` of the `num_clusters` clusters by
    training-target frequency (at least one), as sorted cluster ids."""
    clusters = data.item_clusters[2:]
    frequency = np.bincount(clusters, weights=data.item_counts[2:].astype(np.float64),
                            minlength=num_clusters)
    num_head = max(1, int(round(HEAD_SHARE * num_clusters)))
    return np.sort(np.argsort(-frequency, kind="stable")[:num_head])


def cluster_metrics(result, config) -> Dict[str, float]:
    """Full-ranking HR@k / NDCG@k on test examples, all and by head / tail cluster."""
    from tfrec_proxy.metrics import full_ranks, summarize

    data, model = result.data, result.model
    examples = data.examples("test", chunks=config.train.eval_chunks)
    ranks = full_ranks(model.scorer, model.query_embeddings(examples.history),
                       model.item_embeddings(data.vocab.size), examples.target)
    head = np.isin(data.item_clusters[examples.target],
                   head_clusters(data, config.data.synthetic.num_clusters))
    return summarize(ranks, ks=(5, 20), groups={"head": head, "tail": ~head})


def run_grid(args: argparse.Namespace) -> None:
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.training import train

    methods = check_methods(args.methods)
    base = base_config(args)
    records, done, grid = open_grid(args.results, base, KEY)
    print(f"results: {args.results} ({len(records)} runs already there)", flush=True)
    for seed in args.seeds:
        for skew in args.skews:
            todo = [m for m in methods if (m, float(skew), int(seed)) not in done]
            if not todo:
                continue
            data = prepare_data(run_config(base, todo[0], skew, seed).data)
            for method in todo:
                config = run_config(base, method, skew, seed)
                started = time.perf_counter()
                result = train(config, export=False, verbose=0, data=data)
                seconds = time.perf_counter() - started
                full = cluster_metrics(result, config)
                idw = next((p.get("idw") for p in result.phases if p["name"] == "idw"), None)
                record = {
                    "method": method, "skew": float(skew), "seed": int(seed),
                    "seconds": round(seconds, 2), "config_hash": config_hash(config),
                    "grid_hash": grid,
                    "hr@20": full["hr@20"], "head/hr@20": full["head/hr@20"],
                    "tail/hr@20": full["tail/hr@20"], "ndcg@20": full["ndcg@20"],
                    "hr@5": full["hr@5"], "head/count": full["head/count"],
                    "tail/count": full["tail/count"],
                    "head_clusters": head_clusters(data, args.num_clusters).tolist(),
                    "silhouette": result.metrics.get("items/silhouette"),
                    "sampled/hr@20": result.metrics["sampled/hr@20"],
                    "idw_iterations": idw["iterations"] if idw else None,
                    "idw": idw,
                    "phases": [{"name": p["name"], "epochs": p["epochs"],
                                "seconds": p["seconds"]} for p in result.phases],
                }
                append_result(args.results, record)
                done.add((method, float(skew), int(seed)))
                print(f"{method} skew {skew:g} seed {seed}: {seconds:.0f} s; full HR@20 "
                      f"all {full['hr@20']:.4f} head {full['head/hr@20']:.4f} tail "
                      f"{full['tail/hr@20']:.4f}; silhouette {record['silhouette']:.3f}"
                      + (f"; IDW iterations {record['idw_iterations']}" if idw else ""),
                      flush=True)


def _grouped(records: Sequence[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["method"], float(record["skew"]))].append(record)
    return groups


def summarize_results(args: argparse.Namespace) -> None:
    records = read_results(args.results)
    if not records:
        raise SystemExit(f"No results in {args.results}; run the grid first.")
    groups = _grouped(records)
    methods = [m for m in METHODS if any(key[0] == m for key in groups)]
    skews = sorted({key[1] for key in groups})
    rows = []
    for method in methods:
        for skew in skews:
            runs = groups.get((method, skew))
            if not runs:
                continue
            iterations = [r["idw_iterations"] for r in runs if r.get("idw_iterations") is not None]
            rows.append([LABELS[method], f"{skew:g}", len(runs),
                         mean_std([r["tail/hr@20"] for r in runs], 100),
                         mean_std([r["head/hr@20"] for r in runs], 100),
                         mean_std([r["hr@20"] for r in runs], 100),
                         mean_std([r["silhouette"] for r in runs], 1, 3),
                         mean_std(iterations, 1, 1) if iterations else "-",
                         f"{mean([r['seconds'] for r in runs]):.0f}"])
    print(f"IDW §3.2 synthetic: full-ranking HR@20 (%) by target cluster and item "
          f"silhouette, mean ± std over seeds ({args.results}):")
    print(markdown_table(["method", "skew", "seeds", "HR@20 tail", "HR@20 head",
                          "HR@20 all", "silhouette", "IDW iterations", "seconds"], rows))
    plot(groups, methods, skews, args.plot)
    print(f"plot: {args.plot}")


def plot(groups, methods: Sequence[str], skews: Sequence[float], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("tail/hr@20", "HR@20 (%), tail clusters", 100),
              ("head/hr@20", "HR@20 (%), head clusters", 100),
              ("hr@20", "HR@20 (%), all clusters", 100),
              ("silhouette", "item mean silhouette", 1))
    figure = Figure(figsize=(16, 4))
    FigureCanvasAgg(figure)
    for index, (key, title, scale) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for method in methods:
            xs = [s for s in skews if groups.get((method, s))]
            values = [[r[key] for r in groups[(method, s)]] for s in xs]
            axes.errorbar(xs, [mean(v) * scale for v in values],
                          yerr=[std(v) * scale for v in values], marker="o", capsize=3,
                          label=LABELS[method])
        axes.set_title(title)
        axes.set_xlabel("interest skew")
        axes.set_xticks(list(skews))
        axes.grid(alpha=0.3)
    figure.axes[0].legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skews", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                        help="interest skew exponents (data.synthetic.interest_skew)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"presets of pipelines/methods.py: {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="each sets the data seed and the training seed")
    parser.add_argument("--num-items", type=int, default=50)
    parser.add_argument("--num-clusters", type=int, default=5)
    parser.add_argument("--num-users", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=30)
    parser.add_argument("--interests-per-user", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="most epochs per phase")
    parser.add_argument("--patience", type=int, default=3,
                        help="early-stopping patience (0: off)")
    parser.add_argument("--max-iterations", type=int, default=10,
                        help="IDW sleep/wake iterations at most")
    parser.add_argument("--quick", action="store_true",
                        help="smoke settings: 200 users, 1 epoch, no early stopping, "
                             "1 IDW iteration")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON-lines results file (default pipelines/results/"
                             "idw_synthetic.jsonl, idw_synthetic_quick.jsonl with --quick)")
    parser.add_argument("--summarize", action="store_true",
                        help="print the table of --results and write --plot; no training")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of --summarize (default: --results with .png)")
    args = parser.parse_args(argv)
    try:
        check_methods(args.methods)
    except ValueError as error:
        parser.error(str(error))
    if args.quick:
        args.num_users, args.epochs, args.patience, args.max_iterations = 200, 1, 0, 1
    if args.results is None:
        args.results = DEFAULT_RESULTS.with_name(
            "idw_synthetic_quick.jsonl" if args.quick else DEFAULT_RESULTS.name)
    if args.plot is None:
        args.plot = args.results.with_suffix(".png")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarize:
        summarize_results(args)
        return
    import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)

    # 50 items: the sampled protocol cannot draw 99 negatives; it ranks among all.
    warnings.filterwarnings("ignore", message=".*fewer than num_negatives.*")
    run_grid(args)


if __name__ == "__main__":
    main()
