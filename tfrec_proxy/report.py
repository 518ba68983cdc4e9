"""PNG reports of a run folder: training curves, metrics by popularity, item embeddings.

`write_report(run_dir)` (behind `tfrec-proxy report --run DIR`) reads a run folder (see
`tfrec_proxy.run_format`) and writes one PNG per plot into `<run_dir>/report/`.

Importing this module loads only numpy and the standard library. matplotlib is imported
when a report is drawn and used through a `Figure` on its own Agg canvas (never
`pyplot`): no TensorFlow, no change to the global backend, no windows.
"""

import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MAX_PCA_POINTS", "ReportWarning", "pca_2d", "write_report"]

REQUIRED_FILES = ("metrics.json", "candidates.npz")
MAX_PCA_POINTS = 20_000  # items drawn in the embedding plot (a deterministic sample)
DPI = 100
_PROTOCOLS = ("sampled", "full")  # drawn first, in this order
_GROUP_HINTS = {"head": "popular", "tail": "long tail"}


class ReportWarning(UserWarning):
    """A plot, or part of one, was left out because the run folder lacks its data."""


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """Projects points onto their first two principal components.

    Uses the SVD of the centred matrix. Each component's sign is fixed so that its
    largest-magnitude loading is positive, so the result is deterministic. With
    `d == 1` (or a single point) the missing coordinates are 0.

    Args:
        embeddings: `[N, d]` finite numbers, `N, d >= 1`.

    Returns:
        `[N, 2]` float64 coordinates; column 0 has the largest variance, and each
        column has mean 0.

    Raises:
        ValueError: if `embeddings` is not a non-empty numeric 2-D array or holds a
            non-finite value.

    Example:
        >>> t = np.array([-1.0, 0.0, 3.0])
        >>> points = np.stack([1 + 0.6 * t, 2 + 0.8 * t], axis=1)  # a line, [3, 2]
        >>> np.round(pca_2d(points), 6) + 0.0  # distance along the line; 0 across
        array([[-1.666667,  0.      ],
               [-0.666667,  0.      ],
               [ 2.333333,  0.      ]])
    """
    x = np.asarray(embeddings)
    if (x.ndim != 2 or 0 in x.shape
            or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating))):
        raise ValueError(f"embeddings must be a numeric [N, d] array with N, d >= 1; got "
                         f"{x.dtype} with shape {x.shape}.")
    x = x.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"embeddings[{bad[0]}] holds a non-finite value; expected finite "
                         "embeddings.")
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    largest = np.abs(components).argmax(axis=1)
    signs = np.where(components[np.arange(len(components)), largest] < 0, -1.0, 1.0)
    projected = np.zeros((x.shape[0], 2))
    projected[:, :len(components)] = centred @ (components * signs[:, None]).T
    return projected


