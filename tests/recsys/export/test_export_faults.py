"""Exports that fail, are damaged afterwards or meet a bad --out: nothing claimed, nothing
half-written, nothing damaged passed off as complete (issue 15, class 5)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import main
from recsys.config import config_from_dict, config_to_dict
from recsys.export import candidates, embeddings, export_dir
from recsys.export.candidates import export_candidates
from recsys.export.reranked import export_reranked
from recsys.train.loop import fit
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[3]
PARTS = {"part_users": 40}  # 120 users: 3 parts


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def run(root, successor_data) -> Path:
    """One tiny SASRec run (120 users, 30 items) shared by the tests of this file."""
    return fit(tiny_config(root, successor_data, epochs=1)).run_dir


@pytest.fixture(scope="module")
def rerank_run(root, successor_data, run, tiny_model_dir) -> Path:
    """A tiny listwise reranker over `run`'s top 10."""
    raw = config_to_dict(tiny_config(root, successor_data, epochs=1, batch_size=32))
    raw["model"] = {"name": "reranker", "reranker": {
        "task": "listwise", "retrieval_run": str(run), "candidates": 10, "train_positions": 3,
        "history_stats": False, "blend": [0.0], "dim": 8, "text": ["title"],
        "max_len": 8, "dense_hidden": [16], "over_hidden": [16],
        "encoder": {"path": str(tiny_model_dir), "cache_dir": str(root / "cache")}}}
    raw["train"]["loss"] = {"list_size": 6}
    raw["export"] = {"k": 5}
    return fit(config_from_dict(raw)).run_dir


