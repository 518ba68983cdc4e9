"""Method presets of the IDW paper's experiments and the results-file helpers they share.

Not a script: `repro_idw_synthetic.py` and `repro_idw_table1.py` import it (the
`pipelines` folder is on `sys.path` when one of them runs).

`METHODS` maps a method name to `section.field` overrides of a `RunConfig` (IDW
§4.3; M = 5 for every multi-representation method):

| name | overrides |
|---|---|
| `sur` | MUR parametric attention with M = 1 (the paper's SUR) |
| `mur` | parametric attention, M = 5, eq. 4 scorer (`scorer="auto"`) |
| `frequency` | MUR + frequency-balanced loss weights (eq. 5) |
| `focal` | MUR + focal loss |
| `qmargin` | MUR + per-item margin `p(y)^(-1/4)` |
| `item_norm` | MUR + L2-normalised item vectors in training and serving |
| `posthoc` | MUR + item vectors normalised for evaluation / serving only |
| `sur_idw` | SUR + iterative density weighting with calibration |
| `mur_idw` | MUR + iterative density weighting with calibration |

Results files are JSON lines, one object per finished run, appended and flushed
after each run, so an interrupted grid resumes where it stopped (`done_keys`).
"""

import argparse
import copy
import hashlib
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from tfrec_proxy.config import RunConfig

# Per-epoch backups of the default grids' runs (git-ignored with saved_models/).
BACKUP_ROOT = Path(__file__).resolve().parent.parent / "saved_models" / ".grid_backups"

_SUR = {"model.extraction": "mur", "model.num_interests": 1, "model.scorer": "auto"}
_MUR = {"model.extraction": "mur", "model.num_interests": 5, "model.scorer": "auto"}
# Every preset names every field it could differ in, so applying a preset on top of
# a base config that already sets one of them (e.g. a weighting) gives the method.
_DEFAULTS = {"train.weighting": "none", "model.loss": "softmax", "model.item_norm": "none"}

METHODS: Dict[str, Dict[str, Any]] = {
    "sur": {**_SUR, **_DEFAULTS},
    "mur": {**_MUR, **_DEFAULTS},
    "frequency": {**_MUR, **_DEFAULTS, "train.weighting": "frequency"},
    "focal": {**_MUR, **_DEFAULTS, "model.loss": "focal"},
    "qmargin": {**_MUR, **_DEFAULTS, "model.loss": "qmargin"},
    "item_norm": {**_MUR, **_DEFAULTS, "model.item_norm": "train"},
    "posthoc": {**_MUR, **_DEFAULTS, "model.item_norm": "posthoc"},
    "sur_idw": {**_SUR, **_DEFAULTS, "train.weighting": "idw"},
    "mur_idw": {**_MUR, **_DEFAULTS, "train.weighting": "idw"},
}

# Display names as in the paper's Table 1.
LABELS = {"sur": "SUR", "mur": "MUR", "frequency": "Frequency Balance",
          "focal": "Focal Balance", "qmargin": "Qmargin", "item_norm": "Item Norm",
          "posthoc": "Item Norm (Post-hoc)", "sur_idw": "SUR-IDW", "mur_idw": "MUR-IDW"}


def check_methods(names: Iterable[str]) -> List[str]:
    """The names, checked against `METHODS` (ValueError naming the known ones)."""
    names = list(names)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; expected some of {list(METHODS)}.")
    return names


def apply_method(config: RunConfig, name: str) -> RunConfig:
    """A copy of `config` with method `name`'s overrides applied.

    Raises:
        ValueError: `name` is not in `METHODS` (the message lists them).
    """
    check_methods([name])
    values = copy.deepcopy(config.to_dict())
    for key, value in METHODS[name].items():
        _set_path(values, key, value)
    return RunConfig.from_dict(values)


def _set_path(values: Dict[str, Any], key: str, value: Any) -> None:
    """Sets `values[a][b]...[z] = value` for a dotted `key` "a.b....z" (e.g.
    "train.epochs", "model.felrec.optimizer"); every section must exist."""
    *sections, field = key.split(".")
    if not sections:
        raise ValueError(f"override {key!r} must be section.field (e.g. train.epochs)")
    node = values
    for section in sections:
        if not isinstance(node.get(section), dict):
            raise ValueError(f"override {key!r}: no config section {section!r}")
        node = node[section]
    node[field] = value


def with_overrides(config: RunConfig, overrides: Mapping[str, Any],
                   seed: Optional[int] = None) -> RunConfig:
    """A copy of `config` with dotted `section.field` (or `section.sub.field`)
    overrides, and the training seed."""
    values = copy.deepcopy(config.to_dict())
    for key, value in overrides.items():
        _set_path(values, key, value)
    result = RunConfig.from_dict(values)
    if seed is not None:
        result.train.seed = int(seed)
    return result