def write_report(run_dir: Union[str, Path],
                 output_dir: Optional[Union[str, Path]] = None) -> List[Path]:
    """Draws a run's report plots as PNG files.

    Writes each plot whose data the folder has (else it warns with `ReportWarning`),
    under a temporary name renamed into place:

    * `training_curves.png` (1200x450 px): loss and validation metrics per epoch
      (`metrics.json["history"]`), separating `metrics.json["phases"]`.
    * `metrics_by_popularity.png` (1200x500 px): test HR@k and NDCG@k (largest k)
      per target popularity group (`pop1..popN`, else `head`/`tail`) and protocol
      (`sampled`, `full`), with group sizes and the overall value (dashed).
    * `item_embeddings.png` (650x550 px per panel): 2-D PCA of at most
      `MAX_PCA_POINTS` candidate embeddings, coloured by log(1 + count) and by
      ground-truth cluster when `items.npz` has them.

    Args:
        run_dir: A run folder holding `metrics.json` and `candidates.npz`.
        output_dir: Where to write; default `<run_dir>/report/` (created if needed).

    Returns:
        The paths of the PNG files written, in the order above.

    Raises:
        ValueError: if `run_dir` does not exist, lacks a required file, or a file
            cannot be read or has the wrong shape.

    Example:
        >>> paths = write_report("saved_models/tiny")  # doctest: +SKIP
        >>> [path.name for path in paths]  # doctest: +SKIP
        ['training_curves.png', 'metrics_by_popularity.png', 'item_embeddings.png']
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run folder {str(run_dir)!r} does not exist or is not a folder; "
                         f"expected a run folder holding {list(REQUIRED_FILES)}.")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"Run folder {str(run_dir)!r} lacks {missing}; expected a run "
                         f"folder holding {list(REQUIRED_FILES)}, as `tfrec-proxy train` "
                         "writes.")
    metrics = _read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise ValueError(f"{str(run_dir / 'metrics.json')!r} holds a "
                         f"{type(metrics).__name__}; expected a JSON object.")
    manifest_path = run_dir / "manifest.json"
    manifest = _read_json(manifest_path) if manifest_path.is_file() else {}
    ids, embeddings = _read_candidates(run_dir / "candidates.npz")
    items = _read_items(run_dir / "items.npz", ids)
    output = Path(output_dir) if output_dir is not None else run_dir / "report"
    output.mkdir(parents=True, exist_ok=True)
    title = _run_title(run_dir, manifest if isinstance(manifest, dict) else {})
    plots = (("training_curves.png", lambda: _training_curves(metrics, title)),
             ("metrics_by_popularity.png", lambda: _metrics_by_popularity(metrics, title)),
             ("item_embeddings.png", lambda: _item_embeddings(embeddings, items, title)))
    written = []
    for name, draw in plots:
        figure = draw()
        if figure is not None:
            temporary = output / f".{name}.tmp"
            figure.savefig(temporary, format="png", dpi=DPI)
            os.replace(temporary, output / name)
            written.append(output / name)
    return written


def _warn(message: str) -> None:
    warnings.warn(message, ReportWarning, stacklevel=3)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not readable JSON: {error}") from error


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{str(path)!r} is not a readable .npz file: {error}") from error


def _read_candidates(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """`ids` int [N] and `embeddings` [N, d] of `candidates.npz`."""
    arrays = _load_npz(path)
    missing = [name for name in ("ids", "embeddings") if name not in arrays]
    if missing:
        raise ValueError(f"{str(path)!r} lacks arrays {missing}; expected 'ids' [N] and "
                         f"'embeddings' [N, d], found {sorted(arrays)}.")
    ids, embeddings = arrays["ids"], arrays["embeddings"]
    if ids.ndim != 1 or embeddings.ndim != 2 or embeddings.shape[0] != ids.shape[0] or not ids.size:
        raise ValueError(f"{str(path)!r} holds ids of shape {ids.shape} and embeddings of "
                         f"shape {embeddings.shape}; expected [N] and [N, d] with N >= 1.")
    return ids, embeddings


def _read_items(path: Path, ids: np.ndarray) -> Optional[Dict[str, np.ndarray]]:
    """`items.npz` arrays other than `ids` (candidate order), or None with a warning."""
    if not path.is_file():
        _warn(f"{str(path)!r} does not exist (older run); item embeddings are drawn "
              "without popularity or cluster colours.")
        return None
    arrays = _load_npz(path)
    if not np.array_equal(arrays.pop("ids", ids), ids):
        _warn(f"{str(path)!r}: 'ids' differ from those of candidates.npz (expected the "
              "same ids in the same order); item embeddings are drawn without colours.")
        return None
    usable = {}
    for name, values in arrays.items():
        if values.shape != ids.shape or not np.issubdtype(values.dtype, np.number):
            _warn(f"items.npz[{name!r}] has dtype {values.dtype} and shape {values.shape}; "
                  f"expected numbers of shape {ids.shape}. Ignoring it.")
        else:
            usable[name] = values
    return usable


def _run_title(run_dir: Path, manifest: Dict[str, Any]) -> str:
    """`<folder> (<model_kind>, d=<embedding_dim>, <num_interests> interests)`."""
    kind, dim, interests = (manifest.get(key) for key in
                            ("model_kind", "embedding_dim", "num_interests"))
    details = [str(kind) if kind else "", f"d={dim}" if dim else "",
               f"{interests} interest{'s' if interests != 1 else ''}" if interests else ""]
    details = ", ".join(filter(None, details))
    return f"{run_dir.resolve().name} ({details})" if details else run_dir.resolve().name


def _figure(width: float, height: float) -> "Figure":
    """A figure on its own Agg canvas: no pyplot, no global backend, no window."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _training_curves(metrics: Dict[str, Any], title: str) -> Optional["Figure"]:
    history = metrics.get("history")
    if not history:
        _warn("metrics.json has no 'history' (older run); training_curves.png is skipped.")
        return None
    if not isinstance(history, dict):
        raise ValueError(f"metrics.json 'history' is a {type(history).__name__}; expected "
                         "an object of per-epoch lists.")
    columns = {}
    for key, values in history.items():
        try:
            column = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            column = np.zeros((0, 0))
        if column.ndim != 1:
            raise ValueError(f"metrics.json history[{key!r}] = {values!r:.80}; expected a "
                             "list of numbers, one per epoch.")
        if np.isfinite(column).any():
            columns[key] = column
    if not columns:
        _warn("metrics.json 'history' holds no finite values; training_curves.png is skipped.")
        return None
    epochs = max(len(column) for column in columns.values())
    order = sorted(columns, key=lambda key: (key.startswith("val_"), key))
    panels = [(name, keys) for name, keys in
              (("Loss", [k for k in order if "loss" in k]),
               ("Validation metrics", [k for k in order if "loss" not in k])) if keys]
    boundaries, names = _phase_boundaries(metrics.get("phases"), epochs)

    from matplotlib.ticker import MaxNLocator

    figure = _figure(12, 4.5)
    for axes, (panel, keys) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            axes.plot(np.arange(1, len(columns[key]) + 1), columns[key], marker="o",
                      markersize=3, label=key)
        for boundary in boundaries[1:-1]:
            axes.axvline(boundary + 0.5, color="0.4", linestyle="--", linewidth=1)
        for start, stop, name in zip(boundaries[:-1], boundaries[1:], names):
            axes.text((start + stop + 1) / 2, 1.01, f"phase: {name}", ha="center",
                      va="bottom", fontsize=8, color="0.3",
                      transform=axes.get_xaxis_transform())
        axes.set_title(panel, pad=16 if names else 6)
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss" if panel == "Loss" else "metric value")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    figure.suptitle(f"Training curves: {title}")
    return figure


