"""ProxySR on session data: ProxySR (margin loss, eq. 8-9, and the toolkit's batch
softmax with logQ under the eq. 7 scorer), its eq. 10 user-bias variant, against our
self-attention tower and SASRec (full softmax) on the same sessions (ProxySR §4.1
protocol: sessions 8:1:1 by start, items seen < 5 times and sessions < 3 dropped,
every sub-session of validation/test predicts its next item; full ranking over all
items).

    python pipelines/repro_proxysr.py --dataset diginetica          # the grid (resumable)
    python pipelines/repro_proxysr.py --dataset synthetic
    python pipelines/repro_proxysr.py --dataset diginetica --summarize
    python pipelines/repro_proxysr.py --dataset synthetic --quick   # smoke run

Configs `pipelines/configs/proxysr_<dataset>.json`: `diginetica` reads the shared
Diginetica SAMPLE (`../shared/data/diginetica-sample/`, 12,391 views; after the
filters ~1k training examples, ~300 items and ~70 test examples, so figures are noisy
and NOT comparable to the paper's full Diginetica); `synthetic` cuts the generator's
clicks into sessions of ~8 views (`--data synthetic-sessions`; every session has a
known user, so eq. 10 can help). d = 64, the shared item table (unit ball for
ProxySR), max_len 50, K = 10 (sample) / 20 (synthetic) proxies, m = 0.5,
lambda_dist = 0.01, lambda_orthog = 0.1, 100 sampled negatives, Adam 0.001, early
stopping on validation sampled HR@20. Methods (`--methods`):

| name | query tower | loss |
|---|---|---|
| `self_attention` | IDW self-attention encoder, last position | batch softmax + logQ |
| `sasrec_ce` | SASRec (causal, all positions) | full softmax |
| `proxysr_margin` | ProxySR | eq. 8 margin + eq. 9 (the paper's) |
| `proxysr_softmax` | ProxySR | batch softmax + logQ under eq. 7 |
| `proxysr_user` | ProxySR + eq. 10 user bias (synthetic only) | eq. 8 margin + eq. 9 |

Each finished run appends a JSON line to `pipelines/results/proxysr_<dataset>.jsonl`;
`--summarize` prints R@20 / MRR@20 (x100, mean ± std over seeds), overall and on the
next-unseen-item targets (ProxySR §4.2).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import (add_grid_arguments, default_results, markdown_table,  # noqa: E402
                     mean_std, runs_by_method, run_variant_grid)

HERE = Path(__file__).resolve().parent
_PROXYSR = {"model.encoder": "proxysr", "model.scorer": "auto"}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "self_attention": {"model.encoder": "self-attention", "model.loss": "softmax"},
    "sasrec_ce": {"model.encoder": "sasrec", "model.loss": "full-softmax",
                  "model.all_positions": True},
    "proxysr_margin": {**_PROXYSR, "model.loss": "margin"},
    "proxysr_softmax": {**_PROXYSR, "model.loss": "softmax", "model.lambda_orthog": 0.0},
    "proxysr_user": {**_PROXYSR, "model.encoder": "proxysr-user", "model.loss": "margin"},
}
DEFAULT_METHODS = {"diginetica": ["self_attention", "sasrec_ce", "proxysr_margin",
                                  "proxysr_softmax"],
                   "synthetic": list(VARIANTS)}
COLUMNS = [("R@20", "full/hr@20"), ("MRR@20", "full/mrr@20"), ("R@10", "full/hr@10"),
           ("MRR@10", "full/mrr@10"), ("unseen R@20", "unseen/full/hr@20"),
           ("unseen MRR@20", "unseen/full/mrr@20")]


def base_config(args: argparse.Namespace):
    from tfrec_proxy.config import RunConfig

    config = RunConfig.from_json(HERE / "configs" / f"proxysr_{args.dataset}.json")
    if args.data_path:
        config.data.path = args.data_path
    if args.quick:
        config.data.source = "synthetic-sessions"
        config.data.synthetic.num_users, config.data.synthetic.num_items = 200, 100
        config.model.embedding_dim, config.model.num_proxies = 8, 4
        config.model.sampled_negatives = 10
        config.train.epochs, config.train.early_stopping_patience = 1, 0
    return config


def summarize(args: argparse.Namespace) -> None:
    runs = runs_by_method(args.results)
    rows = []
    for method in [m for m in VARIANTS if m in runs]:
        rows.append([method, len(runs[method])]
                    + [mean_std([r["metrics"].get(key) for r in runs[method]], 100)
                       for _, key in COLUMNS]
                    + [mean_std([r["seconds"] / 60 for r in runs[method]], 1, 1),
                       mean_std([r["epochs"] for r in runs[method]], 1, 0)])
    count = runs[next(iter(runs))][0]["metrics"].get("full/count")
    print(f"\nSession task on {args.dataset}, test ({count:.0f} targets), full ranking, "
          f"x100, mean ± std over seeds ({args.results}):")
    print(markdown_table(["method", "seeds"] + [name for name, _ in COLUMNS]
                         + ["minutes", "epochs"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("diginetica", "synthetic"),
                        default="diginetica")
    add_grid_arguments(parser, VARIANTS, default_methods=False,
                       data_path_help="session log (default the shared Diginetica sample)")
    args = parser.parse_args()
    default_results(args, f"proxysr_{args.dataset}")
    if args.summarize:
        summarize(args)
        return
    methods: List[str] = args.methods or DEFAULT_METHODS[args.dataset]

    def describe(m: Dict[str, float]) -> str:
        return f"R@20 {m['full/hr@20']:.4f} MRR@20 {m['full/mrr@20']:.4f}"

    order = [(m, s) for s in args.seeds for m in methods]
    run_variant_grid(args.results, base_config(args), VARIANTS, order, describe,
                     backup_root=args.backup_root)


if __name__ == "__main__":
    main()
