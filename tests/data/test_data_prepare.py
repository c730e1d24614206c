"""prepare / ensure_dataset: source names, what dataset.json records, reuse without work."""

import json

import pytest

from recsys.data import SOURCES, DataError, ensure_dataset, load_dataset, prepare


def test_source_names():
    assert sorted(SOURCES) == sorted([
        "movielens-100k", "movielens-1m", "movielens-latest", "amazon-lcrec", "amazon-s3rec",
        "amazon-2018", "mind", "tabular",
    ])


def test_unknown_source_and_missing_raw(tmp_path):
    with pytest.raises(DataError, match="unknown source 'netflix'.*movielens-100k.*tabular"):
        prepare("netflix", tmp_path, tmp_path / "ds")
    with pytest.raises(DataError, match="raw data not found"):
        prepare("mind", tmp_path / "nowhere", tmp_path / "ds")
    with pytest.raises(DataError, match="no behaviors file found"):
        prepare("mind", tmp_path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_dataset_json_records_raw_and_mapping(raw_copy, tmp_path):
    raw = raw_copy("ml-1m")
    mapping = {"ratings_file": "ratings.dat"}
    info = prepare("movielens-1m", raw, tmp_path / "ds", mapping)
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert on_disk == info == load_dataset(tmp_path / "ds").info
    assert info["raw"] == str(raw.resolve()) and info["mapping"] == mapping
    assert info["source"] == "movielens-1m" and info["name"] == "MovieLens 1M"
    assert info["counts"] == {"interactions": 3, "users": 2, "items": 3}
    assert info["rows"] == {"interactions": 3, "items": 3, "users": 2}


def test_ensure_dataset_reuses_matching_dataset(raw_copy, tmp_path, monkeypatch, caplog):
    raw, out = raw_copy("ml-1m"), tmp_path / "ds"
    calls = []
    convert = SOURCES["movielens-1m"]
    monkeypatch.setitem(SOURCES, "movielens-1m", lambda r, m: calls.append(r) or convert(r, m))

    assert ensure_dataset("movielens-1m", raw, out) == out
    stamp = (out / "dataset.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="recsys.data"):
        assert ensure_dataset("movielens-1m", str(raw), out, mapping={}) == out  # {} = None
    assert len(calls) == 1 and (out / "dataset.json").stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text and "3 interactions" in caplog.text

    ensure_dataset("movielens-1m", raw, out, mapping={"ratings_file": "ratings.dat"})
    assert len(calls) == 2  # another mapping: prepared again
    ensure_dataset("movielens-100k", raw_copy("ml-100k"), out)
    assert load_dataset(out).info["source"] == "movielens-100k"  # another source replaces it


def test_mapping_must_be_json_data(raw_copy, tmp_path):
    with pytest.raises(DataError, match="JSON-like"):
        prepare("tabular", raw_copy("tabular"), tmp_path / "ds", {"interactions": object()})