def _phase_boundaries(phases: Any, epochs: int) -> Tuple[List[int], List[str]]:
    """Cumulative epoch counts `[0, e1, e1 + e2, ...]` and phase names (none if 1 phase)."""
    if phases is None:
        _warn("metrics.json has no 'phases' (older run); phase boundaries are not marked.")
        return [], []
    try:
        counts = [int(phase["epochs"]) for phase in phases]
        names = [str(phase.get("name", f"phase {i + 1}")) for i, phase in enumerate(phases)]
    except (TypeError, KeyError, ValueError, AttributeError):
        counts, names = [], []
    if not counts or min(counts) < 0 or sum(counts) != epochs:
        _warn(f"metrics.json 'phases' = {phases!r:.200} does not split the {epochs} history "
              "epochs (expected a list of {'name': str, 'epochs': int}); phase boundaries "
              "are not marked.")
        return [], []
    if len(counts) == 1:  # nothing to separate
        return [], []
    return [int(b) for b in np.cumsum([0] + counts)], names


def _metric_groups(test: Dict[str, Any]) -> Tuple[int, List[str], List[str]]:
    """(k, protocols, groups) to draw from a flat test-metric dict; groups may be empty.

    k is the largest cut-off with `<protocol>/hr@k` for every protocol (else the largest
    of any); protocols lacking it are dropped. Groups are `pop1..popN` in numeric order
    if any are present, else `head`/`tail`.
    """
    ks: Dict[str, set] = {}
    for key in test:
        match = re.fullmatch(r"([^/]+)/hr@(\d+)", key)
        if match:
            ks.setdefault(match[1], set()).add(int(match[2]))
    if not ks:
        return 0, [], []
    common = set.intersection(*ks.values())
    k = max(common) if common else max(max(values) for values in ks.values())
    rank = {name: i for i, name in enumerate(_PROTOCOLS)}
    protocols = sorted((p for p in ks if k in ks[p]), key=lambda p: (rank.get(p, len(rank)), p))
    pops = set()
    for key in test:
        match = re.fullmatch(r"([^/]+)/(pop\d+)/hr@(\d+)", key)
        if match and match[1] in protocols and int(match[3]) == k:
            pops.add(match[2])
    if pops:
        return k, protocols, sorted(pops, key=lambda group: int(group[3:]))
    return k, protocols, [group for group in ("head", "tail")
                          if any(f"{p}/{group}/hr@{k}" in test for p in protocols)]


