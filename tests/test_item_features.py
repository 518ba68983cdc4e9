"""Item attribute / context features: specs, encoding, vocabulary alignment, files."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data.item_features import (CALENDAR_DIM, FEATURE_KINDS, FeatureColumn,
                                            ItemFeatures, ItemFeatureSpec,
                                            calendar_features, item_features_for_vocab,
                                            load_item_features, read_item_table,
                                            synthetic_item_spec, synthetic_item_table)
from tfrec_proxy.data.vocab import Vocabulary

ML1M_ITEMS = (pathlib.Path(__file__).resolve().parents[2]
              / "shared/data/ml-1m/ml-1m.txt.items.tsv")
TAU = 2 * math.pi

CONFIG = {"id_column": "item_id", "columns": {
    "genres": {"kind": "multi_hot", "separator": "|"}, "price": {"kind": "numeric"},
    "emb": {"kind": "dense", "width": 2}, "released": {"kind": "timestamp"}}}


def _table(**overrides) -> pd.DataFrame:
    """Three items with every kind of column (all cells text, as read from a CSV)."""
    columns = {"item_id": ["10", "20", "30"], "genres": ["Comedy|Drama", "", "Drama"],
               "price": ["1", "2", "3"], "emb": ["0.5,1", "-1,2", "0,0"],
               "released": ["0", "953127900", "-1"]}
    columns.update(overrides)
    return pd.DataFrame(columns)


def _fitted() -> ItemFeatureSpec:
    return ItemFeatureSpec.from_dict(CONFIG).fit(_table())


# --- calendar features -------------------------------------------------------------

def test_calendar_features_of_the_epoch():
    # 1970-01-01 00:00 UTC: a Thursday (weekday 3, Monday = 0), January (month 0), hour 0.
    np.testing.assert_allclose(
        calendar_features([0]),
        [[-3.0, 0.0, 1.0, math.sin(TAU * 3 / 7), math.cos(TAU * 3 / 7), 0.0, 1.0]],
        atol=1e-6)


def test_calendar_features_by_hand():
    # 2000-03-15 13:45 UTC = (30 * 365 + 7 leap days + 31 + 29 + 14) days = 11031 days
    # + 13 h 45 min -> 953127900 s; a Wednesday (weekday 2), March (month 2).
    # -1 s is 1969-12-31 23:59:59, also a Wednesday, December (11), hour 23.
    out = calendar_features(np.array([953127900, -1]))
    assert out.dtype == np.float32 and out.shape == (2, CALENDAR_DIM)
    np.testing.assert_allclose(out, [
        [0.0, math.sqrt(3) / 2, 0.5, math.sin(TAU * 2 / 7), math.cos(TAU * 2 / 7),
         math.sin(TAU * 13 / 24), math.cos(TAU * 13 / 24)],
        [-3.1, -0.5, math.sqrt(3) / 2, math.sin(TAU * 2 / 7), math.cos(TAU * 2 / 7),
         math.sin(TAU * 23 / 24), math.cos(TAU * 23 / 24)]], atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.6e15])
def test_calendar_features_rejects_non_seconds(bad):
    with pytest.raises(ValueError, match="position 1 is not a finite number of seconds"):
        calendar_features([0, bad])


# --- encoding ----------------------------------------------------------------------

def test_encode_lays_out_every_kind():
    spec = _fitted()
    assert spec.fitted and spec.columns[0].categories == ("Comedy", "Drama")
    assert (spec.attribute_dim, spec.context_dim) == (2 + 1 + 2, CALENDAR_DIM)
    ids, attributes, context = spec.encode(_table())
    np.testing.assert_array_equal(ids, [10, 20, 30])
    assert ids.dtype == np.int64 and attributes.dtype == context.dtype == np.float32
    z = 1 / math.sqrt(2 / 3)  # (x - 2) / std([1, 2, 3])
    np.testing.assert_allclose(attributes, [[1, 1, -z, 0.5, 1], [0, 0, 0, -1, 2],
                                            [0, 1, z, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(context, calendar_features([0, 953127900, -1]))


def test_multi_hot_matrix_with_spaces_and_empty_cells():
    frame = pd.DataFrame({"item_id": [1, 2, 3, 4], "tags": ["b | a", "", None, "c|a|"]})
    spec = ItemFeatureSpec("item_id", (FeatureColumn("tags", "multi_hot"),)).fit(frame)
    assert spec.columns[0].categories == ("a", "b", "c") and spec.attribute_dim == 3
    np.testing.assert_array_equal(spec.encode(frame)[1],
                                  [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 1]])


def test_numeric_standardisation_and_constant_column():
    frame = pd.DataFrame({"item_id": [1, 2, 3, 4], "x": [2.0, 4.0, 4.0, 6.0],
                          "c": ["7", " 7 ", "7", "7.0"]})
    spec = ItemFeatureSpec("item_id", (FeatureColumn("x", "numeric"),
                                       FeatureColumn("c", "numeric"))).fit(frame)
    assert (spec.columns[0].mean, spec.columns[0].std) == (4.0, math.sqrt(2.0))
    assert (spec.columns[1].mean, spec.columns[1].std) == (7.0, 1.0)
    np.testing.assert_allclose(spec.encode(frame)[1][:, 0],
                               [-math.sqrt(2), 0, 0, math.sqrt(2)], rtol=1e-6)
    np.testing.assert_array_equal(spec.encode(frame)[1][:, 1], 0.0)


def test_dense_width_inferred_declared_and_list_cells():
    frame = pd.DataFrame({"item_id": [1, 2], "v": ["1, 2, 3", "4,5,6"],
                          "w": [[1.5, 2.5], np.array([3.0, 4.0])]})
    spec = ItemFeatureSpec("item_id", (FeatureColumn("v", "dense"),
                                       FeatureColumn("w", "dense", width=2))).fit(frame)
    assert [column.width for column in spec.columns] == [3, 2] and spec.attribute_dim == 5
    np.testing.assert_array_equal(spec.encode(frame)[1], [[1, 2, 3, 1.5, 2.5],
                                                          [4, 5, 6, 3, 4]])
    assert FeatureColumn("v", "dense").separator == ","
    assert FeatureColumn("v", "multi_hot").separator == "|"


def test_datetime_column_is_a_timestamp():
    frame = pd.DataFrame({"item_id": [1, 2], "t": pd.to_datetime(
        ["1970-01-01 00:00", "2000-03-15 13:45"])})
    spec = ItemFeatureSpec.infer(frame)
    assert [(c.name, c.kind) for c in spec.columns] == [("t", "timestamp")]
    np.testing.assert_allclose(spec.fit(frame).encode(frame)[2],
                               calendar_features([0, 953127900]))


@pytest.mark.parametrize("overrides, item, column, value", [
    ({"price": ["1", "", "3"]}, 20, "price", "''"),
    ({"price": ["1", np.nan, "3"]}, 20, "price", "nan"),
    ({"price": ["1", "cheap", "3"]}, 20, "price", "'cheap'"),
    ({"price": ["1", "2", "inf"]}, 30, "price", "'inf'"),
    ({"emb": ["0.5,1", "", "0,0"]}, 20, "emb", "''"),
    ({"emb": ["0.5,1", "1,nan", "0,0"]}, 20, "emb", "'1,nan'"),
    ({"emb": ["0.5,1", "1,2,3", "0,0"]}, 20, "emb", "'1,2,3'"),
    ({"emb": ["0.5,1", "1;2", "0,0"]}, 20, "emb", "'1;2'"),
    ({"released": ["0", "", "1"]}, 20, "released", "''"),
    ({"released": ["0", "1.6e15", "1"]}, 20, "released", "1600000000000000.0"),
    ({"released": ["0", "yesterday", "1"]}, 20, "released", "'yesterday'"),
    ({"genres": ["Comedy", "Western", "Drama"]}, 20, "genres", "'Western'"),
])
def test_encode_errors_name_source_item_column_and_value(overrides, item, column, value):
    with pytest.raises(ValueError) as error:
        _fitted().encode(_table(**overrides), source="new.csv")
    message = str(error.value)
    assert message.startswith(f"new.csv: item {item}, column {column!r}: bad value {value}")
    assert "expected" in message


def test_unknown_category_for_new_items_lists_the_fitted_ones():
    new = _table(item_id=["40", "50", "60"], genres=["Drama", "Horror|Drama", ""])
    with pytest.raises(ValueError, match=r"item 50, column 'genres': bad value 'Horror'; "
                                         r"expected a category seen at fit \(2: 'Comedy', "
                                         r"'Drama'\)"):
        _fitted().encode(new)


def test_frame_level_errors():
    spec = _fitted()
    with pytest.raises(ValueError, match=r"t.csv: missing column\(s\) \['emb'\]"):
        spec.encode(_table().drop(columns="emb"), source="t.csv")
    with pytest.raises(ValueError, match=r"column 'item_id' .* value 'x1', which is not an "
                                         "integer"):
        spec.encode(_table(item_id=["10", "x1", "30"]))
    with pytest.raises(ValueError, match=r"item 10 occurs more than once in column 'item_id'"):
        spec.encode(_table(item_id=["10", "20", "10"]))
    with pytest.raises(ValueError, match="not fitted"):
        ItemFeatureSpec.from_dict(CONFIG).encode(_table())
    with pytest.raises(ValueError, match="not fitted"):
        ItemFeatureSpec.from_dict(CONFIG).attribute_dim
    with pytest.raises(ValueError, match="no item rows"):
        ItemFeatureSpec.from_dict(CONFIG).fit(_table().iloc[:0])


# --- spec dicts and inference ------------------------------------------------------

def test_spec_round_trips_through_json():
    for spec in (ItemFeatureSpec.from_dict(CONFIG), _fitted()):
        data = json.loads(json.dumps(spec.to_dict()))
        assert ItemFeatureSpec.from_dict(data) == spec
    data = _fitted().to_dict()
    assert data["fitted"] is True and list(data["columns"]) == list(CONFIG["columns"])
    assert data["columns"]["genres"] == {"kind": "multi_hot", "separator": "|",
                                         "categories": ["Comedy", "Drama"]}
    assert data["columns"]["price"] == {"kind": "numeric", "mean": 2.0,
                                        "std": math.sqrt(2 / 3)}
    assert data["columns"]["released"] == {"kind": "timestamp"}
    shorthand = ItemFeatureSpec.from_dict({"id_column": "i", "columns": {"p": "numeric"}})
    assert shorthand.columns == (FeatureColumn("p", "numeric"),)


@pytest.mark.parametrize("values, match", [
    ({"id_column": "i", "colums": {}}, r"unknown key\(s\) \['colums'\]"),
    ({"id_column": "i", "columns": {"p": {"kind": "ordinal"}}}, r"'p': unknown kind"),
    ({"id_column": "i", "columns": {"p": {"kind": "numeric", "width": 3}}},
     r"'p': unknown key\(s\) \['width'\] for kind 'numeric'"),
    ({"columns": {}}, "id_column None"),
    ({"id_column": "i", "columns": {"p": {"kind": "numeric"}}, "fitted": True},
     r"marked fitted but column\(s\) \['p'\]"),
    ({"id_column": "i", "columns": {"i": "numeric"}}, "as the id column"),
    ({"id_column": "i", "format": "other"}, "format 'other'"),
    ({"id_column": "i", "columns": ["p"]}, "expected a mapping with 'columns'"),
])
def test_from_dict_rejects(values, match):
    with pytest.raises(ValueError, match=match):
        ItemFeatureSpec.from_dict(values)


def test_module_does_not_import_tensorflow():
    code = ("import sys, tfrec_proxy.data.item_features; "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_feature_kinds_and_bad_columns():
    assert FEATURE_KINDS == ("multi_hot", "dense", "numeric", "timestamp")
    with pytest.raises(ValueError, match="unknown kind 'text'"):
        FeatureColumn("t", "text")
    with pytest.raises(ValueError, match="width 0"):
        FeatureColumn("v", "dense", width=0)


def test_infer_rules():
    frame = pd.DataFrame({"title": ["a", "b"], "item_id": [1, 2], "movie_id": [7, 8],
                          "price": [1.5, 2.0], "year": ["1995", ""], "count": [3, 4],
                          "emb": ["0.1,0.2", "0.3,0.4"], "tags": ["x|y", "1,2,3"],
                          "blank": ["", ""]})
    spec = ItemFeatureSpec.infer(frame)
    assert spec.id_column == "item_id" and not spec.fitted
    assert [(c.name, c.kind) for c in spec.columns] == [
        ("title", "multi_hot"), ("price", "numeric"), ("year", "numeric"),
        ("count", "numeric"), ("emb", "dense"), ("tags", "multi_hot"),
        ("blank", "multi_hot")]
    assert ItemFeatureSpec.infer(frame.rename(columns={"item_id": "sas_item_id"})
                                 ).id_column == "sas_item_id"
    assert ItemFeatureSpec.infer(frame.drop(columns="item_id")).id_column == "title"
    assert ItemFeatureSpec.infer(frame, id_column="count").id_column == "count"
    with pytest.raises(ValueError, match="no id column 'nope'"):
        ItemFeatureSpec.infer(frame, id_column="nope")


# --- vocabulary alignment and files ------------------------------------------------

def test_item_features_for_vocab_counts_missing_and_extra():
    vocab = Vocabulary([30, 10, 99])  # 30 -> 2, 10 -> 3, 99 -> 4 (no row); 20 is extra
    frame = _table(genres=["Comedy|Drama", "Western", "Drama"])
    with pytest.warns(UserWarning, match=r"1 of 3 vocabulary items have no row .*\[99\]"):
        features = item_features_for_vocab(frame, vocab, ItemFeatureSpec.from_dict(CONFIG))
    assert (features.missing, features.extra) == (1, 1)
    assert features.attributes.shape == (5, features.attribute_dim)
    assert features.context.shape == (5, CALENDAR_DIM)
    # Fitted on the vocabulary's rows only: 'Western' (item 20) is no category.
    assert features.spec.columns[0].categories == ("Comedy", "Drama")
    assert features.spec.columns[1].mean == 2.0  # prices of items 10 and 30: 1 and 3
    np.testing.assert_array_equal(features.attributes[[0, 1, 4]], 0.0)
    np.testing.assert_array_equal(features.context[[0, 1, 4]], 0.0)
    np.testing.assert_allclose(features.attributes[2], [0, 1, 1, 0, 0])
    np.testing.assert_allclose(features.attributes[3], [1, 1, -1, 0.5, 1])
    np.testing.assert_allclose(features.context[2:4], calendar_features([-1, 0]))


def test_item_features_for_vocab_needs_an_overlap():
    with pytest.raises(ValueError, match="none of the 3 ids in column 'item_id'"):
        item_features_for_vocab(_table(), Vocabulary([1, 2]))


def test_save_load_round_trip_and_errors(tmp_path):
    features = item_features_for_vocab(_table(), Vocabulary([10, 20, 30]),
                                       ItemFeatureSpec.from_dict(CONFIG))
    features.save(tmp_path)
    assert json.loads((tmp_path / "item_features.json").read_text())["missing"] == 0
    loaded = ItemFeatures.load(tmp_path)
    assert loaded.spec == features.spec and (loaded.missing, loaded.extra) == (0, 0)
    np.testing.assert_array_equal(loaded.attributes, features.attributes)
    np.testing.assert_array_equal(loaded.context, features.context)
    assert (loaded.attribute_dim, loaded.context_dim) == (5, CALENDAR_DIM)
    new_ids, new_attributes, _ = loaded.spec.encode(_table(item_id=["40", "50", "60"]))
    np.testing.assert_array_equal(new_attributes, features.attributes[2:])
    (tmp_path / "item_features.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"item_features.npz: malformed item features"):
        ItemFeatures.load(tmp_path)
    (tmp_path / "item_features.json").write_text("{")
    with pytest.raises(ValueError, match=r"item_features.json: malformed item features"):
        ItemFeatures.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"empty: no item_features.json"):
        ItemFeatures.load(tmp_path / "empty")


ITEMS_TEXT = "item_id{s}genres{s}price\n1{s}Children's|Comedy{s}9.5\n2{s}{s}3\n"


@pytest.mark.parametrize("name, sep", [("items.csv", ","), ("items.csv", ";"),
                                       ("items.tsv", "\t"), ("items.txt", "\t")])
def test_read_item_table_text_formats(tmp_path, name, sep):
    path = tmp_path / name
    path.write_text(ITEMS_TEXT.format(s=sep))
    frame = read_item_table(path)
    assert frame.to_dict("list") == {"item_id": ["1", "2"],
                                     "genres": ["Children's|Comedy", ""],
                                     "price": ["9.5", "3"]}


def test_read_item_table_parquet_and_errors(tmp_path):
    frame = pd.DataFrame({"item_id": [1, 2], "price": [9.5, 3.0]})
    frame.to_parquet(tmp_path / "items.parquet")
    pd.testing.assert_frame_equal(read_item_table(tmp_path / "items.parquet"), frame)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_item_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=r"unknown item table extension '.json'; "
                                         r"expected one of \['.csv'"):
        read_item_table(tmp_path / "items.json")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: cannot read the item table"):
        read_item_table(tmp_path / "empty.csv")


def test_load_item_features_with_config_and_inferred_spec(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(ITEMS_TEXT.format(s=","))
    vocab = Vocabulary([1, 2])
    inferred = load_item_features(path, vocab, {})
    assert [(c.name, c.kind) for c in inferred.spec.columns] == [("genres", "multi_hot"),
                                                                 ("price", "numeric")]
    np.testing.assert_allclose(inferred.attributes[2:], [[1, 1, 1], [0, 0, -1]])
    declared = load_item_features(path, vocab, {"id_column": "item_id",
                                                "columns": {"genres": "multi_hot"}})
    assert declared.attribute_dim == 2
    with pytest.raises(ValueError, match=r"items.csv: item 1, column 'genres'"):
        load_item_features(path, vocab, {"id_column": "item_id",
                                         "columns": {"genres": "numeric"}})


def test_synthetic_item_table_round_trips_float32():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 3)).astype(np.float32)
    frame = synthetic_item_table(np.array([5, 6, 7, 8]), values)
    assert list(frame.columns) == ["item_id", "attributes"]
    assert ItemFeatureSpec.infer(frame) == synthetic_item_spec()
    features = item_features_for_vocab(frame, Vocabulary([5, 6, 7, 8]),
                                       synthetic_item_spec(width=3))
    np.testing.assert_array_equal(features.attributes[2:], values)
    with pytest.raises(ValueError, match="synthetic_item_table"):
        synthetic_item_table(np.array([1]), values)


def test_ml1m_items_file():
    if not ML1M_ITEMS.exists():
        pytest.skip(f"{ML1M_ITEMS} not present")
    frame = read_item_table(ML1M_ITEMS)
    spec = ItemFeatureSpec.infer(frame)
    assert spec.id_column == "sas_item_id"
    assert [(c.name, c.kind, c.separator) for c in spec.columns] == [
        ("genres", "multi_hot", "|")]
    vocab = Vocabulary.from_ids(frame["sas_item_id"].astype(np.int64))
    features = item_features_for_vocab(frame, vocab, spec, source=str(ML1M_ITEMS))
    assert features.attribute_dim == 18 and features.context_dim == 0
    assert "Children's" in features.spec.columns[0].categories
    assert (features.missing, features.extra) == (0, 0)
    assert features.attributes.shape == (len(frame) + 2, 18)
    assert np.all(features.attributes[2:].sum(axis=1) >= 1)