def run_variant_grid(results: Union[str, Path], base: RunConfig,
                     variants: Mapping[str, Mapping[str, Any]],
                     order: Sequence[Tuple[str, int]],
                     describe: Any = None, verbose: int = 0,
                     backup_root: Optional[Union[str, Path]] = None,
                     extra_metrics: Any = None) -> None:
    """Trains every `(variant, seed)` of `order` not yet in `results` (no export),
    on data prepared once from `base`, appending one JSON line per finished run:
    variant (`method`), seed, seconds, config/grid hashes, epochs, phases, trainable
    parameters and every test metric. `describe(metrics) -> str` adds to the
    progress line; `verbose` is Keras `fit`'s (2: one line per epoch).

    With `backup_root`, each run backs up its training after every epoch to
    `backup_root/<variant>-seed<seed>` (`TrainConfig.backup_dir`), so a run killed
    mid-way (a session's end) resumes from its last epoch when the grid is started
    again; its `seconds` then include the earlier processes' training time and
    `resumed` says where it picked up. `extra_metrics(model, data, config) -> dict`,
    when given, adds to each run's metrics (e.g. a second evaluation protocol)."""
    from tfrec_proxy.data import prepare_data
    from tfrec_proxy.export import parameter_report
    from tfrec_proxy.training import train

    grid, todo = grid_todo(results, base, order)
    if not todo:
        return
    data = prepare_data(base.data)
    print(f"data: {data.summary()}", flush=True)
    for number, (method, seed) in enumerate(todo, start=1):
        config = with_overrides(base, variants[method], seed)
        digest, resumed = with_backup(config, backup_root, method, seed)
        started = time.perf_counter()
        result = train(config, export=False, verbose=verbose, data=data)
        seconds = time.perf_counter() - started + resumed.get("earlier_seconds", 0.0)
        if extra_metrics is not None:
            result.metrics.update(extra_metrics(result.model, data, config))
        append_result(results, {
            "method": method, "seed": int(seed), "seconds": round(seconds, 2),
            "config_hash": digest, "grid_hash": grid,
            **({"resumed": resumed} if resumed else {}),
            "epochs": sum(p["epochs"] for p in result.phases),
            "phases": [{key: p[key] for key in ("name", "epochs", "seconds")}
                       for p in result.phases],
            "parameters": parameter_report(result.model), "metrics": result.metrics,
            "curves": validation_curves(result.history)})
        extra = f"; {describe(result.metrics)}" if describe else ""
        print(f"[{number}/{len(todo)}] {method} seed {seed}: {seconds / 60:.1f} min, "
              f"{sum(p['epochs'] for p in result.phases)} epochs{extra}", flush=True)


def with_backup(config: RunConfig, backup_root: Optional[Union[str, Path]], method: str,
                seed: int) -> Tuple[str, Dict[str, Any]]:
    """`(config hash, where its backup stands)`: the hash is taken before the backup
    folder is set (same runs, same hash); with `backup_root`, sets
    `config.train.backup_dir` to `backup_root/<method>-seed<seed>` and returns
    `backed_up_progress` of it (`{}` without a backup)."""
    digest = config_hash(config)
    if backup_root is None:
        return digest, {}
    config.train.backup_dir = str(Path(backup_root) / f"{method}-seed{seed}")
    return digest, backed_up_progress(config.train.backup_dir)


def backed_up_progress(directory: Union[str, Path]) -> Dict[str, Any]:
    """Where a backup in `directory` stands (`{"phase", "epoch", "earlier_seconds"}`,
    the training seconds spent on it so far), or `{}` when there is none."""
    from tfrec_proxy.backup import PROGRESS_FILE

    path = Path(directory) / PROGRESS_FILE
    if not path.exists():
        return {}
    progress = json.loads(path.read_text())
    return {"phase": int(progress["phase"]), "epoch": int(progress["epoch"]),
            "earlier_seconds": round(float(progress["train_seconds"]), 2)}


def validation_curves(history: Mapping[str, Sequence[float]]) -> Dict[str, List[float]]:
    """The per-epoch validation metrics of a run's history (`val_*`), rounded to 5
    decimals: enough to tell whether a budgeted run was still improving."""
    return {key: [round(float(v), 5) for v in values]
            for key, values in history.items() if key.startswith("val_")}


def grid_todo(results: Union[str, Path], base: RunConfig, order: Sequence[Tuple[Any, ...]],
              key: Sequence[str] = ("method", "seed")) -> Tuple[str, List[Tuple[Any, ...]]]:
    """`(grid hash, the keys of order not yet in results)`, printing how many runs are
    there and how many are left (the start of every resumable grid)."""
    records, done, grid = open_grid(results, base, key)
    todo = [item for item in order if item not in done]
    print(f"results: {results} ({len(records)} runs there; {len(todo)} of {len(order)} "
          "to run)", flush=True)
    return grid, todo


