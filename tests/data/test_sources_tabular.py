"""Generic CSV / parquet converter driven by a mapping."""

import pandas as pd
import pytest

from recsys.data import DataError, load_dataset, prepare

MAPPING = {
    "interactions": "ratings.csv", "items": "items.csv", "users": "users.csv",
    "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "when", "rating": "stars"},
    "item_columns": {"item_id": "iid", "title": "name", "tags": "tags"},
    "timestamp_format": "iso", "list_separator": "|", "list_columns": ["tags"],
}


def test_tabular_full_mapping(raw_copy, tmp_path):
    info = prepare("tabular", raw_copy("tabular"), tmp_path / "ds", MAPPING)
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "u1", "item_id": "i1", "timestamp": 1577934245, "rating": 5.0},
        {"user_id": "u2", "item_id": "i2", "timestamp": 1577836800, "rating": 3.0},
        {"user_id": "u1", "item_id": "i2", "timestamp": 1577934245, "rating": 4.0},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "i1", "title": "Widget", "tags": ["red", "blue"]},
        {"item_id": "i2", "title": "Gadget, large", "tags": None},
        {"item_id": "i3", "title": "Thing", "tags": ["green"]},
    ]
    assert ds.users.to_dict("records") == [{"user_id": "u1", "country": "FR"},
                                           {"user_id": "u2", "country": None}]
    assert info["mapping"]["timestamp_format"] == "iso" and info["name"] == "tabular"


def test_tabular_minimal_mapping_uses_position_as_time(raw_copy, tmp_path):
    mapping = {"interactions": "ratings.csv", "columns": {"user_id": "uid", "item_id": "iid"}}
    prepare("tabular", raw_copy("tabular"), tmp_path / "ds", mapping)
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "u1", "item_id": "i1", "timestamp": 0},
        {"user_id": "u2", "item_id": "i2", "timestamp": 0},
        {"user_id": "u1", "item_id": "i2", "timestamp": 1},
    ]
    assert ds.items.to_dict("records") == [{"item_id": "i1"}, {"item_id": "i2"}]
    assert ds.info["items_without_text"] == 2


def test_tabular_parquet_strftime_and_default_item_columns(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"user": [7, 7], "item": [1, 2], "day": ["02/01/2020 10:00", "01/01/2020 10:00"],
                  "click": [1, 0]}).to_parquet(raw / "events.parquet")
    pd.DataFrame({"item": [1, 2], "genres": [["a", "b"], []], "year": [1999.0, None]}).to_parquet(
        raw / "items.parquet")
    mapping = {"interactions": "events.parquet", "items": "items.parquet",
               "columns": {"user_id": "user", "item_id": "item", "timestamp": "day",
                           "label": "click"},
               "timestamp_format": "%d/%m/%Y %H:%M"}
    prepare("tabular", raw, tmp_path / "ds", mapping)
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "7", "item_id": "1", "timestamp": 1577959200, "label": 1},
        {"user_id": "7", "item_id": "2", "timestamp": 1577872800, "label": 0},
    ]
    assert ds.items.to_dict("records") == [{"item_id": "1", "genres": ["a", "b"], "year": "1999"},
                                           {"item_id": "2", "genres": None, "year": None}]


def test_tabular_errors(raw_copy, assert_fails_cleanly, tmp_path):
    raw = raw_copy("tabular")
    assert_fails_cleanly("tabular", raw, "ratings.csv", "'when'", "'2020-01-02T03:04:05Z'",
                  "line 2: 'u1,i1,2020-01-02T03:04:05Z,5'",
                  mapping={**MAPPING, "timestamp_format": "unix"})
    assert_fails_cleanly("tabular", raw, "ratings.csv", "'stamp'", "missing", "line 2:",
                  mapping={**MAPPING, "columns": {**MAPPING["columns"], "timestamp": "stamp"}})
    (raw / "items.csv").write_text("iid,name,tags\ni1,Widget,\ni1,Again,\n")
    assert_fails_cleanly("tabular", raw, "items.csv", "'item_id'", "duplicate item_id 'i1'",
                  "row 1: item_id='i1', title='Again'", mapping=MAPPING)
    with pytest.raises(DataError, match="columns.item_id is required"):
        prepare("tabular", raw, tmp_path / "ds",
                {"interactions": "ratings.csv", "columns": {"user_id": "uid"}})
    with pytest.raises(DataError, match=r"unknown key\(s\) \['item_column'\]"):
        prepare("tabular", raw, tmp_path / "ds", {**MAPPING, "item_column": {}})


