"""New items in an exported run without retraining (PIR: embedded from attributes).

`add_items(run_dir, item_ids, attributes)` (also `Run.add_items` and `tfrec-proxy
add-items`) encodes the items' attributes with the run's fitted feature spec, embeds
them with the run's item tower (`item_model/`, the PIR tower with the OOV index: no
per-item parameters) and adds them to the run:

* while it is small (at most 1% of the indexed catalogue, or 1,000 items) to an
  exact "delta" segment: `added_items-<count>.npz` (ids,
  attributes, context, embeddings of every item added since training), named in
  the manifest's `added_items` record. `Run.recommend` scores the segment exactly
  with the run's scorer and merges it with the index's top k. Adding is a file write
  (milliseconds) instead of an index rebuild; see BENCHMARKS.md for the measured
  trade-off.
* beyond that, or with `rebuild=True` (or by `tfrec-proxy export`, which keeps the
  added items), into the indexes: the run is re-exported with them inside
  `candidates.npz` and both indexes.

The update is atomic: the new segment is written under a new name, then the
manifest is replaced in one rename, then the old segment is removed; a crash at any
point leaves a valid run (old or new). Ids already in the run and attributes of the
wrong shape are errors raised before anything is written.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_proxy.data.frames import integer_column
from tfrec_proxy.data.item_features import SPEC_FILE, ItemFeatures, read_item_table
from tfrec_proxy.run_format import read_arrays, read_manifest

ITEM_MODEL = "item_model"
ADDED_PREFIX = "added_items"
# `rebuild=None` rebuilds the indexes once the delta segment would exceed this share
# of the indexed catalogue (and this many items): on a 1M catalogue a ScaNN rebuild
# takes ~10 s whatever n, while each 1k delta items add ~0.85 ms per batch of 256
# queries (BENCHMARKS.md, pipelines/bench_add_items.py): at 10k (1%) the delta costs
# +25% latency and a rebuild pays off only after ~300k queries; at 100k, +230% and
# ~33k queries.
DELTA_MAX_SHARE = 0.01
DELTA_MIN_ITEMS = 1000
_LISTED = 10


@dataclasses.dataclass
class AddedItems:
    """Items added to a run since training, in the order they were added.

    Attributes:
        ids: int64 `[N]` raw item ids.
        attributes: float32 `[N, d_A]` encoded attributes.
        context: float32 `[N, d_C]` encoded context.
        embeddings: float32 `[N, d]` item-tower outputs, or None until embedded.
    """

    ids: np.ndarray
    attributes: np.ndarray
    context: np.ndarray
    embeddings: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.ids)

    def concat(self, other: "AddedItems") -> "AddedItems":
        """These items followed by `other`'s."""
        def join(a, b):
            return None if a is None or b is None else np.concatenate([a, b])

        return AddedItems(np.concatenate([self.ids, other.ids]),
                          np.concatenate([self.attributes, other.attributes]),
                          np.concatenate([self.context, other.context]),
                          join(self.embeddings, other.embeddings))

    def save(self, path: Path) -> None:
        np.savez(path, ids=self.ids, attributes=self.attributes, context=self.context,
                 embeddings=self.embeddings)

    @classmethod
    def load(cls, path: Path) -> "AddedItems":
        arrays = read_arrays(path, ["ids", "attributes", "context", "embeddings"])
        return cls(arrays["ids"], arrays["attributes"], arrays["context"],
                   arrays["embeddings"])


def added_items(run_dir: Union[str, Path], manifest: Optional[Dict[str, Any]] = None
                ) -> Optional[AddedItems]:
    """The items added to a run since training (indexed ones first), or None."""
    run_dir = Path(run_dir)
    record = (manifest or read_manifest(run_dir)).get("added_items")
    if not record:
        return None
    return AddedItems.load(run_dir / record["file"])


def added_items_for_repair(run_dir: Union[str, Path]) -> Optional[AddedItems]:
    """`added_items`, or, when the manifest is missing or broken (a folder being
    repaired by re-export), the largest `added_items-<count>.npz` present."""
    try:
        return added_items(run_dir)
    except ValueError:  # RunFormatError
        files = sorted(Path(run_dir).glob(f"{ADDED_PREFIX}-*.npz"),
                       key=lambda path: int(path.stem.rsplit("-", 1)[1]))
        return AddedItems.load(files[-1]) if files else None


