"""prepare / ensure_dataset: source names, what dataset.json records, reuse without work."""

import json
import os

import pytest

from recsys.data import (
    SOURCES,
    DataError,
    dataset_sha256,
    ensure_dataset,
    load_dataset,
    prepare,
)


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


def _counting(monkeypatch, source):
    """Count the converter's calls (each call is a prepare)."""
    calls, convert = [], SOURCES[source]
    monkeypatch.setitem(SOURCES, source, lambda r, m: calls.append(r) or convert(r, m))
    return calls


def test_ensure_dataset_prepares_again_after_a_raw_edit(raw_copy, tmp_path, monkeypatch):
    raw, out = raw_copy("ml-latest"), tmp_path / "ds"
    calls = _counting(monkeypatch, "movielens-latest")
    ensure_dataset("movielens-latest", raw, out)
    assert load_dataset(out).interactions["rating"].tolist() == [4.0, 4.5, 0.5]
    ratings = raw / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("1,1,4.0,", "1,1,2.0,"))  # same size
    ensure_dataset("movielens-latest", raw, out)
    assert len(calls) == 2
    assert load_dataset(out).interactions["rating"].tolist() == [2.0, 4.5, 0.5]
    ensure_dataset("movielens-latest", raw, out)
    assert len(calls) == 2  # unchanged since: reused


def test_ensure_dataset_counts_a_touch_and_a_new_file_as_changes(raw_copy, tmp_path,
                                                                 monkeypatch):
    raw, out = raw_copy("ml-latest"), tmp_path / "ds"
    calls = _counting(monkeypatch, "movielens-latest")
    ensure_dataset("movielens-latest", raw, out)
    os.utime(raw / "movies.csv")  # same content, new mtime: prepared again (the safe side)
    ensure_dataset("movielens-latest", raw, out)
    assert len(calls) == 2
    (raw / "tags.csv").unlink()  # a file gone
    ensure_dataset("movielens-latest", raw, out)
    assert len(calls) == 3 and "tags" not in load_dataset(out).items.columns


def test_ensure_dataset_prepares_again_a_dataset_without_fingerprint(raw_copy, tmp_path,
                                                                    monkeypatch):
    raw, out = raw_copy("ml-1m"), tmp_path / "ds"
    calls = _counting(monkeypatch, "movielens-1m")
    info = prepare("movielens-1m", raw, out)
    assert info["raw_files"] == {
        name: [(raw / name).stat().st_size, (raw / name).stat().st_mtime_ns]
        for name in ("movies.dat", "ratings.dat", "users.dat")}
    del info["raw_files"]  # as older code wrote it
    (out / "dataset.json").write_text(json.dumps(info))
    ensure_dataset("movielens-1m", raw, out)
    assert len(calls) == 2 and "raw_files" in load_dataset(out).info


def test_dataset_inside_its_raw_dir_is_not_part_of_the_fingerprint(raw_copy, monkeypatch):
    raw = raw_copy("ml-1m")
    calls = _counting(monkeypatch, "movielens-1m")
    ensure_dataset("movielens-1m", raw, raw / "prepared")
    ensure_dataset("movielens-1m", raw, raw / "prepared")
    assert len(calls) == 1
    assert sorted(load_dataset(raw / "prepared").info["raw_files"]) == [
        "movies.dat", "ratings.dat", "users.dat"]


def test_raw_path_that_is_a_file(raw_copy, tmp_path):
    raw = raw_copy("ml-1m")
    with pytest.raises(DataError, match=r"ratings\.dat: not a directory \(the raw path is"):
        prepare("movielens-1m", raw / "ratings.dat", tmp_path / "ds")


def test_dataset_sha256_reads_the_recorded_hash(raw_copy, tmp_path):
    out = tmp_path / "ds"
    info = prepare("movielens-1m", raw_copy("ml-1m"), out)
    assert dataset_sha256(out) == info["sha256"] == load_dataset(out).info["sha256"]
    with pytest.raises(DataError, match=r"^dataset\.json: file not found"):
        dataset_sha256(tmp_path)
    info["sha256"] = "0" * 64  # no longer the hash of the listed files
    (out / "dataset.json").write_text(json.dumps(info))
    assert dataset_sha256(out) == "0" * 64
    with pytest.raises(DataError, match=r"^dataset\.json: 'sha256' does not match its file list"):
        load_dataset(out)
    del info["sha256"]
    (out / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"^dataset\.json: no valid 'sha256'"):
        dataset_sha256(out)