# --- values checked where they enter: each error names file, raw column and line -------------

HEADER, GOOD = "uid,iid,when,stars\n", "u1,i1,1577934245,1\n"
COLUMNS = {"user_id": "uid", "item_id": "iid", "timestamp": "when"}
UNIX = {"interactions": "ratings.csv", "columns": {**COLUMNS, "rating": "stars"}}
CLICKS = {"interactions": "ratings.csv", "columns": {**COLUMNS, "label": "stars"}}


@pytest.mark.parametrize(("row", "mapping", "fragments"), [
    # past int64: was stored as -2**63, first in the user's history
    ("u2,i2,99999999999999999999,3", UNIX, ["'when'", "'99999999999999999999'", "int64"]),
    ("u2,i2,-1e30,3", UNIX, ["'when'", "'-1e30'"]),
    ("u2,i2,,3", UNIX, ["'when'", "cannot parse ''"]),
    ("u2,i2,NaN,3", UNIX, ["'when'", "'NaN'"]),
    ("u2,i2,soon,3", UNIX, ["'when'", "'soon'"]),
    ("u2,i2,1577934245.5,3", UNIX, ["'when'", "'1577934245.5'"]),  # no fractions of seconds
    ("u2,i2,1577934245,inf", UNIX, ["'stars'", "'inf'", "finite"]),  # was stored as inf
    ("u2,i2,1577934245,1e40", UNIX, ["'stars'", "'1e40'"]),  # inf as float32
    ("u2,i2,1577934245,nan", UNIX, ["'stars'", "'nan'"]),
    ("u2,i2,1577934245,great", UNIX, ["'stars'", "'great'"]),
    ("u2,i2,1577934245,2", CLICKS, ["'stars'", "'2' is not one of [0, 1]"]),
    ("u2,i2,1577934245,-1", CLICKS, ["'stars'", "'-1' is not one of [0, 1]"]),
    ("u2,i2,1577934245,0.5", CLICKS, ["'stars'", "'0.5'"]),
    ("u2,i2,1577934245,yes", CLICKS, ["'stars'", "'yes'"]),
])
def test_bad_values_name_file_column_and_line(raw_copy, assert_fails_cleanly, row, mapping,
                                              fragments):
    raw = raw_copy("tabular")
    (raw / "ratings.csv").write_text(HEADER + GOOD + row + "\n")
    assert_fails_cleanly("tabular", raw, "ratings.csv: column", *fragments,
                         f"line 3: {row!r}", mapping=mapping)


def test_accepted_numbers(raw_copy, tmp_path):
    """Before 1970 is a date like any other; whole numbers may be written as floats."""
    raw = raw_copy("tabular")
    (raw / "ratings.csv").write_text(
        HEADER + "u1,i1,-86400,-2.5\nu1,i2,1.0,1e2\nu2,i1,1.5e9,0\nu2,i2,9007199254740993,3\n")
    prepare("tabular", raw, tmp_path / "ds", UNIX)
    inter = load_dataset(tmp_path / "ds").interactions
    assert inter["timestamp"].tolist() == [-86400, 1, 1_500_000_000, 9007199254740993]  # exact
    assert inter["rating"].tolist() == [-2.5, 100.0, 0.0, 3.0]


