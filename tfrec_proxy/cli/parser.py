"""The `tfrec-proxy` argument parser and the flag -> `RunConfig` overrides.

Nothing here imports TensorFlow, NumPy or pandas, so `tfrec-proxy --help` (and the
`config` verb) start in a fraction of a second. Choices that the library also
defines (strategies, evaluation chunks, data sources, file formats) are repeated here
for that reason; `tests/test_cli.py` checks that they agree.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, List, NoReturn, Optional, Sequence

from tfrec_proxy.cli.flags import (
    EVAL_CHUNKS, FULL_RANKING_HISTORY, PATH_SOURCES, CONFIG_FLAGS, ConfigFlag, any_int,
    positive_int)
from tfrec_proxy.cli.histories import parse_history
from tfrec_proxy.config import RunConfig
from tfrec_proxy.run_format import INDEXES
from tfrec_proxy.version import __version__

DEFAULT_OUTPUT = "saved_models"



class ArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):
            # argparse reads a value such as -1e-3 as an option.
            message += " (a value that starts with '-' is given as --flag=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (the help names the default) and on/off switches."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)





def _field_default(path: str) -> Any:
    value: Any = RunConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and every `CONFIG_FLAGS` override (shared by train and config)."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="RunConfig JSON to start from (default: the built-in "
                        "defaults); the flags below override it")
    groups = {section: parser.add_argument_group(f"{section} overrides")
              for section in ("data", "model", "train", "export")}
    for spec in CONFIG_FLAGS:
        default = _field_default(spec.field)
        text = f"{spec.help} (config {spec.field}; default: {default})"
        group = groups[spec.field.split(".")[0]]
        if spec.const is not None:
            group.add_argument(spec.flag, dest=spec.dest, action="store_const",
                               const=spec.const, default=None, help=text)
        else:
            group.add_argument(spec.flag, dest=spec.dest, type=spec.type, choices=spec.choices,
                               default=None, help=text,
                               metavar=None if spec.choices else spec.dest.upper())


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The `RunConfig` of `--config` (or the defaults) with the flags applied.

    Raises:
        ValueError: the `--config` file is unreadable or holds unknown keys.
    """
    config = RunConfig.from_json(args.config) if args.config else RunConfig()
    for spec in CONFIG_FLAGS:
        value = getattr(args, spec.dest)
        if value is None:
            continue
        if spec.field == "data.time_column" and value == "":
            value = None
        *sections, name = spec.field.split(".")
        target: Any = config
        for section in sections:
            target = getattr(target, section)
        setattr(target, name, value)
    if args.data_path is not None and config.data.source not in PATH_SOURCES:
        config.data.source = "file"  # a path means a file, unless a session log
    if args.embedding_dim is not None:
        units = config.model.item_hidden_units
        config.model.item_hidden_units = tuple(units[:-1]) + (args.embedding_dim,)
    return config


