"""The shared `config` fixture (tests/conftest.py): one prepared dataset per session, read by
every test that does not change it; a private copy for those that do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.data import ensure_dataset
from tests.conftest import _write_prepared, unchanged


def _prepared_at(config) -> int:
    return (Path(config.data.dir) / "dataset.json").stat().st_mtime_ns


def test_config_reads_the_sessions_prepared_dataset_and_keeps_runs_per_test(
        config, successor_data, tmp_path):
    assert Path(config.data.dir) == successor_data / "dataset"
    assert Path(config.data.raw) == successor_data / "raw"
    assert config.train.runs_dir == str(tmp_path / "runs")
    assert config.tracking.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    before = _prepared_at(config)  # prepared already, and up to date: not prepared again
    data = config.data
    ensure_dataset(data.source, data.raw, data.dir, data.mapping)
    assert _prepared_at(config) == before


@pytest.mark.private_data
def test_a_private_data_test_gets_its_own_unprepared_raw_copy(config, successor_data, tmp_path):
    assert Path(config.data.raw) == tmp_path / "raw"
    assert Path(config.data.dir) == tmp_path / "dataset" and not Path(config.data.dir).exists()
    assert (tmp_path / "raw" / "events.csv").read_bytes() == (
        successor_data / "raw" / "events.csv").read_bytes()


def test_changing_the_shared_data_fails_the_test_and_makes_the_data_again(tmp_path):
    _write_prepared(tmp_path)
    events = tmp_path / "raw" / "events.csv"
    original = events.read_text()
    with (pytest.raises(pytest.fail.Exception, match="t1 changed .*private_data"),
          unchanged(tmp_path, "t1")):
        events.write_text(original + "u_new,i1,5000\n")
    assert events.read_text() == original
    info = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    assert info["counts"]["interactions"] == original.count("\n") - 1  # prepared from it
    with pytest.raises(pytest.fail.Exception, match="t2 changed"), unchanged(tmp_path, "t2"):
        (tmp_path / "dataset" / "dataset.json").write_text("{}")
    with unchanged(tmp_path, "t3"):  # reading is fine
        events.read_text()
