"""The `tfrec-proxy` verbs and `main`.

Each handler imports the library modules it needs (TensorFlow among them) when it
runs, so `--help`, `--version` and `config` stay fast. Errors are one line on stderr
with exit status 2; warnings are one line each.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import sys
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from tfrec_proxy.cli.histories import read_histories
from tfrec_proxy.cli.parser import config_from_args, parse_args

# Python-side noise of TensorFlow and its companions: warnings raised in these
# packages, and their loggers (absl's "WARNING:absl:..." lines on SavedModel loads).
_NOISY_MODULES = r"(tensorflow|tf_keras|keras|tensorflow_recommenders|scann|absl|google)(\.|$)"
_NOISY_LOGGERS = ("tensorflow", "absl")
# absl's C++ `SetMinLogLevel` in TensorFlow 2.20's framework library (absl LTS
# 2025-01-27). ScaNN's index builder logs through absl, which TF_CPP_MIN_LOG_LEVEL
# does not govern ("WARNING: All log messages before absl::InitializeLog() ...").
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"
_QUIET = {"tensorflow": False}  # set by `_output_policy` for the running verb


def _quiet_absl() -> None:
    """Applies TF_CPP_MIN_LOG_LEVEL to absl's C++ logs too, once TensorFlow is loaded.

    Best effort: a TensorFlow build without that symbol keeps its absl logs.
    """
    tensorflow = sys.modules.get("tensorflow")
    if not _QUIET["tensorflow"] or tensorflow is None:
        return
    try:
        level = min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")), 0), 3)
        library = ctypes.CDLL(os.path.join(os.path.dirname(tensorflow.__file__),
                                           "libtensorflow_framework.so.2"))
        set_min_log_level = getattr(library, _ABSL_SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError, ValueError):
        return
    set_min_log_level.argtypes, set_min_log_level.restype = [ctypes.c_int], None
    set_min_log_level(level)


def _run_train(args: argparse.Namespace) -> int:
    from tfrec_proxy.training import format_metrics, train

    _quiet_absl()
    config = config_from_args(args)
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


def _run_config(args: argparse.Namespace) -> int:
    print(json.dumps(config_from_args(args).to_dict(), indent=2, sort_keys=True))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from tfrec_proxy.data.prepare import prepare_data
    from tfrec_proxy.evaluation import evaluate_run
    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import format_metrics

    _quiet_absl()
    run = load_run(args.run)
    data_config = run.config.data
    if args.data_path:
        data_config = dataclasses.replace(data_config, source="file", path=args.data_path)
    if run.model_kind == "felrec":
        # FELRec: representations recomputed from an empty cache by the trained
        # encoder (§4.4): the reset mode on the run's data, zero-shot on another.
        from tfrec_proxy.felrec_training import zero_shot

        print(format_metrics(zero_shot(
            run.path, data_config, split=args.split,
            prefix="zero_shot/" if args.data_path else "reset/")))
        return 0
    data = prepare_data(data_config)
    train_config = run.config.train
    metrics = evaluate_run(run, data, split=args.split, ks=train_config.eval_ks,
                           num_negatives=train_config.num_negatives, seed=train_config.seed,
                           full=not args.no_full,
                           chunks=args.eval_chunks or train_config.eval_chunks,
                           history=(args.full_ranking_history
                                    or train_config.full_ranking_history))
    print(format_metrics(metrics))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    target = args.output or args.run
    replacing_itself = target.resolve() == args.run.resolve()
    if not replacing_itself and target.exists():
        raise FileExistsError(f"--output {str(target)!r} exists; choose a new folder (only "
                              "the run itself is replaced in place).")
    from tfrec_proxy.export import reexport_run

    _quiet_absl()
    reexport_run(args.run, target, max_k=args.max_k)
    print(f"exported run: {target}")
    return 0


def _run_add_items(args: argparse.Namespace) -> int:
    from tfrec_proxy.new_items import add_items, read_new_items

    _quiet_absl()
    ids, frame = read_new_items(args.run, args.items)
    report = add_items(args.run, ids, frame, rebuild=args.rebuild)
    print(json.dumps(report, sort_keys=True))
    return 0


UNKNOWN_USER = -1  # `recommend` without --user on a run with a user embedding: u = 0


def _recommend_users(args: argparse.Namespace) -> int:
    """`recommend --run DIR --user ID` for a FELRec run: the user's cached vector."""
    from tfrec_proxy.serving import load_run

    _quiet_absl()
    run = load_run(args.run)
    if run.model_kind != "felrec":
        raise ValueError(f"--user {args.user} alone needs a FELRec run (--encoder felrec); "
                         f"{str(args.run)!r} is of kind {run.model_kind!r}: give --history "
                         "or --histories.")
    index = args.index or run.default_index
    ids, scores = run.recommend_users([args.user], k=args.k, index=index,
                                      exclude_seen=args.exclude_seen)
    unknown = bool(run.unknown_users([args.user]))
    if unknown:
        warnings.warn(f"user {args.user} is not in the run's cache; it gets the "
                      "empty-history representation (FELRec's cold-start vector)",
                      UserWarning)
    print(json.dumps({"user": args.user, "known_user": not unknown, "k": args.k,
                      "index": index, "items": [int(item) for item in ids[0]],
                      "scores": [round(float(score), 6) for score in scores[0]]}))
    return 0