def _files(out: Path) -> dict[str, bytes]:
    """The parts of an export and its manifest without its creation time."""
    files = {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest.pop("created", None)
    return {**files, "_manifest.json": json.dumps(manifest, sort_keys=True).encode()}


def _cli(run: Path, out: Path, *args: str) -> list[str]:
    return ["export", "--run", str(run), "--what", "candidates", "--k", "5", "--out", str(out),
            "--set", "export.part_users=40", *args]


# -- a failed export claims nothing ---------------------------------------------------------

@pytest.mark.parametrize("spec", ["IVF_typo", "IVF64,Flat"])  # unparsable; more lists than items
def test_a_bad_index_spec_claims_nothing_and_the_corrected_command_runs(run, tmp_path, capsys,
                                                                       spec):
    out = tmp_path / "c"
    assert main([*_cli(run, out), "--set", f"export.index={spec}"]) == 2
    assert spec in capsys.readouterr().err
    assert not out.exists()  # made for the lock, removed again: nothing claims it
    assert main(_cli(run, out)) == 0
    assert json.loads((out / "_manifest.json").read_text())["rows"] == 600


def test_a_claim_that_wrote_no_part_goes_to_the_next_job(run, tmp_path, monkeypatch):
    out = tmp_path / "c"

    def model_fails(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(candidates, "batch_user_vectors", model_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        export_candidates(run, out, k=5, **PARTS)
    assert sorted(p.name for p in out.iterdir()) == ["_job.json"]
    monkeypatch.undo()
    summary = export_candidates(run, out, k=4, **PARTS)  # another job: k differs
    assert summary["status"] == "complete" and summary["parts_written"] == 3
    assert json.loads((out / "_job.json").read_text())["settings"]["k"] == 4


def test_a_dir_with_parts_of_another_job_is_still_refused(run, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real, calls = export_dir.write_part, []

    def second_part_fails(path, table, job):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, table, job)

    monkeypatch.setattr(export_dir, "write_part", second_part_fails)
    with pytest.raises(OSError, match="No space"):
        export_candidates(run, out, k=5, **PARTS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["_job.json", "part-00000.parquet"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"holds another export \(_job.json differs in export.k"):
        export_candidates(run, out, k=4, **PARTS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert export_candidates(run, out, k=5, **PARTS)["parts_skipped"] == 1


# -- a part damaged after the export is found and written again -----------------------------

def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    _flip, lambda p: os.truncate(p, p.stat().st_size // 2), Path.unlink])
def test_a_part_damaged_after_the_export_is_written_again(run, tmp_path, damage):
    out = tmp_path / "c"
    export_candidates(run, out, k=5, **PARTS)
    clean = _files(out)
    damage(out / "part-00001.parquet")
    summary = export_candidates(run, out, k=5, **PARTS)
    assert summary["status"] == "complete"
    assert (summary["parts_written"], summary["parts_skipped"]) == (1, 2)
    assert _files(out) == clean
    again = export_candidates(run, out, k=5, **PARTS)
    assert again["status"] == "already complete: nothing to do"


def _manifest_without(out: Path, key: str, **replace) -> dict:
    doc = json.loads((out / "_manifest.json").read_text())
    doc.pop(key)
    return {**doc, **replace}


@pytest.mark.parametrize(("name", "doc"), [
    ("_job.json", lambda out: []),
    ("_manifest.json", lambda out: _manifest_without(out, "parts")),
    ("_manifest.json", lambda out: _manifest_without(out, "parts", parts={"a": 1})),
    ("_manifest.json", lambda out: _manifest_without(out, "parts", parts=[["part-00000"]])),
])
def test_a_damaged_job_or_manifest_file_is_a_one_line_error_naming_it(run, tmp_path, name,
                                                                       doc):
    out = tmp_path / "c"
    export_candidates(run, out, k=5, **PARTS)
    (out / name).write_text(json.dumps(doc(out)))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError) as err:
        export_candidates(run, out, k=5, **PARTS)
    assert str(out / name) in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    if name == "_manifest.json":  # the pipeline runs the export, which says why
        assert not export_dir.finished(out)


def test_a_manifest_naming_a_file_outside_its_dir_deletes_nothing(run, tmp_path):
    out, victim = tmp_path / "c", tmp_path / "victim.txt"
    export_candidates(run, out, k=5, **PARTS)
    victim.write_text("mine")
    doc = _manifest_without(out, "parts", parts=[{"file": "../victim.txt", "sha256": "0"}])
    (out / "_manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="'parts' must be a list"):
        export_candidates(run, out, k=5, **PARTS)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("text", ["{}", "[]", "{not json", "\xff"])
def test_an_unreadable_manifest_is_not_finished(tmp_path, text):
    (tmp_path / "_manifest.json").write_text(text, encoding="latin-1")
    assert export_dir.finished(tmp_path) is False


# -- bad --out, lists and concurrent exports ------------------------------------------------

def test_an_out_that_is_a_file_is_a_clear_error(run, tmp_path, capsys):
    (tmp_path / "c").write_text("mine")
    assert main(_cli(run, tmp_path / "c")) == 2
    assert "is not a dir" in capsys.readouterr().err
    assert (tmp_path / "c").read_text() == "mine"


@pytest.mark.parametrize("key", ["allow_items", "deny_items"])
def test_a_missing_item_list_names_its_key(run, tmp_path, capsys, key):
    assert main([*_cli(run, tmp_path / "c"), "--set", f"export.{key}={tmp_path}/nope.txt"]) == 2
    err = capsys.readouterr().err
    assert f"export.{key}" in err and "nope.txt" in err
    assert not (tmp_path / "c").exists()


# the CLI with every part write held until the gate file (argv[1]) appears
GATED_CLI = """
import sys, time
from pathlib import Path
from recsys.export import export_dir
from recsys.cli import main
gate, write = Path(sys.argv[1]), export_dir.write_part
def held(path, table, job):
    while not gate.exists():
        time.sleep(0.02)
    write(path, table, job)
export_dir.write_part = held
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_export_into_a_dir_being_written_is_refused(run, tmp_path):
    out, gate = tmp_path / "c", tmp_path / "gate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", GATED_CLI, str(gate), *_cli(run, out)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "_job.json").exists():  # claimed: held until the gate opens
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first export claimed nothing"
            time.sleep(0.05)
        with pytest.raises(ValueError, match="being written by another export"):
            export_candidates(run, out, k=5, **PARTS)  # the same job: refused all the same
        assert sorted(p.name for p in out.iterdir()) == ["_job.json"]
    finally:
        gate.touch()
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert export_candidates(run, out, k=5, **PARTS)["status"] == "already complete: nothing to do"


def test_a_file_system_without_locks_still_exports(run, tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(export_dir.fcntl, "flock", no_locks)
    assert export_candidates(run, tmp_path / "c", k=5, **PARTS)["status"] == "complete"
    assert "cannot lock" in caplog.text and "would not be refused" in caplog.text


# -- reranked export ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, -3])
def test_a_reranked_export_refuses_a_k_below_one(run, rerank_run, tmp_path, n):
    with pytest.raises(ValueError, match=f"--k must be >= 1, got {n}"):
        export_reranked(run, rerank_run, tmp_path / "r", n=n)
    assert not (tmp_path / "r").exists()


def test_a_reranked_export_with_a_typo_claims_nothing(run, rerank_run, tmp_path):
    with pytest.raises(ValueError, match="IVF_typo"):
        export_reranked(run, rerank_run, tmp_path / "r", overrides=("export.index=IVF_typo",))
    assert not (tmp_path / "r").exists()
    assert all((d / "_manifest.json").is_file() for d in run.glob("candidates-top10*"))
    assert export_reranked(run, rerank_run, tmp_path / "r")["rows"] == 600


def test_a_reranked_export_refuses_a_dir_of_other_files(run, rerank_run, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a candidates export"):
        export_reranked(run, rerank_run, tmp_path / "r")
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["notes.txt"]


def test_a_reranked_export_for_another_user_list_is_its_own_job(run, rerank_run, tmp_path):
    first = export_reranked(run, rerank_run, tmp_path / "a", users=["u1", "u2"])
    second = export_reranked(run, rerank_run, tmp_path / "b", users=["u3"])
    assert (first["rows"], second["rows"]) == (10, 5)
    with pytest.raises(ValueError, match="holds another export"):
        export_reranked(run, rerank_run, tmp_path / "a", users=["u3"])


def test_a_reranked_part_damaged_after_the_export_is_written_again(run, rerank_run, tmp_path):
    out = tmp_path / "r"
    export_reranked(run, rerank_run, out)
    clean = _files(out)
    _flip(out / "part-00000.parquet")
    export_reranked(run, rerank_run, out)
    assert _files(out) == clean


# -- embeddings export ----------------------------------------------------------------------

def _current(out: Path) -> dict[str, str]:
    return {name: (out / name / "CURRENT").read_text() for name in ("items", "users")}


def test_an_embeddings_export_that_fails_leaves_the_live_pair_alone(run, tmp_path, monkeypatch):
    out = tmp_path / "emb"
    real = embeddings.user_vectors

    def one_nan_user(*args, **kwargs):
        vectors = real(*args, **kwargs)
        vectors[3] = np.nan
        return vectors

    def model_fails(*args, **kwargs):
        raise RuntimeError("model raised")

    monkeypatch.setattr(embeddings, "user_vectors", one_nan_user)
    with pytest.raises(ValueError, match=r"users: vectors must be finite.*u3"):
        embeddings.export_embeddings(run, out)  # the first export: no version is left live
    assert not list(out.glob("*/*"))
    monkeypatch.undo()
    embeddings.export_embeddings(run, out)
    before = _current(out), sorted(p.name for p in out.glob("*/*"))
    for failing, error in ((one_nan_user, ValueError), (model_fails, RuntimeError)):
        monkeypatch.setattr(embeddings, "user_vectors", failing)
        with pytest.raises(error):
            embeddings.export_embeddings(run, out)
        assert (_current(out), sorted(p.name for p in out.glob("*/*"))) == before


def test_no_current_moves_before_both_new_versions_are_written(run, tmp_path, monkeypatch):
    out = tmp_path / "emb"
    embeddings.export_embeddings(run, out)
    live, real, seen = _current(out), embeddings.write_store, []

    def recording(*args, **kwargs):
        seen.append(_current(out))  # what a reader finds while each store is written
        return real(*args, **kwargs)

    monkeypatch.setattr(embeddings, "write_store", recording)
    summary = embeddings.export_embeddings(run, out)
    assert seen == [live, live]
    assert _current(out) == {name: Path(summary[f"{name}_path"]).name + "\n"
                             for name in ("items", "users")}


def test_a_failed_current_switch_puts_the_switched_store_back(run, tmp_path, monkeypatch):
    real = embeddings.switch_current

    def users_fails(root, version):
        if root.name == "users":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(root, version)

    embeddings.export_embeddings(run, tmp_path / "live")
    before = _current(tmp_path / "live"), sorted(p.name for p in tmp_path.glob("live/*/*"))
    monkeypatch.setattr(embeddings, "switch_current", users_fails)
    for out in (tmp_path / "live", tmp_path / "first"):  # a previous version, and none
        with pytest.raises(OSError, match="No space"):
            embeddings.export_embeddings(run, out)
    assert (_current(tmp_path / "live"),
            sorted(p.name for p in tmp_path.glob("live/*/*"))) == before
    assert not list(tmp_path.glob("first/*/*"))
