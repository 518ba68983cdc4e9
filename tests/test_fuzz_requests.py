"""The REST server's request parser (`tfrec_proxy.server.protocol`), tried
systematically with hypothesis: arbitrary bytes, arbitrary JSON, and near-valid
`:predict` (row and columnar) and `:recommend` bodies with wrong types, NaN-like and
out-of-range ids, bad k, unknown fields, empty and oversized batches, bad context
features. Every body either parses to a query that obeys the documented rules (the
ids as given, padding dropped, the last `max_len` kept; `1 <= k <= max_k`; at most
`max_rows` histories; context arrays of the signature's dtype and shape), or is
refused with a 4xx `RequestError` naming the field; nothing else escapes.

Run with `--hypothesis-show-statistics` to see how many inputs were tried."""

import json
import math
import re

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tfrec_proxy.server.protocol import (InputSpec, ModelInputs, Query, RequestError,
                                         parse_json, parse_predict, parse_recommend)
from conftest import fuzz_settings

FUZZ = fuzz_settings(500)
MAX_K, MAX_LEN, MAX_ROWS = 20, 4, 5
INT64 = np.iinfo(np.int64)
UNKNOWN = 999  # the stub vocabulary's one unknown id (strict / exclude_seen checks)
# Field names an error may lead with (the message must name what is wrong).
FIELDS = re.compile(r"(instances|inputs|history|\bk\b|signature_name|the request|index|"
                    r"exclude_seen|strict|user_id|malformed JSON|request body)")


def _check(histories, k, exclude_seen=False, strict=False):
    """`Run.check_histories` of a run whose vocabulary lacks only `UNKNOWN`."""
    from tfrec_proxy.history_input import HistoryError, _as_batch

    batch = _as_batch(histories)
    if strict:
        for row, history in enumerate(batch):
            if UNKNOWN in history:
                raise HistoryError(row, f"item id {UNKNOWN} is not in the vocabulary.")


def _model(context: bool) -> ModelInputs:
    specs = {"user_id": InputSpec(np.dtype(np.int64))} if context else {}
    return ModelInputs(max_k=MAX_K, indexes=["scann", "brute_force"], context=specs,
                       max_len=MAX_LEN, check=_check)


def mostly(valid, invalid, share=0.8):
    """`valid` with probability ~`share`, else `invalid` (so that both paths, parse
    and refusal, are tried often)."""
    return st.floats(0, 1).flatmap(lambda u: valid if u < share else invalid)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=4))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
item_ids = mostly(st.one_of(st.integers(-1, 30), st.just(UNKNOWN), st.just(3.0)), st.one_of(
    st.integers(-3, -2), st.integers(INT64.max - 1, INT64.max + 2),
    st.integers(INT64.min - 2, INT64.min + 1), st.booleans(),
    st.sampled_from([2.5, -1.0, 1e30]), st.text(max_size=2), st.none()), share=0.95)
histories = mostly(st.lists(item_ids, min_size=1, max_size=7),
                   st.one_of(st.just([]), st.just([-1, -1]), json_values))
ks = mostly(st.integers(1, MAX_K), st.one_of(
    st.integers(-2, 0), st.integers(MAX_K + 1, MAX_K + 3), st.booleans(),
    st.sampled_from([5.0, "5"]), st.lists(st.integers(1, 3), max_size=2), st.none()))
users = mostly(st.integers(-2, 10**6), st.one_of(
    st.integers(INT64.max, INT64.max + 1), st.sampled_from([1.5, "u", True, [1], [[2]]]),
    st.none()))
instances = mostly(st.one_of(
    st.lists(item_ids, min_size=1, max_size=7),
    st.fixed_dictionaries({"history": histories}, optional={"k": ks, "user_id": users})),
    st.one_of(
        st.fixed_dictionaries({"history": histories, "extra": json_values}),
        st.dictionaries(st.sampled_from(["k", "user_id", "hist"]), json_values, max_size=2),
        json_values), share=0.9)
signatures = mostly(st.sampled_from(["serving_default", "scann", "brute_force"]),
                    st.sampled_from(["nope", 3, None]))
row_bodies = mostly(
    st.fixed_dictionaries({"instances": st.lists(instances, min_size=1, max_size=MAX_ROWS)},
                          optional={"signature_name": signatures}),
    st.fixed_dictionaries(
        {"instances": st.one_of(st.lists(instances, max_size=MAX_ROWS + 2), json_values)},
        optional={"signature_name": signatures, "inputs": json_values}))
column_inputs = st.fixed_dictionaries(
    {"history": mostly(st.lists(st.lists(item_ids, min_size=1, max_size=6), min_size=1,
                                max_size=MAX_ROWS),
                       st.one_of(st.lists(st.lists(item_ids, max_size=6),
                                          max_size=MAX_ROWS + 2), histories))},
    optional={"k": ks, "user_id": mostly(st.lists(users, min_size=1, max_size=MAX_ROWS),
                                         users, share=0.5)})
column_bodies = st.fixed_dictionaries({"inputs": mostly(st.one_of(
    column_inputs, st.lists(st.lists(item_ids, min_size=1, max_size=5), min_size=1,
                            max_size=3)),
    st.one_of(column_inputs.map(lambda d: {**d, "other": 1}), json_values))},
    optional={"signature_name": signatures})
