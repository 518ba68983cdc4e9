"""Raw integer id <-> contiguous index, with padding and out-of-vocabulary slots."""

import json
import pathlib
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

PAD = 0  # index of the padding slot (left-padded histories)
OOV = 1  # index that every unknown raw id maps to

_FORMAT = "tfrec_proxy.vocabulary"
_VERSION = 1


def _integer_array(values: npt.ArrayLike, name: str) -> np.ndarray:
    """`values` as a numpy array, which must hold integers (empty is allowed)."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    return array


class Vocabulary:
    """Maps raw integer ids to indices: `PAD = 0`, `OOV = 1`, known ids at 2..size-1.

    The id at position j of `ids` gets index j + 2.

    Args:
        ids: the known raw ids, unique, in index order.

    Raises:
        ValueError: `ids` is empty, not 1-D integers, or has a duplicate.
    """

    PAD = PAD
    OOV = OOV

    def __init__(self, ids: Sequence[int]) -> None:
        array = _integer_array(ids, "Vocabulary ids")
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"Vocabulary ids must be a non-empty 1-D sequence, got shape "
                             f"{array.shape}")
        self._ids = array.astype(np.int64)
        self._ids.flags.writeable = False
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted = self._ids[self._order]
        duplicates = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]]
        if duplicates.size:
            raise ValueError(f"Vocabulary ids must be unique, but id {duplicates[0]} occurs "
                             "more than once; use Vocabulary.from_ids to de-duplicate")

    @classmethod
    def from_ids(cls, ids: npt.ArrayLike) -> "Vocabulary":
        """Builds a vocabulary of the distinct raw ids, sorted ascending.

        Args:
            ids: raw integer ids, any shape, repeats allowed.
        """
        return cls(np.unique(_integer_array(ids, "ids")))

    @property
    def size(self) -> int:
        """Number of indices, PAD and OOV included: `len(ids) + 2`."""
        return len(self._ids) + 2

    @property
    def ids(self) -> np.ndarray:
        """int64 `[size - 2]` raw ids of indices 2..size-1 (read-only)."""
        return self._ids

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size})"

    def lookup_with_unknown(self, raw_ids: npt.ArrayLike) -> Tuple[np.ndarray, int]:
        """Maps raw ids to indices and counts the unknown ones.

        Args:
            raw_ids: raw integer ids, any shape.

        Returns:
            `(indices, num_unknown)`: int32 indices of the same shape (unknown ids ->
            `OOV`) and how many ids were unknown.
        """
        raw = _integer_array(raw_ids, "raw_ids")
        position = np.minimum(np.searchsorted(self._sorted, raw), len(self._sorted) - 1)
        known = self._sorted[position] == raw
        indices = np.where(known, self._order[position] + 2, OOV).astype(np.int32)
        return indices, int(known.size - np.count_nonzero(known))

    def lookup(self, raw_ids: npt.ArrayLike) -> np.ndarray:
        """Maps raw ids to int32 indices of the same shape; unknown ids -> `OOV`."""
        return self.lookup_with_unknown(raw_ids)[0]

    def raw_ids(self, indices: npt.ArrayLike) -> np.ndarray:
        """Maps indices back to int64 raw ids of the same shape.

        Raises:
            ValueError: an index is PAD, OOV or not below `size` (the message names it).
        """
        array = _integer_array(indices, "indices")
        bad = (array < 2) | (array >= self.size)
        if np.any(bad):
            index = array[bad].flat[0]
            what = {PAD: "the padding index PAD", OOV: "the out-of-vocabulary index OOV"}
            raise ValueError(f"index {index} is {what.get(int(index), 'out of range')}; "
                             f"raw_ids needs indices in 2..{self.size - 1}")
        return self._ids[array.astype(np.int64) - 2]

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready form `{"format", "version", "ids"}`."""
        return {"format": _FORMAT, "version": _VERSION, "ids": self._ids.tolist()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Vocabulary":
        """Rebuilds a vocabulary from `to_dict` output.

        Raises:
            ValueError: the dict is not a version-1 `tfrec_proxy.vocabulary`, or its ids
                are invalid.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a vocabulary: expected format {_FORMAT!r}, got {found!r}")
        if data.get("version") != _VERSION:
            raise ValueError(f"unsupported vocabulary version {data.get('version')!r}; "
                             f"expected {_VERSION}")
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("vocabulary 'ids' must be a list of integers")
        return cls(np.asarray(ids, dtype=np.int64))

    def save(self, path: Union[str, pathlib.Path]) -> None:
        """Writes the vocabulary to `path` as JSON."""
        pathlib.Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: Union[str, pathlib.Path]) -> "Vocabulary":
        """Reads a vocabulary written by `save`.

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: the file is not valid vocabulary JSON (the message names it).
        """
        path = pathlib.Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as error:  # also JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"{path}: malformed vocabulary file: {error}") from error