def delta_segment(run_dir: Union[str, Path], manifest: Optional[Dict[str, Any]] = None
                  ) -> Optional[AddedItems]:
    """The added items not yet inside the indexes (scored exactly at query time)."""
    manifest = manifest or read_manifest(run_dir)
    added = added_items(run_dir, manifest)
    if added is None:
        return None
    indexed = int(manifest["added_items"]["indexed"])
    if indexed >= len(added):
        return None
    return AddedItems(added.ids[indexed:], added.attributes[indexed:],
                      added.context[indexed:], added.embeddings[indexed:])


def encode_new_items(run_dir: Union[str, Path], item_ids: Sequence[int],
                     attributes: Union[pd.DataFrame, np.ndarray],
                     context: Optional[np.ndarray] = None) -> AddedItems:
    """Checks and encodes new items with the run's fitted feature spec.

    Args:
        run_dir: The run folder.
        item_ids: `[N]` new raw item ids.
        attributes: A table of the spec's feature columns, one row per id in
            `item_ids` order (an id column, when present, must match), or an
            already encoded float `[N, d_A]` array.
        context: Encoded `[N, d_C]` context, with an array `attributes` whose run
            has context (a table carries it in its timestamp columns).

    Raises:
        ValueError: ids that are not unique integers or already in the run, a bad
            table (the message names the item and column), or arrays of the wrong
            shape or with non-finite values. Nothing is written.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if ITEM_MODEL not in {name.split("/")[0] for name in manifest["files"]} \
            or not (run_dir / SPEC_FILE).exists():
        raise ValueError(f"Run {str(run_dir)!r} cannot embed new items: its item tower "
                         f"({manifest.get('item_tower', 'id')!r}) has no attribute input or "
                         "the run has no item features; train with --item-tower pir and "
                         "--item-features (or synthetic --attribute-dim).")
    spec = ItemFeatures.load(run_dir).spec
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or len(ids) == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"item_ids must be a non-empty 1-D sequence of integers, got "
                         f"{np.asarray(item_ids)!r:.200}.")
    ids = ids.astype(np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"item_ids repeat: {unique[counts > 1][:_LISTED].tolist()}.")
    _check_new(run_dir, manifest, ids)
    if isinstance(attributes, pd.DataFrame):
        frame = attributes.reset_index(drop=True)
        if spec.id_column in frame.columns:
            given = pd.to_numeric(frame[spec.id_column], errors="coerce").to_numpy()
            if len(given) != len(ids) or not np.array_equal(given, ids):
                raise ValueError(f"The table's {spec.id_column!r} column does not match "
                                 "item_ids (same ids in the same order expected).")
        else:
            frame = frame.assign(**{spec.id_column: ids})
        if len(frame) != len(ids):
            raise ValueError(f"attributes has {len(frame)} rows for {len(ids)} item ids.")
        _, encoded, encoded_context = spec.encode(frame, source="new items")
        if context is not None:
            raise ValueError("context is read from the table's timestamp columns; pass "
                             "context only with an encoded attribute array.")
        context = encoded_context
    else:
        encoded = _array("attributes", attributes, len(ids), spec.attribute_dim)
        if context is None and spec.context_dim:
            raise ValueError(f"This run's items have {spec.context_dim} context features; "
                             "pass context (an encoded [N, d_C] array) too.")
        context = np.zeros((len(ids), 0), np.float32) if context is None else context
    context = _array("context", context, len(ids), spec.context_dim)
    return AddedItems(ids, encoded.astype(np.float32), context)


def _array(name: str, values: Any, rows: int, width: int) -> np.ndarray:
    array = np.asarray(values, np.float32)
    if array.shape != (rows, width):
        raise ValueError(f"{name} must have shape ({rows}, {width}) (one row per new item, "
                         f"the run's {name} width); got {array.shape}.")
    if not np.all(np.isfinite(array)):
        row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{name} row {row} holds NaN or infinite values.")
    return array


def _check_new(run_dir: Path, manifest: Dict[str, Any], ids: np.ndarray) -> None:
    with np.load(run_dir / "candidates.npz") as candidates:
        present = [candidates["ids"]]
    delta = delta_segment(run_dir, manifest)
    if delta is not None:
        present.append(delta.ids)
    taken = ids[np.isin(ids, np.concatenate(present))]
    if len(taken):
        raise ValueError(f"item ids already in run {str(run_dir)!r}: "
                         f"{taken[:_LISTED].tolist()}"
                         f"{' ...' if len(taken) > _LISTED else ''}; nothing was added.")


def embed_new_items(run_dir: Union[str, Path], items: AddedItems,
                    batch_size: int = 8192) -> AddedItems:
    """`items` with their embeddings from the run's `item_model/` SavedModel."""
    from tfrec_proxy._tf import tf

    serve = tf.saved_model.load(str(Path(run_dir) / ITEM_MODEL)).signatures["serving_default"]
    vectors = [serve(attributes=tf.constant(items.attributes[start:start + batch_size]),
                     context=tf.constant(items.context[start:start + batch_size]))
               ["embedding"].numpy() for start in range(0, len(items), batch_size)]
    return dataclasses.replace(items, embeddings=np.concatenate(vectors).astype(np.float32))


