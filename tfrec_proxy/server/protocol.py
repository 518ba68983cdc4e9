"""TF Serving's REST request and response formats for a run's retrieval signature.

Parsing turns a JSON body into a checked `Query` (or raises `RequestError` naming the
bad field); formatting turns results into TF Serving's `predictions` (row format) or
`outputs` (columnar) JSON, and the `:recommend` route's `items`/`scores`. Everything
here is numpy and the standard library: the model is described by a `ModelInputs`.

Histories are checked with the same rules as `Run.recommend` (`HistoryError` names the
history at fault) and then shortened to the ids the query tower reads: padding (-1)
dropped, the most recent `max_len` ids kept. The exported query model does exactly
this itself (it packs each history's non-padding ids and keeps the last `max_len`), so
results are unchanged while batches of long histories stay small.
"""

import dataclasses
import json
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfrec_proxy.history_input import HistoryError, _as_batch
from tfrec_proxy.run_format import PAD_ID

DEFAULT_K = 10
SERVING_DEFAULT = "serving_default"
# Context features a request may leave out, and the value they then get. A run with
# a user embedding (RAM, ProxySR's eq. 10) gives unknown users (and no user) u = 0.
CONTEXT_DEFAULTS: Dict[str, Any] = {"user_id": -1}
_FLAT_TYPES = (list, dict)


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status (4xx) to answer with.

    Example:

        raise RequestError("instances[2].k: k=500 exceeds max_k=20", status=400)
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One per-row context input of the retrieval signature.

    Attributes:
        dtype: Numpy dtype the signature takes (e.g. int64).
        shape: Shape of one row, `()` for one value per history; None = any size.
    """

    dtype: np.dtype
    shape: Tuple[Optional[int], ...] = ()


class ModelInputs:
    """What request parsing needs to know about a served run.

    Args:
        max_k: Largest k a request may ask for (export's max_k, at most the catalogue).
        indexes: The run's retrieval indexes, best first; the first serves
            `serving_default`, each is also a signature of its own name.
        context: The context inputs besides `history` and `k`, by name.
        max_len: History length the query tower reads (None: keep whole histories).
        check: `Run.check_histories(histories, k, exclude_seen=, strict=)`: raises
            `ValueError`/`HistoryError` for a history the run would refuse.

    Example:

        inputs = ModelInputs(max_k=20, indexes=["scann", "brute_force"], context={},
                             max_len=10, check=run.check_histories)
        query = parse_predict({"inputs": {"history": [[3, 17]], "k": 5}}, inputs, 64)
    """

    def __init__(self, max_k: int, indexes: Sequence[str], context: Mapping[str, InputSpec],
                 max_len: Optional[int], check: Callable[..., Any]) -> None:
        self.max_k = int(max_k)
        self.indexes = list(indexes)
        self.context = dict(context)
        self.max_len = max_len
        self.check = check

    @property
    def signature_names(self) -> List[str]:
        return [SERVING_DEFAULT, *self.indexes]

    def index_of(self, signature: str) -> str:
        return self.indexes[0] if signature == SERVING_DEFAULT else signature


@dataclasses.dataclass
class Query:
    """A checked request: histories (shortened), one k per history, context arrays.

    Attributes:
        histories: Raw-id histories, padding dropped, at most `max_len` ids each.
        ks: The k of each history.
        context: Feature name -> `[rows, ...]` array in the signature's dtype.
        index: Retrieval index name.
        exclude_seen: Drop each history's own items from its results.
    """

    histories: List[List[int]]
    ks: List[int]
    context: Dict[str, np.ndarray]
    index: str
    exclude_seen: bool = False

    @property
    def rows(self) -> int:
        return len(self.histories)

    def batch_key(self) -> Tuple[str, bool, Optional[int]]:
        """Queries with equal keys may run in one call. Exclusions fetch k + seen
        items, so they only share a call with queries of the same k."""
        return (self.index, self.exclude_seen, self.ks[0] if self.exclude_seen else None)


def parse_json(body: bytes) -> Dict[str, Any]:
    """The request body as a JSON object; NaN/Infinity and deep nesting refused."""
    if not body.strip():
        raise RequestError("the request body is empty; expected a JSON object.")
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError(f"malformed JSON: {error}") from None
    if not isinstance(value, dict):
        raise RequestError(f"the request body must be a JSON object, got "
                           f"{type(value).__name__}.")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _check_fields(body: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown} in {where}; expected fields "
                           f"among {sorted(allowed)}.")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{field} must be an integer, got {json.dumps(value)[:80]}.")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{field} must be true or false, got {json.dumps(value)[:80]}.")
    return value


def parse_k(value: Any, field: str, model: ModelInputs) -> int:
    """A k in `1..max_k`; the error names `field`."""
    k = _int(value, field)
    if not 1 <= k <= model.max_k:
        raise RequestError(f"{field}: k={k} is out of range; this run serves "
                           f"1 <= k <= {model.max_k} (max_k fixed at export, at most the "
                           "catalogue size).")
    return k


def _history(value: Any, field: str) -> List[Any]:
    if not isinstance(value, list):
        raise RequestError(f"{field} must be a list of item ids, got "
                           f"{json.dumps(value)[:80]}.")
    return value


def _check_histories(model: ModelInputs, histories: List[List[Any]], k: int, field: str,
                     exclude_seen: bool, strict: bool, rows: Callable[[int], str]) -> None:
    """Runs the run's own checks; errors name `field` or the history's own field.

    Without `strict` or `exclude_seen` the vocabulary plays no part: only the ids are
    checked (the same `_as_batch` checks the run applies), which is cheaper.
    """
    try:
        if strict or exclude_seen:
            model.check(histories, k, exclude_seen=exclude_seen, strict=strict)
        else:
            _as_batch(histories)
    except HistoryError as error:
        raise RequestError(f"{rows(error.row)}: {error.detail}") from None
    except ValueError as error:
        raise RequestError(f"{field}: {error}") from None


def _shorten(history: List[Any], max_len: Optional[int]) -> List[int]:
    # The ids passed `_as_batch` (ints, or integral floats such as 3.0): as ints.
    ids = [int(item) for item in history if item != PAD_ID]
    return ids[-max_len:] if max_len else ids


def _context_row(value: Any, spec: InputSpec, field: str) -> np.ndarray:
    """One history's value of a context feature, checked and cast."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise RequestError(f"{field} is not a regular array.") from None
    kind = np.dtype(spec.dtype).kind
    accepted = {"i": "iu", "u": "iu", "f": "iuf", "b": "b", "U": "U", "S": "U", "O": "U"}
    if array.dtype.kind not in accepted.get(kind, kind):
        raise RequestError(f"{field} must be of type {np.dtype(spec.dtype).name}, got "
                           f"{json.dumps(value)[:80]}.")
    if len(array.shape) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, array.shape)):
        raise RequestError(f"{field} must have shape {list(spec.shape)} per history, got "
                           f"{list(array.shape)}.")
    if kind in "iu" and array.size:
        info = np.iinfo(spec.dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise RequestError(f"{field} is outside the {np.dtype(spec.dtype).name} range.")
    if kind in "SO":
        return np.asarray(array.astype(str), dtype=object)
    return array.astype(spec.dtype)


def _context(model: ModelInputs, values: Mapping[str, Any], rows: int,
             field: Callable[[str], str], per_row: bool) -> Dict[str, np.ndarray]:
    """Context arrays `[rows, ...]`; `per_row`: `values[name]` is one history's value
    (else a list of `rows` values)."""
    context = {}
    for name, spec in model.context.items():
        if name not in values:
            if name not in CONTEXT_DEFAULTS:
                raise RequestError(f"missing input {field(name)!r}: this run's query tower "
                                   f"reads {sorted(model.context)}.")
            context[name] = np.full((rows, *[1 for _ in spec.shape]),
                                    CONTEXT_DEFAULTS[name], spec.dtype)
            continue
        value = values[name]
        if per_row:
            context[name] = _context_row(value, spec, field(name))[None]
            continue
        if not isinstance(value, list) or len(value) != rows:
            raise RequestError(f"{field(name)} must be a list with one value per history "
                               f"({rows}), got {json.dumps(value)[:80]}.")
        context[name] = np.stack([_context_row(item, spec, f"{field(name)}[{row}]")
                                  for row, item in enumerate(value)])
    return context


def _rows_limit(rows: int, max_rows: int, field: str) -> None:
    if rows == 0:
        raise RequestError(f"{field} is empty; expected at least one history.")
    if rows > max_rows:
        raise RequestError(f"{field} holds {rows} histories, more than this server's "
                           f"max batch size {max_rows}; split the request.")


def parse_predict(body: Mapping[str, Any], model: ModelInputs, max_rows: int
                  ) -> Tuple[Query, str]:
    """A `:predict` body (TF Serving row or columnar format) -> `(Query, format)`.

    Row format: `{"instances": [{"history": [3, 17], "k": 10, ...context}, ...]}` (an
    instance may also be a bare history list); columnar: `{"inputs": {"history":
    [[3, 17], [5]], "k": 10, ...context lists}}` (or `{"inputs": [[3, 17]]}`). k
    defaults to `min(10, max_k)`; `signature_name` is `serving_default` or an index.

    Returns:
        The query and `"row"` or `"columnar"`.

    Raises:
        RequestError: a bad field, named in the message.
    """
    _check_fields(body, ["signature_name", "instances", "inputs"], "the request")
    signature = body.get("signature_name", SERVING_DEFAULT)
    if signature not in model.signature_names:
        raise RequestError(f"signature_name {json.dumps(signature)[:80]} is not a signature "
                           f"of this model; expected one of {model.signature_names}.")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("the request needs exactly one of 'instances' (row format) or "
                           "'inputs' (columnar format).")
    index = model.index_of(signature)
    if "instances" in body:
        return _parse_rows(body["instances"], model, max_rows, index), "row"
    return _parse_columns(body["inputs"], model, max_rows, index), "columnar"


def _default_k(model: ModelInputs) -> int:
    return min(DEFAULT_K, model.max_k)


def _parse_rows(instances: Any, model: ModelInputs, max_rows: int, index: str) -> Query:
    if not isinstance(instances, list):
        raise RequestError("instances must be a list of instances (objects with a "
                           "'history' list, or bare history lists).")
    _rows_limit(len(instances), max_rows, "instances")
    histories, ks, contexts = [], [], []
    for row, instance in enumerate(instances):
        field = f"instances[{row}]"
        if isinstance(instance, list):
            instance = {"history": instance}
        if not isinstance(instance, dict):
            raise RequestError(f"{field} must be an object with a 'history' list (or a "
                               f"bare history list), got {json.dumps(instance)[:80]}.")
        _check_fields(instance, ["history", "k", *model.context], field)
        if "history" not in instance:
            raise RequestError(f"{field} has no 'history' (a list of item ids).")
        history = _history(instance["history"], f"{field}.history")
        k = parse_k(instance.get("k", _default_k(model)), f"{field}.k", model)
        _check_histories(model, [history], k, f"{field}.history", False, False,
                         lambda _, field=field: f"{field}.history")
        histories.append(_shorten(history, model.max_len))
        ks.append(k)
        contexts.append(_context(model, instance, 1, lambda name, field=field:
                                 f"{field}.{name}", per_row=True))
    context = {name: np.concatenate([c[name] for c in contexts]) for name in model.context}
    return Query(histories, ks, context, index)


def _parse_columns(inputs: Any, model: ModelInputs, max_rows: int, index: str) -> Query:
    if isinstance(inputs, list):
        inputs = {"history": inputs}
    if not isinstance(inputs, dict):
        raise RequestError("inputs must be an object of named inputs ({'history': [[...]], "
                           "'k': 10}) or a list of histories.")
    _check_fields(inputs, ["history", "k", *model.context], "inputs")
    if "history" not in inputs:
        raise RequestError("inputs has no 'history' (a list of histories).")
    histories = _history(inputs["history"], "inputs.history")
    nested = [isinstance(history, list) for history in histories]
    if histories and not any(nested):
        histories = [histories]  # one history
    elif not all(nested):
        raise RequestError("inputs.history must be a list of histories (lists of item ids), "
                           "or one history.")
    _rows_limit(len(histories), max_rows, "inputs.history")
    k = inputs.get("k", _default_k(model))
    if isinstance(k, list):
        raise RequestError("inputs.k must be one integer for the whole request (a scalar "
                           "input), got a list.")
    k = parse_k(k, "inputs.k", model)
    _check_histories(model, histories, k, "inputs.history", False, False,
                     lambda row: f"inputs.history[{row}]")
    context = _context(model, inputs, len(histories), lambda name: f"inputs.{name}",
                       per_row=False)
    return Query([_shorten(h, model.max_len) for h in histories], [k] * len(histories),
                 context, index)


def parse_recommend(body: Mapping[str, Any], model: ModelInputs) -> Query:
    """A `:recommend` body -> `Query` of one history.

    `{"history": [3, 17, 42], "k": 10}` plus optional `index` (`"scann"`,
    `"brute_force"`), `exclude_seen`, `strict` (unknown ids are errors) and the run's
    context features (e.g. `"user_id": 12`).

    Raises:
        RequestError: a bad field, named in the message.
    """
    _check_fields(body, ["history", "k", "index", "exclude_seen", "strict", *model.context],
                  "the request")
    if "history" not in body:
        raise RequestError("the request has no 'history' (a list of item ids).")
    history = _history(body["history"], "history")
    k = parse_k(body.get("k", _default_k(model)), "k", model)
    index = body.get("index", model.indexes[0])
    if index not in model.indexes:
        raise RequestError(f"index {json.dumps(index)[:80]} is not an index of this run; "
                           f"it has {model.indexes}.")
    exclude_seen = _bool(body.get("exclude_seen", False), "exclude_seen")
    strict = _bool(body.get("strict", False), "strict")
    _check_histories(model, [history], k, "history", exclude_seen, strict,
                     lambda _: "history")
    # Exclusions need every item of the history, not only the last max_len.
    kept = _shorten(history, None if exclude_seen else model.max_len)
    context = _context(model, body, 1, lambda name: name, per_row=True)
    return Query([kept], [k], context, index, exclude_seen)


def _finite(scores: np.ndarray) -> List[Optional[float]]:
    """JSON has no infinities: scores of missing results (-inf) become null."""
    return [value if math.isfinite(value) else None for value in scores.tolist()]


def format_predict(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], kind: str
                   ) -> Dict[str, Any]:
    """Per-history results -> `{"predictions": [...]}` or `{"outputs": {...}}`."""
    if kind == "row":
        return {"predictions": [{"ids": row_ids.tolist(), "scores": _finite(row_scores)}
                                for row_ids, row_scores in zip(ids, scores)]}
    return {"outputs": {"ids": [row.tolist() for row in ids],
                        "scores": [_finite(row) for row in scores]}}


def format_recommend(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray]
                     ) -> Dict[str, Any]:
    """One history's results -> `{"items": [...], "scores": [...]}`."""
    return {"items": ids[0].tolist(), "scores": _finite(scores[0])}
