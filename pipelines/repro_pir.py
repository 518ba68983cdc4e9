"""PIR measurements: id vs PIR item towers under the SUR and MUR-IDW user towers, by
frequency group (PIR §4.3) and on cold items held out of training entirely.

    python pipelines/repro_pir.py --dataset synthetic            # the grid (resumable)
    python pipelines/repro_pir.py --dataset ml1m --seeds 0
    python pipelines/repro_pir.py --dataset synthetic --summarize   # tables + PNG
    python pipelines/repro_pir.py --dataset synthetic --quick       # smoke run

Configs: `pipelines/configs/pir_<dataset>.json`. Both hold 5% of the items out of
training entirely (`data.cold_items`), evaluate HR/NDCG@10 (and @20) against 100
sampled negatives (PIR §4.1.2) and against the full catalogue, and use d = 16,
n_proxy = 32 and K = 10% of the catalogue (ML-1M: 350 of 3,416 items, genres from
`ml-1m.txt.items.tsv`; synthetic: 200 of 2,000 items, 16 attributes = cluster
prototype + noise 0.5, item skew 1.0). Methods (`--methods`): `id_sur`, `pir_sur`,
`id_mur_idw`, `pir_mur_idw` (`pipelines/methods.py` presets `sur` / `mur_idw` with
`model.item_tower` = id / pir), `pir_k0` (content only, K = 0) and `pir_shared`
(PIR also embeds the history items), `pir_k1000` and `pir_kall` (K = 1000 and K = |I|:
every training item learns a proxy-weight bias), `pir_kall_mur_idw` (K = |I| under
MUR-IDW: the K that wins on ML-1M's weak genre attributes). Each finished run appends a JSON line
(metrics, parameter counts, seconds) to `pipelines/results/pir_<dataset>.jsonl`.

`--summarize` prints markdown tables (x100, mean ± std over seeds): overall sampled
and full-ranking HR/NDCG@10, cold-item recall@10 / NDCG@10 (full ranking; one
target per example, so recall@10 = HR@10) and sampled NDCG@10, NDCG@10 of the three
rarest frequency groups (sampled and full), trainable parameters; and writes
`<results>_groups.png` beside the results (`pipelines/results/pir_<dataset>_groups.png`:
sampled and full-ranking NDCG@10 per frequency group of equal interaction mass,
freq0 = most frequent).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import (METHODS, add_grid_arguments, default_results,  # noqa: E402
                     markdown_table, mean, mean_std, runs_by_method, run_variant_grid)

HERE = Path(__file__).resolve().parent
KEY = ("method", "seed")
VARIANTS: Dict[str, Dict[str, Any]] = {
    "id_sur": {**METHODS["sur"], "model.item_tower": "id"},
    "pir_sur": {**METHODS["sur"], "model.item_tower": "pir"},
    "id_mur_idw": {**METHODS["mur_idw"], "model.item_tower": "id"},
    "pir_mur_idw": {**METHODS["mur_idw"], "model.item_tower": "pir"},
    "pir_k0": {**METHODS["sur"], "model.item_tower": "pir", "model.frequent_bias_k": 0},
    "pir_shared": {**METHODS["sur"], "model.item_tower": "pir",
                   "model.share_item_encoder": True},
    # Larger K for weak attributes (ML-1M's 18 genres leave most items alike):
    "pir_k1000": {**METHODS["sur"], "model.item_tower": "pir", "model.frequent_bias_k": 1000},
    "pir_kall": {**METHODS["sur"], "model.item_tower": "pir",
                 "model.frequent_bias_k": 1_000_000},  # every training item (K = |I|)
    "pir_kall_mur_idw": {**METHODS["mur_idw"], "model.item_tower": "pir",
                         "model.frequent_bias_k": 1_000_000},
}
LABELS = {"id_sur": "id + SUR", "pir_sur": "PIR + SUR", "id_mur_idw": "id + MUR-IDW",
          "pir_mur_idw": "PIR + MUR-IDW", "pir_k0": "PIR K=0 + SUR",
          "pir_shared": "PIR shared + SUR", "pir_k1000": "PIR K=1000 + SUR",
          "pir_kall": "PIR K=all + SUR", "pir_kall_mur_idw": "PIR K=all + MUR-IDW"}
GROUPS = 10


def base_config(args: argparse.Namespace):
    from tfrec_proxy.config import RunConfig

    config = RunConfig.from_json(HERE / "configs" / f"pir_{args.dataset}.json")
    if args.data_path:
        config.data.path = args.data_path
    if args.quick:
        config.data.source = "synthetic"
        config.data.synthetic.num_users, config.data.synthetic.num_items = 300, 200
        config.data.synthetic.attribute_dim = 8
        config.train.epochs, config.train.early_stopping_patience = 1, 0
        config.train.idw.max_iterations = 1
        config.model.frequent_bias_k = 20
    return config


def run_grid(args: argparse.Namespace) -> None:
    def describe(m: Dict[str, float]) -> str:
        return (f"sampled NDCG@10 {m['sampled/ndcg@10']:.4f}; full NDCG@10 "
                f"{m['full/ndcg@10']:.4f}; cold full HR@10 {m.get('cold/full/hr@10', 0):.4f}")

    order = [(m, s) for s in args.seeds for m in args.methods]
    run_variant_grid(args.results, base_config(args), VARIANTS, order, describe,
                     backup_root=args.backup_root)


def summarize(args: argparse.Namespace) -> None:
    runs = runs_by_method(args.results)
    methods = [m for m in VARIANTS if m in runs]

    def values(method: str, key: str) -> List[float]:
        return [r["metrics"].get(key) for r in runs[method]]

    columns = [("sampled HR@10", "sampled/hr@10"), ("sampled NDCG@10", "sampled/ndcg@10"),
               ("full HR@10", "full/hr@10"), ("full NDCG@10", "full/ndcg@10"),
               ("cold recall@10", "cold/full/hr@10"), ("cold NDCG@10", "cold/full/ndcg@10"),
               ("cold sampled NDCG@10", "cold/sampled/ndcg@10")]
    columns += [(f"freq{g} NDCG@10 sampled", f"sampled/freq{g}/ndcg@10")
                for g in range(7, GROUPS)]
    columns += [(f"freq{g} NDCG@10 full", f"full/freq{g}/ndcg@10") for g in range(7, GROUPS)]
    rows = []
    for method in methods:
        parameters = runs[method][0].get("parameters", {})
        rows.append([LABELS[method], len(runs[method])]
                    + [mean_std(values(method, key), 100) for _, key in columns]
                    + [parameters.get("candidate_tower", "-"), parameters.get("total", "-")])
    print(f"\nPIR on {args.dataset}, test, x100, mean ± std over seeds ({args.results}):")
    print(markdown_table(["method", "seeds"] + [name for name, _ in columns]
                         + ["item tower params", "total params"], rows))
    _plot(args, methods, values)


def _plot(args: argparse.Namespace, methods: List[str], values) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=100)
    groups = list(range(GROUPS))
    for axis, protocol in zip(axes, ("sampled", "full")):
        for method in methods:
            axis.plot(groups, [mean(values(method, f"{protocol}/freq{g}/ndcg@10"))
                               for g in groups], marker="o", label=LABELS[method])
        axis.set_xticks(groups)
        axis.set_xlabel("frequency group (equal interaction mass; 0 = most frequent)")
        axis.set_ylabel(f"{protocol} NDCG@10")
        axis.set_title(f"{protocol} ranking by frequency group ({args.dataset})")
    axes[0].legend()
    figure.tight_layout()
    path = args.results.parent / f"{args.results.stem}_groups.png"
    figure.savefig(path)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "ml1m"), default="synthetic")
    add_grid_arguments(parser, VARIANTS,
                       data_path_help="ML-1M folder (default ../shared/data/ml-1m)")
    args = parser.parse_args()
    default_results(args, f"pir_{args.dataset}")
    summarize(args) if args.summarize else run_grid(args)


if __name__ == "__main__":
    main()
