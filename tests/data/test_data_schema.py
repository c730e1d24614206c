"""Canonical dataset: validation, round trip, content hash, atomic replacement."""

import json

import numpy as np
import pandas as pd
import pytest

from recsys.data import DataError, load_dataset, write_dataset
from recsys.data import schema as schema_module

META = {"name": "tiny", "source": "test", "license": "test only"}


def tables():
    interactions = pd.DataFrame({
        "user_id": ["u2", "u1", "u1", "u2"], "item_id": ["b", "a", "b", "a"],
        "timestamp": [5, 7, 7, 1], "rating": [1.0, 4.5, 3.0, 2.0],
    })
    items = pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["Alpha", "", np.nan],
        "genres": [["x", "y"], [], None],
    })
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": [31, None]})
    return interactions, items, users


def test_round_trip_keeps_order_types_and_normalises_missing(tmp_path):
    interactions, items, users = tables()
    info = write_dataset(tmp_path / "ds", interactions, items, users, **META)
    ds = load_dataset(tmp_path / "ds")

    assert ds.interactions.to_dict("records") == [  # raw order, ties untouched
        {"user_id": "u2", "item_id": "b", "timestamp": 5, "rating": 1.0},
        {"user_id": "u1", "item_id": "a", "timestamp": 7, "rating": 4.5},
        {"user_id": "u1", "item_id": "b", "timestamp": 7, "rating": 3.0},
        {"user_id": "u2", "item_id": "a", "timestamp": 1, "rating": 2.0},
    ]
    assert ds.interactions["timestamp"].dtype == np.int64
    assert ds.interactions["rating"].dtype == np.float32
    assert ds.items.to_dict("records") == [
        {"item_id": "a", "title": "Alpha", "genres": ["x", "y"]},
        {"item_id": "b", "title": None, "genres": None},  # "" and [] are not text
        {"item_id": "c", "title": None, "genres": None},
    ]
    assert ds.users.to_dict("records") == [{"user_id": "u1", "age": "31"},  # not "31.0"
                                           {"user_id": "u2", "age": None}]
    assert ds.info == info == json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["counts"] == {"interactions": 4, "users": 2, "items": 3}
    assert info["items_without_text"] == 2
    assert info["tied_timestamps"] == 1
    assert info["columns"]["items"] == ["item_id", "title", "genres"]
    assert sorted(info["files"]) == ["interactions.parquet", "items.parquet", "users.parquet"]
    assert len(info["sha256"]) == 64


def test_label_and_impression_columns(tmp_path):
    interactions = pd.DataFrame({"user_id": ["u"] * 2, "item_id": ["a", "b"], "timestamp": [3, 3],
                                 "label": [1, 0], "impression_id": [10, 10]})
    write_dataset(tmp_path / "ds", interactions, pd.DataFrame({"item_id": ["a", "b"]}), **META)
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions["label"].dtype == np.int8
    assert ds.interactions["impression_id"].tolist() == ["10", "10"]
    assert ds.users is None and ds.info["items_without_text"] == 2


