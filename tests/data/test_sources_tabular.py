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
