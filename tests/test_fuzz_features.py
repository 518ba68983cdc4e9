"""Item attribute tables against their feature spec, tried systematically
(hypothesis): dense vectors of the wrong width, junk and non-finite tokens, numeric
cells that do not parse, unknown multi-hot categories for new items. Each table is
either encoded exactly (the dense vectors as given; numeric standardised with the
fitted mean/std; multi-hot 0/1 per fitted category) or refused with a `ValueError`
naming the source, the first bad item, the column and the value.

Run with `--hypothesis-show-statistics` to see how many tables were tried."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tfrec_proxy.data.item_features import FeatureColumn, ItemFeatureSpec
from conftest import fuzz_settings

FUZZ = fuzz_settings(200)
WIDTH = 3
tokens = st.one_of(st.floats(-1e6, 1e6, allow_nan=False).map(repr),
                   st.integers(-9, 9).map(str),
                   st.sampled_from(["", "x", "nan", "inf", "-inf", "1e999", " 2 "]))
good_vectors = st.lists(st.floats(-1e6, 1e6, allow_nan=False).map(repr), min_size=WIDTH,
                        max_size=WIDTH).map(",".join)
dense_cells = st.floats(0, 1).flatmap(  # mostly good, so later columns are reached
    lambda u: good_vectors if u < 0.85 else
    st.lists(tokens, min_size=0, max_size=WIDTH + 2).map(",".join))
numeric_cells = st.one_of(st.floats(-1e3, 1e3, allow_nan=False).map(repr),
                          st.sampled_from(["", "cheap", "nan", "inf", "3", " 4 "]))
genre_cells = st.lists(st.sampled_from(["Comedy", "Drama", "Horror", " Drama", ""]),
                       max_size=3).map("|".join)
SPEC = ItemFeatureSpec("item_id", (FeatureColumn("emb", "dense", width=WIDTH),
                                   FeatureColumn("price", "numeric"),
                                   FeatureColumn("genres", "multi_hot", separator="|")))
FITTED = SPEC.fit(pd.DataFrame({"item_id": ["1", "2"], "emb": ["0,0,0", "1,1,1"],
                                "price": ["1", "3"], "genres": ["Comedy", "Drama"]}))


def _dense_value(cell):
    try:
        vector = [float(t) for t in cell.split(",")] if cell.strip() else None
    except ValueError:
        return None
    if vector is None or len(vector) != WIDTH or not all(map(math.isfinite, vector)):
        return None
    return vector


def _numeric_value(cell):
    value = pd.to_numeric(pd.Series([cell.strip()]), errors="coerce").iloc[0]
    return float(value) if np.isfinite(value) else None


def _genres_value(cell):
    found = {t.strip() for t in cell.split("|") if t.strip()}
    if not found <= {"Comedy", "Drama"}:
        return None
    return [float("Comedy" in found), float("Drama" in found)]


@FUZZ
@given(rows=st.lists(st.tuples(dense_cells, numeric_cells, genre_cells), min_size=1,
                     max_size=6))
def test_item_tables_are_encoded_exactly_or_the_first_bad_cell_is_named(rows):
    ids = [100 + i for i in range(len(rows))]
    frame = pd.DataFrame({"item_id": [str(i) for i in ids],
                          "emb": [r[0] for r in rows], "price": [r[1] for r in rows],
                          "genres": [r[2] for r in rows]})
    parsed = [[_dense_value(d), _numeric_value(p), _genres_value(g)] for d, p, g in rows]
    # Columns are checked in spec order, each over all rows: the first bad column's
    # first bad row is the one named.
    bad = next(((column, row) for column, name in enumerate(["emb", "price", "genres"])
                for row in range(len(rows)) if parsed[row][column] is None), None)
    if bad is not None:
        column, row = bad
        name = ["emb", "price", "genres"][column]
        value = rows[row][column]
        if name == "genres":  # multi-hot errors name the unknown token itself
            value = next(t.strip() for t in value.split("|")
                         if t.strip() and t.strip() not in ("Comedy", "Drama"))
        with pytest.raises(ValueError) as error:
            FITTED.encode(frame, source="new.csv")
        assert str(error.value).startswith(f"new.csv: item {ids[row]}, column {name!r}: "
                                           f"bad value {value!r}; expected")
        event(f"refused ({name})")
        return
    out_ids, attributes, context = FITTED.encode(frame, source="new.csv")
    assert out_ids.tolist() == ids and context.shape == (len(rows), 0)
    price = FITTED.columns[1]
    expected = [d + [(p - price.mean) / price.std] + g for d, p, g in parsed]
    np.testing.assert_allclose(attributes, np.asarray(expected, np.float32), rtol=1e-6)
    event("encoded")