def test_iso_times_far_from_1970(raw_copy, tmp_path):
    raw = raw_copy("tabular")  # year 9999 crashed (nanosecond overflow) before
    (raw / "ratings.csv").write_text(
        HEADER + "u1,i1,9999-12-31T23:59:59Z,1\nu1,i2,1900-01-01T00:00:00.5Z,1\n")
    prepare("tabular", raw, tmp_path / "ds", {**UNIX, "timestamp_format": "iso"})
    assert load_dataset(tmp_path / "ds").interactions["timestamp"].tolist() == [
        253402300799, -2208988800]


def test_encodings(raw_copy, assert_fails_cleanly, tmp_path):
    raw = raw_copy("tabular")
    (raw / "ratings.csv").write_bytes((HEADER + GOOD + "u\xe9,i2,1577934245,3\n").encode("latin-1"))
    for encoding in ("utf-99", "base64"):  # unknown; not a text encoding
        assert_fails_cleanly("tabular", raw, "mapping for tabular: 'encoding': unknown text "
                             f"encoding '{encoding}'", mapping={**UNIX, "encoding": encoding})
    assert_fails_cleanly("tabular", raw, "ratings.csv: column 'uid': bytes not valid utf-8",
                         "byte 0xe9, line 3", mapping={**UNIX, "encoding": "utf-8"})
    prepare("tabular", raw, tmp_path / "ds", {**UNIX, "encoding": "latin-1"})
    assert load_dataset(tmp_path / "ds").interactions["user_id"].tolist() == ["u1", "ué"]


def test_first_line_with_extra_fields(raw_copy, assert_fails_cleanly):
    raw = raw_copy("tabular")  # pandas cut the extra field off with only a warning
    (raw / "ratings.csv").write_text(HEADER + "u1,i1,1577934245,5,extra\n" + GOOD)
    assert_fails_cleanly("tabular", raw, "ratings.csv", "more fields than columns",
                         "line 2: 'u1,i1,1577934245,5,extra'", mapping=UNIX)
    (raw / "ratings.csv").write_text(HEADER + GOOD + "u1,i1,1577934245,5,extra\n")
    assert_fails_cleanly("tabular", raw, "ratings.csv", "Expected 4 fields in line 3, saw 5",
                         mapping=UNIX)


@pytest.mark.parametrize(("change", "fragment"), [
    ({"columns": ["uid", "iid"]}, "'columns' must be a mapping of names to column names"),
    ({"columns": {"user_id": 1, "item_id": "iid"}}, "'columns' must be a mapping"),
    ({"items": "items.csv", "item_columns": ["iid"]}, "'item_columns' must be a mapping"),
    ({"list_separator": "|", "list_columns": "tags"}, "'list_columns' must be a list"),
    ({"sep": 5}, "'sep' must be a non-empty string, got 5"),
    ({"name": ["x"]}, "'name' must be a non-empty string"),
    ({"interactions": "../tabular/ratings.csv"}, "'interactions' must name a file inside the raw"),
    ({"items": "/etc/hostname"}, "'items' must name a file inside the raw dir"),
    ({"timestamp_format": "%Q"}, "'timestamp_format': '%Q' is not a valid format"),
])
def test_bad_mapping_names_the_key(raw_copy, assert_fails_cleanly, change, fragment):
    assert_fails_cleanly("tabular", raw_copy("tabular"), "mapping for tabular: " + fragment,
                         mapping={**MAPPING, **change})


def test_parquet_with_its_own_index(tmp_path):
    raw = tmp_path / "raw"  # checked columns must stay aligned with the frame's index
    raw.mkdir()
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "t": [3, 2], "r": [1.0, 2.0]},
                 index=[7, 5]).to_parquet(raw / "e.parquet")
    prepare("tabular", raw, tmp_path / "ds", {"interactions": "e.parquet", "columns": {
        "user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r"}})
    assert load_dataset(tmp_path / "ds").interactions.to_dict("records") == [
        {"user_id": "a", "item_id": "x", "timestamp": 3, "rating": 1.0},
        {"user_id": "b", "item_id": "y", "timestamp": 2, "rating": 2.0},
    ]