def _run_recommend(args: argparse.Namespace) -> int:
    if args.history is None and args.histories is None:
        return _recommend_users(args)
    # Read the input before loading the run, so a bad file fails in milliseconds.
    if args.history is not None:
        entries: List[Tuple[Optional[int], List[int]]] = [(None, args.history)]
        where = "--history"
    else:
        entries = list(read_histories(args.histories))
        where = "<stdin>" if args.histories == "-" else args.histories
    import numpy as np

    from tfrec_proxy.serving import HistoryError, UnknownItemsWarning, load_run

    _quiet_absl()
    run = load_run(args.run)
    if run.model_kind == "felrec":
        raise ValueError(f"{str(args.run)!r} is a FELRec run, queried by user: "
                         "tfrec-proxy recommend --run DIR --user ID.")
    index = args.index or run.default_index
    histories = [history for _, history in entries]
    try:  # every check before the first output line
        unknown = run.check_histories(histories, k=args.k, exclude_seen=args.exclude_seen,
                                      strict=args.strict)
    except HistoryError as error:
        line = entries[error.row][0]
        raise ValueError(f"{where}{'' if line is None else f' line {line}'}: "
                         f"{error.detail}") from None
    _warn_unknown(entries, unknown, where)
    takes_user = "user_id" in run.context_features
    if args.user is not None and not takes_user:
        raise ValueError(f"--user {args.user}: this run's query tower has no user "
                         "embedding (train with --encoder ram to use one).")
    # Users the run does not know (and no --user) get u = 0: RAM-u's score.
    user = UNKNOWN_USER if args.user is None else args.user
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownItemsWarning)  # reported above, per line
        for start in range(0, len(entries), args.batch_size):
            batch = slice(start, start + args.batch_size)
            rows = len(histories[batch])
            context = {"user_id": np.full(rows, user, np.int64)} if takes_user else None
            ids, scores = run.recommend(histories[batch], k=args.k, index=index,
                                        exclude_seen=args.exclude_seen, strict=args.strict,
                                        context=context)
            for (line, history), row_unknown, row_ids, row_scores in zip(
                    entries[batch], unknown[batch], ids, scores):
                record: Dict[str, Any] = {} if line is None else {"line": line}
                record.update(
                    history=history, k=args.k, index=index,
                    items=[int(item) for item in row_ids],
                    scores=[round(float(score), 6) for score in row_scores],
                    unknown_ids=row_unknown,
                    all_unknown=set(history) - {-1} <= set(row_unknown))
                print(json.dumps(record))
    return 0