def build_parser() -> ArgumentParser:
    """The `tfrec-proxy` parser with its verbs."""
    parser = ArgumentParser(
        prog="tfrec-proxy", formatter_class=HelpFormatter,
        description="Two-tower retrieval on TensorFlow Recommenders: train, evaluate, "
        "export and serve runs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the tfrec_proxy version and exit")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, help_text: str) -> ArgumentParser:
        return verbs.add_parser(name, help=help_text, description=help_text,
                                formatter_class=HelpFormatter)

    train = verb("train", "train, evaluate and export a run")
    add_config_flags(train)
    train.add_argument("--output", default=DEFAULT_OUTPUT, help="parent folder of runs")
    train.add_argument("--run-name", help="run folder name (default: run-<UTC timestamp>)")
    train.add_argument("--no-export", action="store_true", help="train and evaluate only")

    config = verb("config", "print the run config that `train` would use, as JSON (the "
                  "defaults, or --config FILE with the same override flags as train)")
    add_config_flags(config)

    evaluate = verb("evaluate", "evaluate an exported run through its SavedModels")
    evaluate.add_argument("--run", required=True, type=Path, help="run folder")
    evaluate.add_argument("--data-path", help="read the data from this file instead of "
                          "the run config's source (default: the run's data)")
    evaluate.add_argument("--split", default="test", choices=("validation", "test"),
                          help="held-out split to evaluate")
    evaluate.add_argument("--eval-chunks", choices=EVAL_CHUNKS,
                          help="every chunk's held-out items, or each user's last chunk "
                          "only (default: the run config's train.eval_chunks)")
    evaluate.add_argument("--full-ranking-history", choices=FULL_RANKING_HISTORY,
                          help="rank against every item (kept) or skip the user's other "
                          "items (removed) (default: the run config's "
                          "train.full_ranking_history)")
    evaluate.add_argument("--no-full", action="store_true",
                          help="skip the full-catalogue ranking metrics")

    export = verb("export", "re-export a run from its weights")
    export.add_argument("--run", required=True, type=Path, help="run folder")
    export.add_argument("--max-k", type=positive_int,
                        help="largest k served (default: the run config's export.max_k)")
    export.add_argument("--output", type=Path,
                        help="new run folder (default: replace --run in place)")

    add_items = verb("add-items", "add items never seen in training to an exported run, "
                     "embedded from their attributes (runs with --item-tower pir)")
    add_items.add_argument("--run", required=True, type=Path, help="run folder")
    add_items.add_argument("--items", required=True, type=Path, metavar="FILE",
                           help="CSV/TSV/Parquet table of the new items: the run's item "
                           "id column and feature columns")
    rebuild = add_items.add_mutually_exclusive_group()
    rebuild.add_argument("--rebuild", action="store_true", default=None,
                         help="rebuild the indexes with the new items (default: an exact "
                         "delta segment merged at query time while it holds at most 1%% "
                         "of the catalogue or 1,000 items, else rebuild)")
    rebuild.add_argument("--no-rebuild", dest="rebuild", action="store_false",
                         help="keep the new items in the delta segment, however many")

    _add_recommend(verb("recommend", "top-k items for one history or a file of them"))

    from tfrec_proxy.server.__main__ import DESCRIPTION, add_serve_arguments

    add_serve_arguments(verb("serve", DESCRIPTION))

    report = verb("report", "plot a run's results as PNG files and print their paths")
    report.add_argument("--run", required=True, type=Path, help="run folder")
    report.add_argument("--output", type=Path,
                        help="folder for the PNGs (default: RUN/report)")
    return parser


def _add_recommend(recommend: ArgumentParser) -> None:
    recommend.add_argument("--run", required=True, type=Path, help="run folder")
    source = recommend.add_mutually_exclusive_group()  # one of them, or --user (FELRec)
    source.add_argument("--history", type=parse_history,
                        help="comma-separated raw item ids, oldest first, e.g. 3,17,42 "
                        "(write --history=-5,3 when the first id is negative)")
    source.add_argument("--histories", metavar="FILE",
                        help="one history per line, as a JSON list ([3, 17, 42]) or "
                        "comma-separated ids; blank lines are skipped; '-' reads stdin. "
                        "Prints one JSON object per history, in order")
    recommend.add_argument("-k", type=positive_int, default=10, help="items per history")
    recommend.add_argument("--user", type=any_int, help="raw user id of the histories, for runs "
                           "with a user embedding (--encoder ram; default: an unknown user, "
                           "whose embedding is zero); alone, the user to recommend for in "
                           "a FELRec run (--encoder felrec: its cached vector; unknown "
                           "users get the empty-history vector)")
    recommend.add_argument("--index", choices=INDEXES,
                           help="retrieval index (default: scann when the run has it, "
                           "else brute_force)")
    recommend.add_argument("--exclude-seen", action="store_true",
                           help="never recommend an item of the history")
    recommend.add_argument("--strict", action="store_true",
                           help="fail on item ids the run does not know, instead of "
                           "serving them through the out-of-vocabulary embedding")
    recommend.add_argument("--batch-size", type=positive_int, default=256,
                           help="histories per SavedModel call")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses `argv` (default `sys.argv[1:]`); usage errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "recommend" and args.history is None and args.histories is None \
            and args.user is None:
        parser.error("recommend: one of the arguments --history --histories is required "
                     "(or --user ID alone for a FELRec run)")
    return args


__all__: List[str] = ["CONFIG_FLAGS", "ConfigFlag", "add_config_flags", "build_parser",
                      "config_from_args", "parse_args"]
