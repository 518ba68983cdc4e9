"""The item feature spec: columns, fitting and encoding (PIR §3.1 attributes `f_i`,
context `c`).

A spec is declared once, fitted on the training item table (multi-hot categories, dense
widths, numeric mean/std), saved with the run and reused to encode items added later
with the identical layout. Attributes (`d_A = attribute_dim`) are the non-timestamp
columns concatenated in spec order; context (`d_C = context_dim`) is `CALENDAR_DIM`
date features per timestamp column (PIR §4.1.1). numpy and pandas only, no TensorFlow.
"""

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from tfrec_proxy.data.frames import integer_column, plain

FEATURE_KINDS = ("multi_hot", "dense", "numeric", "timestamp")
CALENDAR_DIM = 7
_FORMAT, _VERSION = "tfrec_proxy.item_features", 1  # of the spec's dict form
CALENDAR_COLUMNS = ("year", "month_sin", "month_cos", "weekday_sin", "weekday_cos",
                    "hour_sin", "hour_cos")
_SEPARATORS = {"multi_hot": "|", "dense": ","}
_KEYS = {"multi_hot": ("kind", "separator", "categories"), "numeric": ("kind", "mean", "std"),
         "dense": ("kind", "separator", "width"), "timestamp": ("kind",)}
# Unix seconds of 0001-01-01 and 10000-01-01 UTC: the accepted timestamp range.
_FIRST_SECOND, _END_SECOND = -62135596800, 253402300800
_SECONDS = ("a finite number of seconds since the epoch (UTC) in years 1..9999 "
            "(milliseconds need dividing by 1000)")


@dataclasses.dataclass(frozen=True)
class FeatureColumn:
    """One item-table column and its encoding; `timestamp` is context, the rest attributes.

    Attributes:
        name: the table column.
        kind: one of `FEATURE_KINDS`.
        separator: token separator of `multi_hot` (None -> `"|"`) and `dense`
            (None -> `","`) cells; stays None for the other kinds.
        width: `dense`: vector width (inferred at fit when None); `multi_hot`:
            `len(categories)`, set from `categories`.
        categories: `multi_hot`: the fitted sorted token vocabulary.
        mean, std: `numeric`: fitted mean and std (std 1.0 for a constant column).

    Example:
        >>> FeatureColumn("genres", "multi_hot", categories=("Comedy", "Drama")).dim
        2
    """

    name: str
    kind: str
    separator: Optional[str] = None
    width: Optional[int] = None
    categories: Optional[Tuple[str, ...]] = None
    mean: Optional[float] = None
    std: Optional[float] = None

    def __post_init__(self) -> None:
        where = f"item feature column {self.name!r}"
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; expected one of "
                             f"{list(FEATURE_KINDS)}")
        if self.separator is None:
            object.__setattr__(self, "separator", _SEPARATORS.get(self.kind))
        elif not isinstance(self.separator, str) or not self.separator:
            raise ValueError(f"{where}: separator {self.separator!r}; expected a "
                             "non-empty string")
        if self.categories is not None:
            categories = tuple(str(category) for category in self.categories)
            if list(categories) != sorted(set(categories)):
                raise ValueError(f"{where}: categories must be sorted and unique")
            object.__setattr__(self, "categories", categories)
            object.__setattr__(self, "width", len(categories))
        elif self.width is not None and (self.kind != "dense" or isinstance(self.width, bool)
                                         or not isinstance(self.width, int) or self.width < 1):
            raise ValueError(f"{where}: width {self.width!r}; expected a positive integer "
                             "(dense columns only)")

    @property
    def complete(self) -> bool:
        """Whether every fitted value the kind needs is set."""
        return {"multi_hot": self.categories is not None, "dense": self.width is not None,
                "numeric": None not in (self.mean, self.std)}.get(self.kind, True)

    @property
    def dim(self) -> int:
        """Columns of the encoding: categories, width, 1 or `CALENDAR_DIM`."""
        if not self.complete:
            raise ValueError(f"item feature column {self.name!r} ({self.kind}) is not "
                             "fitted; call ItemFeatureSpec.fit first")
        return {"numeric": 1, "timestamp": CALENDAR_DIM}.get(self.kind, self.width)