recommend_bodies = mostly(
    st.fixed_dictionaries({"history": histories}, optional={
        "k": ks, "index": st.sampled_from(["scann", "brute_force"]),
        "exclude_seen": st.booleans(), "strict": st.booleans(), "user_id": users}),
    st.fixed_dictionaries({"history": histories}, optional={
        "k": ks, "index": st.sampled_from(["scann", "ivf", None]),
        "exclude_seen": json_scalars, "strict": json_scalars, "junk": json_values}))


def _valid_id(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and \
            INT64.min <= int(value) <= INT64.max
    return isinstance(value, int) and INT64.min <= value <= INT64.max


def _expected_history(history, max_len):
    """The documented rule: None if refused, else the ids kept."""
    if not isinstance(history, list) or not history or not all(map(_valid_id, history)):
        return None
    ids = [int(v) for v in history if v != -1]
    if not ids:
        return None
    return ids[-max_len:] if max_len else ids


def _assert_refusal(error: RequestError):
    assert 400 <= error.status < 500
    assert FIELDS.search(error.message), error.message
    event(f"refused ({FIELDS.search(error.message).group(1)})")


def _assert_query(query: Query, model: ModelInputs, raw_histories, max_len=MAX_LEN):
    event("accepted")
    assert isinstance(query, Query) and 1 <= query.rows <= MAX_ROWS
    assert len(query.ks) == query.rows and all(1 <= k <= MAX_K for k in query.ks)
    assert all(type(k) is int for k in query.ks)
    assert query.index in model.indexes
    for history, raw in zip(query.histories, raw_histories):
        assert history == _expected_history(raw, max_len)
        assert all(type(v) is int for v in history)
    for name, spec in model.context.items():
        assert query.context[name].shape == (query.rows,)
        assert query.context[name].dtype == spec.dtype


@FUZZ
@given(body=st.one_of(st.binary(max_size=40),
                      json_values.map(lambda v: json.dumps(v).encode()),
                      st.sampled_from([b"[" * 50_000, b'{"a": NaN}', b"Infinity", b"  ",
                                       b'{"instances": [[1, 2]]}'])))
def test_any_bytes_parse_to_an_object_or_a_named_refusal(body):
    try:
        value = parse_json(body)
    except RequestError as error:
        _assert_refusal(error)
        return
    event("accepted")
    assert isinstance(value, dict)


def _predict_or_refusal(body, model):
    """`parse_predict`'s `(query, format)`, or None after checking its refusal."""
    try:
        return parse_predict(body, model, MAX_ROWS)
    except RequestError as error:
        _assert_refusal(error)
        return None


@FUZZ
@given(body=row_bodies, context=st.booleans())
def test_row_format_bodies(body, context):
    model = _model(context)
    parsed = _predict_or_refusal(body, model)
    if parsed is None:
        return
    query, kind = parsed
    assert kind == "row"
    raw = [row if isinstance(row, list) else row["history"] for row in body["instances"]]
    _assert_query(query, model, raw)


@FUZZ
@given(body=column_bodies, context=st.booleans())
def test_columnar_format_bodies(body, context):
    model = _model(context)
    parsed = _predict_or_refusal(body, model)
    if parsed is None:
        return
    query, kind = parsed
    assert kind == "columnar"
    inputs = body["inputs"]
    raw = inputs if isinstance(inputs, list) else inputs["history"]
    if raw and not isinstance(raw[0], list):
        raw = [raw]
    _assert_query(query, model, raw)
    assert len(set(query.ks)) == 1


@FUZZ
@given(body=recommend_bodies, context=st.booleans())
def test_recommend_bodies(body, context):
    model = _model(context)
    try:
        query = parse_recommend(body, model)
    except RequestError as error:
        _assert_refusal(error)
        return
    exclude = body.get("exclude_seen", False)
    _assert_query(query, model, [body["history"]], max_len=None if exclude else MAX_LEN)
    assert query.rows == 1 and query.exclude_seen is exclude
    if body.get("strict"):
        assert UNKNOWN not in body["history"]


def test_the_fuzzed_rules_hold_on_hand_picked_bodies():
    """The strategies above reach these; pinned here so the rules cannot drift."""
    model = _model(context=True)
    query, _ = parse_predict({"instances": [{"history": [-1, 3.0, 4, 5, 6, 7], "k": 3,
                                             "user_id": 12}]}, model, MAX_ROWS)
    assert query.histories == [[4, 5, 6, 7]] and query.ks == [3]
    assert query.context["user_id"].tolist() == [12]
    for body, message in [
            ({"instances": [[True]]}, r"instances\[0\].history: .*boolean"),
            ({"instances": [[1]] * (MAX_ROWS + 1)}, "more than this server's max batch"),
            ({"inputs": {"history": [[1]], "k": MAX_K + 1}}, r"inputs.k: k=21 is out of"),
            ({"instances": [{"history": [1], "user_id": "u"}]}, r"user_id must be of type"),
            ({"instances": [{"history": [1], "colour": 1}]}, "colour")]:
        with pytest.raises(RequestError, match=message):
            parse_predict(body, model, MAX_ROWS)
    with pytest.raises(RequestError, match="history"):
        parse_recommend({"history": [UNKNOWN], "strict": True}, model)