def config_hash(config: RunConfig) -> str:
    """A short fingerprint of a resolved config (stored with each result line)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def append_result(path: Union[str, Path], record: Mapping[str, Any]) -> None:
    """Appends one JSON object as a line to `path` (created with its folder), flushed
    and synced so a killed grid keeps every finished run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(record), sort_keys=True, allow_nan=True)
    with path.open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Every record of a results file (none if it does not exist); a line that is
    not valid JSON (a run killed mid-write) is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: not a JSON line, skipped.", stacklevel=2)
    return records


def runs_by_method(path: Union[str, Path]) -> Dict[str, List[Dict[str, Any]]]:
    """A results file's records grouped by `method` (SystemExit when it has none)."""
    records = read_results(path)
    if not records:
        raise SystemExit(f"No results in {path}; run the grid first.")
    runs: Dict[str, List[Dict[str, Any]]] = {}
    for record in records:
        runs.setdefault(record["method"], []).append(record)
    return runs


def done_keys(records: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Set[Tuple]:
    """The `fields` tuples of the records, e.g. `{("sur", 0.0, 0), ...}`."""
    return {tuple(record.get(field) for field in fields) for record in records}


def open_grid(path: Union[str, Path], base: RunConfig, fields: Sequence[str]
              ) -> Tuple[List[Dict[str, Any]], Set[Tuple], str]:
    """A grid's results so far: `(records, done keys, grid hash of base)`; warns when
    the file also holds runs made with other settings."""
    records = read_results(path)
    grid = config_hash(base)  # the settings shared by the whole grid
    others = sorted({r.get("grid_hash") for r in records} - {grid}, key=str)
    if others:
        print(f"warning: {path} also holds runs of other settings (grid {others} vs "
              f"{grid} now); use another --results to keep grids apart", flush=True)
    return records, done_keys(records, fields), grid


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """`"80.62 ± 0.18"`: mean and sample standard deviation (n - 1) of `values` times
    `scale`; one value prints alone, none (or only NaNs) as `"-"`."""
    values = [float(v) * scale for v in values
              if v is not None and not math.isnan(float(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean(values: Sequence[Optional[float]]) -> float:
    """Mean of the non-missing values (NaN when there are none)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.mean(values) if values else math.nan


def std(values: Sequence[Optional[float]]) -> float:
    """Sample standard deviation of the non-missing values (0 for one, NaN for none)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """numpy scalars / arrays and tuples as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    return value


def add_grid_arguments(parser: argparse.ArgumentParser, variants: Iterable[str], *,
                       data_path_help: Optional[str] = None,
                       default_methods: bool = True) -> None:
    """The options every `repro_*` grid shares: `--methods` (default all of
    `variants`, or None with `default_methods=False`), `--seeds` (0 1 2),
    `--data-path` (when `data_path_help` is given), `--results`, `--quick`,
    `--summarize`."""
    names = list(variants)
    parser.add_argument("--methods", nargs="+", choices=names,
                        default=names if default_methods else None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    if data_path_help:
        parser.add_argument("--data-path", help=data_path_help)
    parser.add_argument("--results", type=Path,
                        help="JSON-lines results file (default pipelines/results/...)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--backup-root", type=Path,
                        help="back each run up here after every epoch, so a killed grid "
                             "resumes mid-run (default saved_models/.grid_backups/<results "
                             "name>, or <results>.backups/ beside a --results file)")
    parser.add_argument("--no-backup", action="store_true", help="no per-epoch backups")
    parser.add_argument("--summarize", action="store_true",
                        help="print the table of the results file and stop")


def default_results(args: argparse.Namespace, stem: str) -> None:
    """Sets `args.results` (when not given) to `pipelines/results/<stem>.jsonl`, or
    `<stem>_quick.jsonl` with `--quick`, and `args.backup_root` (when not given) to
    `saved_models/.grid_backups/<stem>` for that default, else to `<results>.backups/`
    beside the results file given (None with `--no-backup`)."""
    defaulted = args.results is None
    if defaulted:
        suffix = "_quick" if args.quick else ""
        args.results = Path(__file__).resolve().parent / "results" / f"{stem}{suffix}.jsonl"
    if getattr(args, "no_backup", False):
        args.backup_root = None
    elif getattr(args, "backup_root", None) is None:
        # Backups hold trained weights (data-derived: never under results/).
        args.backup_root = (BACKUP_ROOT / Path(args.results).stem if defaulted
                            else Path(args.results).with_suffix(".backups"))
