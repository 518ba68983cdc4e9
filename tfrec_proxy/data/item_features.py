"""Item attributes and context for attribute-aware item towers (PIR §3.1), aligned
with a vocabulary: reading item tables, encoding them with a fitted
`ItemFeatureSpec` (`tfrec_proxy.data.feature_spec`) and saving them with a run.

Vocabulary items without a row get all-zero features (a documented default, counted
in `ItemFeatures.missing` and warned about); table rows of ids outside the vocabulary
are counted in `ItemFeatures.extra` and ignored. numpy and pandas only.
"""

import csv
import dataclasses
import json
import pathlib
import warnings
from typing import Any, Mapping, Optional, Union

import numpy as np
import numpy.typing as npt
import pandas as pd

from tfrec_proxy.data.feature_spec import (_FORMAT, _VERSION, CALENDAR_COLUMNS,
                                           CALENDAR_DIM, FEATURE_KINDS, FeatureColumn,
                                           ItemFeatureSpec, calendar_features)
from tfrec_proxy.data.vocab import Vocabulary

__all__ = ["ARRAYS_FILE", "CALENDAR_COLUMNS", "CALENDAR_DIM", "FEATURE_KINDS", "SPEC_FILE",
           "TABLE_EXTENSIONS", "FeatureColumn", "ItemFeatureSpec", "ItemFeatures",
           "calendar_features", "item_features_for_vocab", "load_item_features",
           "read_item_table", "synthetic_item_spec", "synthetic_item_table"]

TABLE_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".pq")
SPEC_FILE, ARRAYS_FILE = "item_features.json", "item_features.npz"