def _warn_unknown(entries: Sequence[Tuple[Optional[int], List[int]]],
                  unknown: Sequence[List[int]], where: str) -> None:
    """One warning for unknown ids, one for histories with no known id."""
    with_unknown = [line for (line, _), ids in zip(entries, unknown) if ids]
    if not with_unknown:
        return
    blind = [line for (line, history), ids in zip(entries, unknown)
             if set(history) - {-1} <= set(ids)]

    def lines(numbers: List[Optional[int]]) -> str:
        if numbers == [None]:
            return where
        shown = ", ".join(str(number) for number in numbers[:10])
        return f"{where} line{'s' if len(numbers) > 1 else ''} {shown}" + (
            f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")

    count = len(set().union(*unknown))
    warnings.warn(f"{count} item id(s) in {lines(with_unknown)} are not in the run's "
                  "vocabulary; they are served through the out-of-vocabulary embedding "
                  '(see "unknown_ids"; --strict makes this an error)', UserWarning)
    if blind:
        warnings.warn(f"{lines(blind)}: no item id is known to the run, so the "
                      "recommendations come from the out-of-vocabulary embedding alone "
                      '(mostly popular items; see "all_unknown")', UserWarning)


def _run_report(args: argparse.Namespace) -> int:
    from tfrec_proxy.report import write_report

    for path in write_report(args.run, args.output):
        print(path)
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from tfrec_proxy.server.__main__ import run

    return run(args)


HANDLERS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _run_train, "config": _run_config, "evaluate": _run_evaluate,
    "export": _run_export, "add-items": _run_add_items, "recommend": _run_recommend,
    "report": _run_report, "serve": _run_serve,
}
_LOADS_TENSORFLOW = ("train", "evaluate", "export", "recommend", "serve")


def _quiet_tensorflow() -> bool:
    """Silences TensorFlow unless the user set `TF_CPP_MIN_LOG_LEVEL` below 2.

    Unset, the level becomes 3 before TensorFlow loads: at 2 (the library's default)
    TensorFlow still prints CUDA probing errors ("failed call to cuInit") on machines
    without a GPU; real failures reach the CLI as exceptions.

    Returns:
        Whether TensorFlow's Python-side warnings and logs should be hidden too.
    """
    import tfrec_proxy

    preset = tfrec_proxy._PRESET_TF_CPP_MIN_LOG_LEVEL
    if preset is None:
        if "tensorflow" not in sys.modules:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        return True
    try:
        return int(preset) >= 2
    except ValueError:
        return True


@contextlib.contextmanager
def _output_policy(command: str) -> Iterator[None]:
    """One-line warnings; TensorFlow's noise hidden unless the user asked for it."""
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(command)
        quiet = command in _LOADS_TENSORFLOW and _quiet_tensorflow()
        _QUIET["tensorflow"] = quiet
        if quiet:
            warnings.filterwarnings("ignore", module=_NOISY_MODULES)
            for name in _NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            _QUIET["tensorflow"] = False
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _one_line_warning(command: str) -> Callable[..., None]:
    def show(message: Warning, category: type, filename: str, lineno: int,
             file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
        text = " ".join(str(message).split())
        print(f"tfrec-proxy {command}: warning: {text}", file=file or sys.stderr)
    return show


def _error_types() -> Tuple[type, ...]:
    """Errors reported as one line: the library's, and TensorFlow's if it is loaded."""
    types: List[type] = [ValueError, KeyError, OSError]
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and hasattr(tensorflow, "errors"):
        types.append(tensorflow.errors.OpError)
    return tuple(types)


def _message(error: BaseException) -> str:
    """The error as one line (TensorFlow's: its first line, without the op trace)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # str(KeyError) adds quotes
    elif isinstance(error, (ValueError, OSError)):
        text = str(error)
    else:
        text = str(getattr(error, "message", error)).strip().split("\n")[0]
    return " ".join(text.split()) or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `tfrec-proxy` console script.

    Returns:
        0 on success, 2 on an error (printed as one line on stderr), 130 when
        interrupted. Usage errors exit with status 2 from the parser.
    """
    args = parse_args(argv)
    try:
        with _output_policy(args.command):
            return HANDLERS[args.command](args)
    except BrokenPipeError:  # the reader left, e.g. `tfrec-proxy recommend ... | head -1`
        try:  # send the interpreter's final flush of stdout nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        print(f"tfrec-proxy {args.command}: interrupted", file=sys.stderr)
        return 130
    except _error_types() as error:
        print(f"tfrec-proxy {args.command}: error: {_message(error)}", file=sys.stderr)
        return 2
