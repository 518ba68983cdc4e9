"""`tfrec-proxy` command line: train, evaluate, export, recommend.

Thin over the Python API (`tfrec_proxy.training`, `tfrec_proxy.export`).
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from tfrec_proxy.config import RunConfig
from tfrec_proxy.data.prepare import DATA_SOURCES, prepare_data
from tfrec_proxy.evaluation import evaluate_run
from tfrec_proxy.export import INDEXES, export_run, load_run
from tfrec_proxy.training import STRATEGIES, format_metrics, restore_model, train

DEFAULT_OUTPUT = "saved_models"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_history(text: str) -> List[int]:
    """Parses `"3,17,42"` into item ids, naming any bad token."""
    tokens = [token.strip() for token in text.split(",")]
    if not text.strip() or not any(tokens):
        raise argparse.ArgumentTypeError("history is empty; expected comma-separated item "
                                         "ids such as 3,17,42")
    ids = []
    for token in tokens:
        try:
            ids.append(int(token))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"history item {token!r} is not an integer; expected comma-separated item "
                "ids such as 3,17,42") from None
    return ids


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfrec-proxy", description="Two-tower retrieval on TensorFlow Recommenders.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, evaluate and export a run")
    train.add_argument("--config", type=Path, help="RunConfig JSON (flags below override it)")
    train.add_argument("--data", choices=DATA_SOURCES,
                       help="data source (default: synthetic long-tail generator)")
    train.add_argument("--data-path", help="ratings.dat / ml-1m.txt file or folder "
                       "(default for --data file: ../shared/data/ml-1m)")
    train.add_argument("--num-users", type=_positive_int, help="synthetic users")
    train.add_argument("--num-items", type=_positive_int, help="synthetic items")
    train.add_argument("--interest-skew", type=float, help="synthetic interest power-law exponent")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int, help="per replica")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--embedding-dim", type=_positive_int)
    train.add_argument("--max-len", type=_positive_int)
    train.add_argument("--seed", type=int)
    train.add_argument("--strategy", choices=STRATEGIES)
    train.add_argument("--mixed-precision", action="store_true", default=None)
    train.add_argument("--jit-compile", action="store_true", default=None)
    train.add_argument("--tensorboard-dir")
    train.add_argument("--max-k", type=_positive_int, help="largest k served by the export")
    train.add_argument("--output", default=DEFAULT_OUTPUT, help="parent folder of runs")
    train.add_argument("--run-name", help="run folder name (default run-<timestamp>)")
    train.add_argument("--no-export", action="store_true", help="train and evaluate only")

    evaluate = commands.add_parser("evaluate", help="evaluate an exported run on its test split")
    evaluate.add_argument("--run", required=True, type=Path)
    evaluate.add_argument("--data-path", help="override the run's data file path")
    evaluate.add_argument("--split", default="test", choices=("validation", "test"))
    evaluate.add_argument("--no-full", action="store_true", help="skip full-ranking metrics")

    export = commands.add_parser("export", help="re-export a run from its weights")
    export.add_argument("--run", required=True, type=Path)
    export.add_argument("--max-k", type=_positive_int)
    export.add_argument("--output", type=Path, help="new run folder (default: replace --run)")

    recommend = commands.add_parser("recommend", help="top-k items for a history")
    recommend.add_argument("--run", required=True, type=Path)
    recommend.add_argument("--history", required=True, type=parse_history,
                           help="comma-separated raw item ids, oldest first, e.g. 3,17,42")
    recommend.add_argument("-k", type=_positive_int, default=10)
    recommend.add_argument("--index", choices=INDEXES,
                           help="default: scann when the run has it, else brute_force")
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig.from_json(args.config) if args.config else RunConfig()
    data = config.data
    if args.data:
        data.source = args.data
    if args.data_path:
        data.source, data.path = "file", args.data_path
    overrides = [
        (data.synthetic, "num_users", args.num_users),
        (data.synthetic, "num_items", args.num_items),
        (data.synthetic, "interest_skew", args.interest_skew),
        (data.synthetic, "seed", args.seed),
        (data, "max_len", args.max_len),
        (config.model, "embedding_dim", args.embedding_dim),
        (config.train, "epochs", args.epochs),
        (config.train, "batch_size", args.batch_size),
        (config.train, "learning_rate", args.learning_rate),
        (config.train, "seed", args.seed),
        (config.train, "strategy", args.strategy),
        (config.train, "mixed_precision", args.mixed_precision),
        (config.train, "jit_compile", args.jit_compile),
        (config.train, "tensorboard_dir", args.tensorboard_dir),
        (config.export, "max_k", args.max_k),
    ]
    for section, name, value in overrides:
        if value is not None:
            setattr(section, name, value)
    if args.embedding_dim is not None:
        units = config.model.item_hidden_units
        config.model.item_hidden_units = tuple(units[:-1]) + (args.embedding_dim,)
    return config


def _run_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    # A progress bar on a terminal, one line per epoch in logs and pipes.
    result = train(config, output_dir=args.output, run_name=args.run_name,
                   export=not args.no_export, verbose=1 if sys.stdout.isatty() else 2)
    print(f"data: {json.dumps(result.data.summary())}")
    if result.data.report is not None:
        print(f"load report: {result.data.report}")
    print(f"test metrics ({len(result.history.get('loss', []))} epochs, "
          f"{result.seconds:.1f} s):")
    print(format_metrics(result.metrics))
    if result.run_dir is not None:
        print(f"exported run: {result.run_dir}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    data_config = run.config.data
    if args.data_path:
        data_config = dataclasses.replace(data_config, source="file", path=args.data_path)
    data = prepare_data(data_config)
    metrics = evaluate_run(run, data, split=args.split, ks=run.config.train.eval_ks,
                           seed=run.config.train.seed, full=not args.no_full)
    print(format_metrics(metrics))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    target = args.output or args.run
    replacing_itself = target.resolve() == args.run.resolve()
    if not replacing_itself and target.exists():
        raise FileExistsError(f"--output {str(target)!r} exists; choose a new folder (only "
                              "the run itself is replaced in place).")
    model, vocab, config = restore_model(args.run)
    if args.max_k is not None:
        config.export.max_k = args.max_k
    metrics_file = args.run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    export_run(model, target, vocab=vocab, config=config, metrics=metrics,
               overwrite=replacing_itself)
    print(f"exported run: {target}")
    return 0


def _run_recommend(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    index = args.index or run.default_index
    ids, scores = run.recommend([args.history], k=args.k, index=index)
    print(json.dumps({"history": args.history, "k": args.k, "index": index,
                      "items": [int(i) for i in ids[0]],
                      "scores": [round(float(s), 6) for s in scores[0]]}))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `tfrec-proxy` console script."""
    args = _build_parser().parse_args(argv)
    handlers = {"train": _run_train, "evaluate": _run_evaluate, "export": _run_export,
                "recommend": _run_recommend}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"tfrec-proxy {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