@dataclasses.dataclass(frozen=True)
class ItemFeatureSpec:
    """The item table's id column and feature columns, declared and then fitted.

    Attributes:
        id_column: column of integer raw item ids.
        columns: the feature columns, in layout order.
        fitted: whether every column carries its fitted values.

    Example:
        >>> spec = ItemFeatureSpec.from_dict({"id_column": "item_id", "columns": {
        ...     "genres": {"kind": "multi_hot"}, "price": {"kind": "numeric"}}})
        >>> table = pd.DataFrame({"item_id": [1, 2], "genres": ["A|B", "B"],
        ...                       "price": [1.0, 3.0]})
        >>> ids, attributes, context = spec.fit(table).encode(table)
        >>> attributes.tolist(), context.shape
        ([[1.0, 1.0, -1.0], [0.0, 1.0, 1.0]], (2, 0))
    """

    id_column: str
    columns: Tuple[FeatureColumn, ...]
    fitted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        names = [column.name for column in self.columns]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated or self.id_column in names:
            raise ValueError(f"item feature spec: column(s) {repeated or [self.id_column]} "
                             "declared twice or as the id column; expected unique columns")
        unfitted = [column.name for column in self.columns if not column.complete]
        if self.fitted and unfitted:
            raise ValueError(f"item feature spec: marked fitted but column(s) {unfitted} "
                             "lack their fitted values")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ItemFeatureSpec":
        """Builds a spec from its config form or from `to_dict` output.

        Config form: `{"id_column": "item_id", "columns": {"genres": {"kind":
        "multi_hot", "separator": "|"}, "price": {"kind": "numeric"}}}`; a column may
        also be given as just its kind (`"price": "numeric"`).

        Raises:
            ValueError: an unknown key or kind, a bad value, or a wrong format/version.
        """
        where = "item feature spec"
        if not isinstance(values, Mapping) or not isinstance(values.get("columns", {}), Mapping):
            raise ValueError(f"{where}: expected a mapping with 'columns' mapping column names "
                             f"to {{'kind': ...}}, got {values!r}")
        unknown = sorted(set(values) - {"format", "version", "id_column", "columns", "fitted"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected id_column, "
                             "columns, fitted (and format, version)")
        if values.get("format", _FORMAT) != _FORMAT or values.get("version", 1) != 1:
            raise ValueError(f"{where}: format {values.get('format')!r} version "
                             f"{values.get('version')!r}; expected {_FORMAT!r} version 1")
        if not isinstance(values.get("id_column"), str):
            raise ValueError(f"{where}: id_column {values.get('id_column')!r}; expected a "
                             "column name (str)")
        columns = []
        for name, params in values.get("columns", {}).items():
            params = {"kind": params} if isinstance(params, str) else params
            kind = params.get("kind") if isinstance(params, Mapping) else None
            if kind not in FEATURE_KINDS:
                raise ValueError(f"item feature column {name!r}: unknown kind in {params!r}; "
                                 f"expected {{'kind': one of {list(FEATURE_KINDS)}}}")
            extra = sorted(set(params) - set(_KEYS[kind]))
            if extra:
                raise ValueError(f"item feature column {name!r}: unknown key(s) {extra} for "
                                 f"kind {kind!r}; expected {list(_KEYS[kind])}")
            columns.append(FeatureColumn(name=str(name), **params))
        return cls(values["id_column"], tuple(columns), bool(values.get("fitted", False)))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready form; `from_dict(spec.to_dict()) == spec`."""
        def params(column: FeatureColumn) -> Dict[str, Any]:
            values = {key: getattr(column, key) for key in _KEYS[column.kind]}
            return {key: list(value) if isinstance(value, tuple) else plain(value)
                    for key, value in values.items() if value is not None}
        return {"format": _FORMAT, "version": _VERSION, "id_column": self.id_column,
                "fitted": self.fitted, "columns": {c.name: params(c) for c in self.columns}}

    @classmethod
    def infer(cls, frame: pd.DataFrame, id_column: Optional[str] = None) -> "ItemFeatureSpec":
        """The default (unfitted) spec of an item table.

        Rules: the id column is `id_column`, else `item_id`, else `sas_item_id`, else the
        first column. Other columns whose name ends with `_id` are skipped. Integer,
        float and bool dtypes -> numeric; datetime dtypes -> timestamp. Text columns
        (empty cells ignored) whose cells all parse as one finite number -> numeric (a
        CSV read as text infers like one read with dtypes); as comma-separated finite
        floats of one common width > 1 -> dense; otherwise -> multi_hot with `|`.

        Raises:
            ValueError: `id_column` (or any column, for an empty frame) is missing.
        """
        names = [str(name) for name in frame.columns]
        if id_column is None:
            id_column = next((n for n in ("item_id", "sas_item_id") if n in names),
                             names[0] if names else None)
        if id_column not in names:
            raise ValueError(f"item table: no id column {id_column!r}; columns present: "
                             f"{names}")
        columns = []
        for name in names:
            if name != id_column and not name.endswith("_id"):
                dtype = frame[name].dtype.kind
                kind = ("numeric" if dtype in "iufb" else "timestamp" if dtype == "M"
                        else _text_kind(frame[name]))
                columns.append(FeatureColumn(name, kind))
        return cls(id_column, tuple(columns))

    @property
    def attribute_dim(self) -> int:
        """`d_A`: summed dims of the non-timestamp columns (needs fitted widths)."""
        return sum(column.dim for column in self.columns if column.kind != "timestamp")

    @property
    def context_dim(self) -> int:
        """`d_C`: `CALENDAR_DIM` per timestamp column."""
        return CALENDAR_DIM * sum(column.kind == "timestamp" for column in self.columns)

    def fit(self, frame: pd.DataFrame, source: str = "item features") -> "ItemFeatureSpec":
        """Learns categories (sorted unique tokens), dense widths and numeric mean/std.

        Args:
            frame: `[N]` item rows, N > 0, with the id and every feature column.
            source: where the frame came from, for messages.

        Returns:
            A fitted copy; declared categories are re-learned, a declared dense width is
            checked. Cells are validated as in `encode`.
        """
        ids = self._ids(frame, source)
        if not len(ids):
            raise ValueError(f"{source}: no item rows to fit the item feature spec on")
        columns = []
        for column in self.columns:
            values, update = frame[column.name], {}
            if column.kind == "multi_hot":
                tokens = set().union(*_token_lists(values, column.separator))
                update = {"categories": tuple(sorted(tokens))}
            elif column.kind == "dense":
                update = {"width": _dense(values, ids, column, source).shape[1]}
            elif column.kind == "numeric":
                x = _numbers(values, ids, column.name, source, "a finite number")
                std = float(x.std())
                update = {"mean": float(x.mean()), "std": std if 0 < std < math.inf else 1.0}
            else:
                _seconds(values, ids, column.name, source)
            columns.append(dataclasses.replace(column, **update))
        return dataclasses.replace(self, columns=tuple(columns), fitted=True)

    def encode(self, frame: pd.DataFrame, source: str = "item features"
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encodes item rows with the fitted layout.

        numeric -> `(x - mean) / std`; multi_hot -> 0/1 per category (an empty or NaN
        cell is all zeros); dense -> the vector; timestamp -> `calendar_features`.

        Args:
            frame: `[N]` item rows with the id and every feature column.
            source: where the frame came from, for messages.

        Returns:
            `(ids, attributes, context)`: int64 `[N]` raw ids, float32
            `[N, attribute_dim]` and float32 `[N, context_dim]`.

        Raises:
            ValueError: the spec is not fitted; a column is missing; an id is not an
                integer or repeats; a numeric/dense cell is empty, NaN, non-finite or
                unparsable; a dense vector has the wrong width; a multi_hot token is no
                fitted category; a timestamp is not a number of seconds since the epoch.
                Messages name the source, the item id, the column and the value.
        """
        if not self.fitted:
            raise ValueError(f"{source}: the item feature spec is not fitted; call fit")
        ids = self._ids(frame, source)
        attributes, context = [np.zeros((len(ids), 0))], [np.zeros((len(ids), 0))]
        for column in self.columns:
            values = frame[column.name]
            if column.kind == "multi_hot":
                attributes.append(_multi_hot(values, ids, column, source))
            elif column.kind == "dense":
                attributes.append(_dense(values, ids, column, source))
            elif column.kind == "numeric":
                x = _numbers(values, ids, column.name, source, "a finite number")
                attributes.append(((x - column.mean) / column.std)[:, None])
            else:
                context.append(calendar_features(_seconds(values, ids, column.name, source)))
        return (ids, np.concatenate(attributes, axis=1).astype(np.float32),
                np.concatenate(context, axis=1).astype(np.float32))

    def _ids(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        """int64 `[N]` ids, after checking that every column is present and ids unique."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{source}: expected a pandas DataFrame, got "
                            f"{type(frame).__name__}")
        wanted = [self.id_column] + [column.name for column in self.columns]
        missing = [name for name in wanted if name not in frame.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; columns present: "
                             f"{list(frame.columns)}; expected the spec's columns {wanted}")
        ids = integer_column(frame[self.id_column], self.id_column, source)
        repeated = pd.Series(ids).duplicated().to_numpy()
        if repeated.any():
            raise ValueError(f"{source}: item {ids[np.argmax(repeated)]} occurs more than "
                             f"once in column {self.id_column!r}; expected one row per item")
        return ids


def _bad(source: str, item: int, column: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{source}: item {item}, column {column!r}: bad value "
                      f"{plain(value)!r}; expected {expected}")


def _numbers(values: pd.Series, ids: np.ndarray, column: str, source: str,
             expected: str) -> np.ndarray:
    """float64 `[N]`; an empty, NaN, unparsable or non-finite cell raises."""
    cells = values.map(lambda v: v.strip() if isinstance(v, str) else v)
    x = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        raise _bad(source, ids[np.argmax(bad)], column, values.iloc[np.argmax(bad)], expected)
    return x


def _seconds(values: pd.Series, ids: np.ndarray, column: str, source: str) -> np.ndarray:
    """float64 `[N]` Unix seconds; datetime columns (naive = UTC) are converted."""
    if values.dtype.kind == "M":
        values = (pd.to_datetime(values, utc=True) - pd.Timestamp(0, tz="UTC")
                  ) / pd.Timedelta(seconds=1)
    x = _numbers(values, ids, column, source, _SECONDS)
    bad = (x < _FIRST_SECOND) | (x >= _END_SECOND)
    if bad.any():
        raise _bad(source, ids[np.argmax(bad)], column, x[np.argmax(bad)], _SECONDS)
    return x


def _vector(cell: Any, separator: str) -> Optional[np.ndarray]:
    """float64 vector of a dense cell (text or list); None when empty; ValueError when
    unparsable."""
    if isinstance(cell, str):
        text = cell.strip()
        return np.array([float(t) for t in text.split(separator)]) if text else None
    if isinstance(cell, (list, tuple, np.ndarray)):
        return np.asarray(cell, dtype=np.float64).reshape(-1)
    return None if pd.isna(cell) else np.array([float(cell)])


def _text_kind(values: pd.Series) -> str:
    """`infer`'s kind of a text column: numeric, dense or multi_hot."""
    widths = set()
    for cell in values:
        try:
            vector = _vector(cell, ",")
        except (ValueError, TypeError):
            return "multi_hot"
        if vector is not None:
            widths.add(len(vector) if np.all(np.isfinite(vector)) else 0)
    if len(widths) != 1 or 0 in widths:
        return "multi_hot"
    return "numeric" if widths == {1} else "dense"


def _dense(values: pd.Series, ids: np.ndarray, column: FeatureColumn, source: str
           ) -> np.ndarray:
    """float64 `[N, width]`; the width is `column.width`, else the first row's."""
    width, rows = column.width, []
    for item, cell in zip(ids, values):
        what = (f"{width} " if width else "") + f"{column.separator!r}-separated floats"
        try:
            vector = _vector(cell, column.separator)
        except (ValueError, TypeError):
            vector = None
        if vector is None or not np.all(np.isfinite(vector)):
            raise _bad(source, item, column.name, cell, f"{what}, all finite")
        width = width or len(vector)
        if len(vector) != width:
            raise _bad(source, item, column.name, cell, f"{what} (got {len(vector)})")
        rows.append(vector)
    return np.stack(rows) if rows else np.zeros((0, width or 0))


def _token_lists(values: pd.Series, separator: str) -> List[List[str]]:
    """The stripped, non-empty tokens of each multi_hot cell (NaN/None -> none)."""
    def tokens(cell: Any) -> List[str]:
        if isinstance(cell, str):
            parts = cell.split(separator)
        elif isinstance(cell, (list, tuple, np.ndarray)):
            parts = [str(part) for part in cell]
        else:
            parts = [] if pd.isna(cell) else [str(cell)]
        return [part.strip() for part in parts if part.strip()]
    return [tokens(cell) for cell in values]


def _multi_hot(values: pd.Series, ids: np.ndarray, column: FeatureColumn, source: str
               ) -> np.ndarray:
    """float64 `[N, len(categories)]` of 0/1; an unknown token raises."""
    position = {category: j for j, category in enumerate(column.categories)}
    out = np.zeros((len(ids), len(position)))
    for row, (item, tokens) in enumerate(zip(ids, _token_lists(values, column.separator))):
        for token in tokens:
            if token not in position:
                shown = ", ".join(map(repr, column.categories[:20]))
                raise _bad(source, item, column.name, token, "a category seen at fit "
                           f"({len(position)}: {shown}{', ...' if len(position) > 20 else ''})")
            out[row, position[token]] = 1.0
    return out


def calendar_features(timestamps: npt.ArrayLike) -> np.ndarray:
    """Calendar context of Unix timestamps (seconds, UTC), vectorised.

    Columns (`CALENDAR_COLUMNS`): 0 `(year - 2000) / 10`; 1, 2 sin/cos of `2 pi m / 12`
    for month m = 0 (January) .. 11; 3, 4 sin/cos of `2 pi w / 7` for weekday
    w = 0 (Monday) .. 6 (Sunday), so 1970-01-01, a Thursday, has w = 3; 5, 6 sin/cos of
    `2 pi h / 24` for hour h = 0..23. Fractional seconds are floored.

    Args:
        timestamps: `[N]` seconds since 1970-01-01 00:00 UTC (flattened; a scalar is 1).

    Returns:
        float32 `[N, CALENDAR_DIM]`.

    Raises:
        ValueError: a value is not a finite number in years 1..9999 (position named).
    """
    try:
        x = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"timestamps must be numbers of seconds ({error})") from error
    bad = ~np.isfinite(x) | (x < _FIRST_SECOND) | (x >= _END_SECOND)
    if bad.any():
        raise ValueError(f"timestamp {x[bad][0]!r} at position {int(np.argmax(bad))} is not "
                         f"{_SECONDS}")
    seconds = np.floor(x).astype(np.int64)
    days = seconds // 86400
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    out = [(months // 12 + 1970 - 2000) / 10.0]
    for value, period in ((months % 12, 12), ((days + 3) % 7, 7),
                          ((seconds % 86400) // 3600, 24)):
        out += [np.sin(2 * np.pi * value / period), np.cos(2 * np.pi * value / period)]
    return np.stack(out, axis=1).astype(np.float32)