@dataclasses.dataclass
class ItemFeatures:
    """Encoded features of a vocabulary's items, row = vocabulary index.

    Attributes:
        spec: the fitted spec.
        attributes: float32 `[V, attribute_dim]`; rows 0 (PAD) and 1 (OOV) are zero.
        context: float32 `[V, context_dim]`; rows 0 and 1 are zero.
        missing: vocabulary items with no table row (given all-zero features).
        extra: table rows whose id is not in the vocabulary (ignored).

    Example:
        >>> table = pd.DataFrame({"item_id": [10, 20], "genres": ["A", "A|B"]})
        >>> item_features_for_vocab(table, Vocabulary([10, 20])).attributes.tolist()
        [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    """

    spec: ItemFeatureSpec
    attributes: np.ndarray
    context: np.ndarray
    missing: int = 0
    extra: int = 0

    @property
    def attribute_dim(self) -> int:
        """`d_A`, the attribute columns."""
        return int(self.attributes.shape[1])

    @property
    def context_dim(self) -> int:
        """`d_C`, the context columns."""
        return int(self.context.shape[1])

    def save(self, folder: Union[str, pathlib.Path]) -> None:
        """Writes `folder/item_features.json` (spec, missing, extra) and `.npz` (arrays)."""
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "version": _VERSION, "spec": self.spec.to_dict(),
                "missing": int(self.missing), "extra": int(self.extra)}
        (folder / SPEC_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        np.savez_compressed(folder / ARRAYS_FILE, attributes=self.attributes,
                            context=self.context)

    @classmethod
    def load(cls, folder: Union[str, pathlib.Path]) -> "ItemFeatures":
        """Reads what `save` wrote.

        Raises:
            FileNotFoundError: a file is missing (the message names folder and file).
            ValueError: a file is corrupt or its arrays do not match the spec.
        """
        folder = pathlib.Path(folder)
        for name in (SPEC_FILE, ARRAYS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: no {name}; expected the {SPEC_FILE} and "
                                        f"{ARRAYS_FILE} written by ItemFeatures.save")
        path = folder / SPEC_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
                raise ValueError(f"expected format {_FORMAT!r} version {_VERSION}")
            spec = ItemFeatureSpec.from_dict(meta["spec"])
            missing, extra, path = int(meta["missing"]), int(meta["extra"]), folder / ARRAYS_FILE
            with np.load(path, allow_pickle=False) as arrays:
                attributes, context = arrays["attributes"], arrays["context"]
            if (attributes.shape[1:], context.shape) != (
                    (spec.attribute_dim,), (len(attributes), spec.context_dim)):
                raise ValueError(f"arrays {attributes.shape} / {context.shape} do not match "
                                 f"the spec's {spec.attribute_dim} / {spec.context_dim} dims")
        except Exception as error:  # JSON, key, zip and npy errors alike
            raise ValueError(f"{path}: malformed item features file: {error}") from error
        return cls(spec, attributes.astype(np.float32), context.astype(np.float32),
                   missing, extra)


def read_item_table(path: Union[str, pathlib.Path]) -> pd.DataFrame:
    """Reads an item table with a header row; CSV/TSV cells stay text.

    `.csv` is comma-separated (semicolon when the header has `;` and no `,`); `.tsv`
    and `.txt` are tab-separated without quoting. Both are read as strings with empty
    cells kept as `""` ("Children's" and blanks survive; the spec parses numbers).
    `.parquet` / `.pq` keep their dtypes.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: an unknown extension (the accepted ones listed) or unreadable file.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise ValueError(f"{path}: unknown item table extension {suffix!r}; expected one "
                         f"of {list(TABLE_EXTENSIONS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such item table file")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep, quoting = "\t", csv.QUOTE_NONE
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace") as handle:
                header = handle.readline()
            sep = ";" if ";" in header and "," not in header else ","
            quoting = csv.QUOTE_MINIMAL
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                           quoting=quoting, encoding_errors="replace")
    except Exception as error:  # pandas' and pyarrow's parser errors alike
        raise ValueError(f"{path}: cannot read the item table ({error}); expected a "
                         f"{suffix[1:].upper()} file with a header row") from error


def item_features_for_vocab(frame: pd.DataFrame, vocab: Vocabulary,
                            spec: Optional[ItemFeatureSpec] = None,
                            source: str = "item features") -> ItemFeatures:
    """Fits (if needed) and encodes the table's vocabulary items, row = vocab index.

    Args:
        frame: item rows; ids not in `vocab` are counted in `extra` and ignored.
        vocab: the run's item vocabulary (size V).
        spec: None -> `ItemFeatureSpec.infer(frame)`; an unfitted spec is fitted on the
            rows whose id is in `vocab`; a fitted one is used as is.
        source: where the frame came from, for messages.

    Returns:
        `ItemFeatures` with `[V, ...]` arrays. Vocabulary items without a row get
        all-zero features, are counted in `missing` and named (first few) in a warning.

    Raises:
        ValueError: no table id is in the vocabulary, or as in `fit` / `encode`.
    """
    spec = ItemFeatureSpec.infer(frame) if spec is None else spec
    ids = spec._ids(frame, source)
    indices, extra = vocab.lookup_with_unknown(ids)
    known = indices != Vocabulary.OOV
    if not known.any():
        raise ValueError(f"{source}: none of the {len(ids)} ids in column {spec.id_column!r} "
                         f"(first: {ids[:5].tolist()}) is in the item vocabulary (first: "
                         f"{vocab.ids[:5].tolist()}); expected the run's raw item ids")
    rows = frame.iloc[np.flatnonzero(known)]
    spec = spec if spec.fitted else spec.fit(rows, source)
    _, attributes, context = spec.encode(rows, source)
    out = ItemFeatures(spec, np.zeros((vocab.size, spec.attribute_dim), np.float32),
                       np.zeros((vocab.size, spec.context_dim), np.float32), extra=extra)
    out.attributes[indices[known]], out.context[indices[known]] = attributes, context
    covered = np.zeros(vocab.size, dtype=bool)
    covered[indices[known]] = True
    absent = vocab.ids[~covered[2:]]
    out.missing = len(absent)
    if out.missing:
        warnings.warn(f"{source}: {out.missing} of {len(vocab.ids)} vocabulary items have "
                      f"no row in the item table (first: {absent[:5].tolist()}); they get "
                      "all-zero attributes and context", stacklevel=2)
    return out


def load_item_features(path: Union[str, pathlib.Path], vocab: Vocabulary,
                       spec: Optional[Union[Mapping[str, Any], ItemFeatureSpec]] = None
                       ) -> ItemFeatures:
    """`read_item_table` + `item_features_for_vocab`; `spec` may also be the config
    dict form (an empty dict, like None, infers the spec)."""
    if isinstance(spec, Mapping):
        spec = ItemFeatureSpec.from_dict(spec) if spec else None
    return item_features_for_vocab(read_item_table(path), vocab, spec, source=str(path))


def synthetic_item_table(item_ids: npt.ArrayLike, attributes: npt.ArrayLike,
                         column: str = "attributes") -> pd.DataFrame:
    """A table of `item_id` (int64 `[N]`) and one dense text column of `[N, W]` floats.

    Cells join a row's values with `,` in `%.9g` (float32 round-trips), so synthetic
    attributes take the real path; `synthetic_item_spec` is the matching spec.
    """
    ids, values = np.asarray(item_ids), np.asarray(attributes, dtype=np.float64)
    if values.ndim != 2 or ids.shape != (len(values),) or not np.all(np.isfinite(values)):
        raise ValueError(f"synthetic_item_table: expected [N] ids and finite [N, W] "
                         f"attributes, got shapes {ids.shape} and {values.shape}")
    cells = [",".join("%.9g" % value for value in row) for row in values]
    return pd.DataFrame({"item_id": ids.astype(np.int64), column: cells})


def synthetic_item_spec(column: str = "attributes", width: Optional[int] = None
                        ) -> ItemFeatureSpec:
    """The unfitted spec of a `synthetic_item_table`: one dense column."""
    return ItemFeatureSpec("item_id", (FeatureColumn(column, "dense", width=width),))