def _number(value: Any) -> float:
    """A JSON number as float; NaN for anything else (missing, null, text)."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if valid else float("nan")


def _metrics_by_popularity(metrics: Dict[str, Any], title: str) -> Optional["Figure"]:
    test = metrics.get("test")
    if not isinstance(test, dict) or not test:
        _warn("metrics.json has no 'test' metrics; metrics_by_popularity.png is skipped.")
        return None
    k, protocols, groups = _metric_groups(test)
    if not groups:
        _warn("metrics.json 'test' has no per-group metrics ('<protocol>/pop1/hr@k' or "
              "'<protocol>/head/hr@k'); metrics_by_popularity.png is skipped.")
        return None
    labels = []
    for index, group in enumerate(groups):
        hint = _GROUP_HINTS.get(group, "")
        if group.startswith("pop") and len(groups) > 1:
            hint = "most popular" if index == 0 else "rarest" if index == len(groups) - 1 else ""
        counts = [test.get(f"{p}/{group}/count") for p in protocols]
        shown = [f"{c:,.0f}" if isinstance(c, (int, float)) else "?" for c in counts]
        count = shown[0] if len(set(shown)) == 1 else " / ".join(shown)
        labels.append("\n".join(filter(None, [group, hint and f"({hint})", f"n={count}"])))

    figure = _figure(12, 5)
    x = np.arange(len(groups))
    width = 0.8 / len(protocols)
    for axes, metric in zip(figure.subplots(1, 2), ("hr", "ndcg")):
        top = 0.0
        for i, protocol in enumerate(protocols):
            values = np.array([_number(test.get(f"{protocol}/{g}/{metric}@{k}")) for g in groups])
            bars = axes.bar(x + (i - (len(protocols) - 1) / 2) * width, values, width,
                            color=f"C{i}", label=protocol)
            axes.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.3f}" for v in values],
                           fontsize=7, padding=2)
            overall = _number(test.get(f"{protocol}/{metric}@{k}"))
            if not np.isnan(overall):
                axes.axhline(overall, color=f"C{i}", linestyle="--", linewidth=1,
                             label=f"{protocol} overall ({overall:.3f})")
            top = np.nanmax([top, overall, *values])
        axes.set_ylim(0, top * 1.15 if top > 0 else 1)
        axes.set_xticks(x, labels, fontsize=8)
        axes.set_xlabel("target item popularity group (n = test examples)")
        axes.set_ylabel(f"{metric.upper()}@{k}")
        axes.set_title(f"{'HR' if metric == 'hr' else 'NDCG'}@{k} by popularity group")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    figure.suptitle(f"Test metrics by target popularity: {title}")
    return figure


def _subsample(n: int, limit: int = MAX_PCA_POINTS) -> np.ndarray:
    """Sorted row indices of a deterministic sample of at most `limit` of `n` rows."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def _item_embeddings(embeddings: np.ndarray, items: Optional[Dict[str, np.ndarray]],
                     title: str) -> "Figure":
    rows = _subsample(len(embeddings))
    sample = np.asarray(embeddings[rows], dtype=np.float64)
    points = pca_2d(sample)
    total = sample.var(axis=0).sum()
    share = points.var(axis=0) / total if total > 0 else np.zeros(2)
    items = items or {}
    panels = [name for name in ("counts", "clusters") if name in items] or [None]
    size = float(np.clip(12_000 / len(rows), 2, 20))

    figure = _figure(6.5 * len(panels), 5.5)
    for axes, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        if panel == "counts":
            popularity = np.log1p(np.maximum(items["counts"][rows].astype(np.float64), 0))
            order = np.argsort(popularity, kind="stable")  # popular items drawn on top
            low, high = np.percentile(popularity, [1, 99])  # a few huge counts saturate
            drawn = axes.scatter(points[order, 0], points[order, 1], c=popularity[order],
                                 s=size, cmap="viridis", vmin=low, vmax=max(high, low + 1e-9),
                                 linewidths=0)
            figure.colorbar(drawn, ax=axes, extend="both",
                            label="log(1 + training count), 1st-99th percentile")
            axes.set_title("coloured by item popularity")
        elif panel == "clusters":
            _draw_clusters(axes, points, items["clusters"][rows], size)
        else:
            axes.scatter(points[:, 0], points[:, 1], s=size, color="C0", linewidths=0)
            axes.set_title("items (no items.npz: uncoloured)")
        axes.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        axes.set_ylabel(f"PC2 ({share[1]:.0%} of variance)")
        axes.grid(alpha=0.3)
    figure.suptitle(f"Item embeddings, 2-D PCA of {len(rows):,} of {len(embeddings):,} "
                    f"items: {title}")
    return figure


def _draw_clusters(axes: "Axes", points: np.ndarray, clusters: np.ndarray, size: float) -> None:
    """Categorical colours per cluster (legend when there are at most 20)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    names, codes = np.unique(clusters, return_inverse=True)
    n = len(names)
    palette = (colormaps["tab10" if n <= 10 else "tab20"](np.arange(n)) if n <= 20
               else colormaps["turbo"](np.linspace(0, 1, n)))
    order = np.random.default_rng(0).permutation(len(points))  # no cluster hides the rest
    axes.scatter(points[order, 0], points[order, 1], c=palette[codes[order]], s=size,
                 linewidths=0)
    if len(names) <= 20:
        handles = [Line2D([], [], marker="o", linestyle="", color=palette[i], label=str(name))
                   for i, name in enumerate(names)]
        axes.legend(handles=handles, title="cluster", fontsize=7, title_fontsize=8,
                    loc="best", ncol=1 if len(names) <= 10 else 2)
    axes.set_title(f"coloured by ground-truth cluster ({len(names)} clusters)")