def add_items(run_dir: Union[str, Path], item_ids: Sequence[int],
              attributes: Union[pd.DataFrame, np.ndarray],
              context: Optional[np.ndarray] = None, *, rebuild: Optional[bool] = None
              ) -> Dict[str, Any]:
    """Adds items never seen in training to an exported run.

    Args:
        run_dir: The run folder (trained with an attribute-aware item tower).
        item_ids, attributes, context: As in `encode_new_items`.
        rebuild: True: re-export the run with every added item inside the indexes
            (seconds to minutes on large catalogues); False: keep them in the exact
            delta segment (a file write); None: the delta while it holds at most
            `DELTA_MAX_SHARE` of the indexed catalogue or `DELTA_MIN_ITEMS` items,
            else rebuild.

    Returns:
        `{"added": n, "items_added": total since training, "indexed": of those, in
        the indexes, "delta": in the exact segment}`.

    Raises:
        ValueError: see `encode_new_items`; the run is unchanged.
    """
    run_dir = Path(run_dir)
    new = embed_new_items(run_dir, encode_new_items(run_dir, item_ids, attributes, context))
    manifest = read_manifest(run_dir)
    old = added_items(run_dir, manifest)
    indexed = int(manifest["added_items"]["indexed"]) if old is not None else 0
    everything = new if old is None else old.concat(new)
    if rebuild is None:
        indexed_catalogue = manifest["num_candidates"]
        delta = len(everything) - indexed
        rebuild = delta > max(DELTA_MIN_ITEMS, DELTA_MAX_SHARE * indexed_catalogue)
    if rebuild:
        from tfrec_proxy.export import reexport_run  # imports TensorFlow and training

        reexport_run(run_dir, added=everything)
    else:
        name = f"{ADDED_PREFIX}-{len(everything)}.npz"
        everything.save(run_dir / name)
        record = {"file": name, "count": len(everything), "indexed": indexed}
        files = [f for f in manifest["files"] if not f.startswith(ADDED_PREFIX)] + [name]
        updated = dict(manifest, added_items=record, files=sorted(files))
        if isinstance(manifest.get("file_sizes"), dict):
            updated["file_sizes"] = {**{f: size for f, size in manifest["file_sizes"].items()
                                        if not f.startswith(ADDED_PREFIX)},
                                     name: (run_dir / name).stat().st_size}
        _replace_manifest(run_dir, updated)
        old_name = (manifest.get("added_items") or {}).get("file")
        if old_name and old_name != name:
            (run_dir / old_name).unlink(missing_ok=True)
    record = read_manifest(run_dir)["added_items"]
    return {"added": len(new), "items_added": record["count"], "indexed": record["indexed"],
            "delta": record["count"] - record["indexed"]}


def _replace_manifest(run_dir: Path, manifest: Dict[str, Any]) -> None:
    staging = run_dir / ".manifest.json.tmp"
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(staging, 0o644)
    os.replace(staging, run_dir / "manifest.json")  # atomic on POSIX




def read_new_items(run_dir: Union[str, Path], path: Union[str, Path]
                   ) -> Tuple[np.ndarray, pd.DataFrame]:
    """A table of new items (CSV/TSV/Parquet) with the run's id and feature columns.

    Returns:
        `(ids, table)`: the int64 `[N]` ids of the id column and the table, as
        `add_items` takes them.

    Raises:
        ValueError: the run has no item features, or the table lacks the id
            column or holds a bad id (named with its row).
    """
    if not (Path(run_dir) / SPEC_FILE).exists():
        raise ValueError(f"Run {str(run_dir)!r} has no item features ({SPEC_FILE}); only "
                         "runs trained with item attributes can add items.")
    spec = ItemFeatures.load(Path(run_dir)).spec
    frame = read_item_table(path)
    if spec.id_column not in frame.columns:
        raise ValueError(f"{path}: no id column {spec.id_column!r}; expected the "
                         f"columns of the run's item table ({spec.id_column!r} and "
                         f"{[c.name for c in spec.columns]}).")
    ids = integer_column(frame[spec.id_column], spec.id_column, str(path),
                         " (0-based data row)")
    return np.asarray(ids, np.int64), frame