def bad(name):
    """(interactions, items, users) with one defect; expected message fragments."""
    interactions, items, users = tables()
    if name == "missing column":
        interactions = interactions.drop(columns="timestamp")
        return (interactions, items, users), ["interactions.parquet", "'timestamp'", "row 0:"]
    if name == "duplicate item":
        items.loc[2, "item_id"] = "a"
        return (interactions, items, users), ["items.parquet", "'item_id'", "duplicate", "row 2:"]
    if name == "duplicate user":
        users.loc[1, "user_id"] = "u1"
        return (interactions, items, users), ["users.parquet", "'user_id'", "row 1:"]
    if name == "unknown item":
        interactions.loc[2, "item_id"] = "zz"
        return (interactions, items, users), ["interactions.parquet", "'item_id'", "'zz'",
                                              "row 2:"]
    if name == "unknown user":
        interactions.loc[3, "user_id"] = "u9"
        return (interactions, items, users), ["'user_id'", "'u9' is not in users.parquet"]
    if name == "null timestamp":
        interactions["timestamp"] = [5, None, 7, 1]
        return (interactions, items, users), ["'timestamp'", "row 1:"]
    if name == "unparsable timestamp":
        interactions["timestamp"] = ["5", "7", "soon", "1"]
        return (interactions, items, users), ["'timestamp'", "row 2:", "'soon'"]
    if name == "datetime timestamp":  # would silently become nanoseconds
        interactions["timestamp"] = pd.to_datetime(interactions["timestamp"], unit="s")
        return (interactions, items, users), ["'timestamp'", "datetime64", "row 0:"]
    if name == "timestamp past int64":  # a plain cast made it -2**63
        interactions["timestamp"] = [5.0, 1e30, 7.0, 1.0]
        return (interactions, items, users), ["'timestamp'", "out-of-range", "row 1:"]
    if name == "infinite rating":
        interactions["rating"] = [1.0, 2.0, np.inf, 3.0]
        return (interactions, items, users), ["'rating'", "finite", "row 2:"]
    if name == "bad label":
        interactions["label"] = [0, 1, 2, 1]
        return (interactions, items, users), ["'label'", "row 2:"]
    if name == "empty interactions":
        return (interactions.iloc[:0], items, users), ["interactions.parquet", "empty"]
    if name == "empty items":
        return (interactions, items.iloc[:0], users), ["items.parquet", "empty"]
    if name == "float ids":
        interactions["user_id"] = [1.0, 2.0, 1.0, 2.0]
        return (interactions, items, users), ["'user_id'", "row 0:"]
    if name == "mixed attribute":
        items["genres"] = [["x"], "y", None]
        return (interactions, items, users), ["'genres'", "mixes strings and lists", "row 0:"]
    raise AssertionError(name)


CASES = ["missing column", "duplicate item", "duplicate user", "unknown item", "unknown user",
         "null timestamp", "unparsable timestamp", "datetime timestamp", "timestamp past int64",
         "infinite rating", "bad label",
         "empty interactions", "empty items", "float ids", "mixed attribute"]


@pytest.mark.parametrize("case", CASES)
def test_bad_tables_raise_and_write_nothing(tmp_path, case):
    (interactions, items, users), fragments = bad(case)
    with pytest.raises(DataError) as caught:
        write_dataset(tmp_path / "ds", interactions, items, users, **META)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_origin_names_the_raw_file(tmp_path):
    (interactions, items, users), _ = bad("unknown item")
    with pytest.raises(DataError, match=r"^u\.data: column 'item_id': 'zz' is not in u\.item"):
        write_dataset(tmp_path / "ds", interactions, items, users, **META,
                      origin={"interactions": "u.data", "items": "u.item"})


def test_failed_write_leaves_previous_dataset_intact(tmp_path, monkeypatch):
    interactions, items, users = tables()
    write_dataset(tmp_path / "ds", interactions, items, users, **META)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}

    real_write, calls = schema_module._write_table, []

    def write_then_fail(table, path):
        calls.append(path.name)
        if len(calls) == 2:  # interactions written, items fails midway
            path.write_bytes(b"partial")
            raise OSError("disk full")
        real_write(table, path)

    monkeypatch.setattr(schema_module, "_write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "ds", interactions.iloc[:2], items, users, **META)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp dir left
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert load_dataset(tmp_path / "ds").info["counts"]["interactions"] == 4


def test_rewrite_replaces_dataset(tmp_path):
    interactions, items, users = tables()
    write_dataset(tmp_path / "ds", interactions, items, users, **META)
    write_dataset(tmp_path / "ds", interactions.iloc[:1], items, None, **META)
    ds = load_dataset(tmp_path / "ds")
    assert len(ds.interactions) == 1 and ds.users is None
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        write_dataset(tmp_path / "home", *tables(), **META)
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


def test_load_refuses_changed_content(tmp_path):
    interactions, items, users = tables()
    write_dataset(tmp_path / "ds", interactions, items, users, **META)
    other = tmp_path / "other"
    write_dataset(other, interactions.iloc[:2], items, users, **META)
    (tmp_path / "ds" / "interactions.parquet").write_bytes(
        (other / "interactions.parquet").read_bytes())
    with pytest.raises(DataError, match=r"^interactions\.parquet: content sha256 does not match"):
        load_dataset(tmp_path / "ds")


def test_load_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"^dataset\.json: file not found"):
        load_dataset(tmp_path)
    write_dataset(tmp_path / "ds", *tables(), **META)
    (tmp_path / "ds" / "users.parquet").unlink()
    with pytest.raises(DataError, match=r"^users\.parquet: file not found"):
        load_dataset(tmp_path / "ds")
