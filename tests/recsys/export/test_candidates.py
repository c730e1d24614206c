import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.cli import main
from recsys.config import ExportConfig
from recsys.export import candidate_search, candidates, export_dir
from recsys.export.candidate_search import SCHEMA, build_catalogue, search_part
from recsys.export.candidates import export_candidates
from recsys.export.embeddings import full_histories, user_vectors
from recsys.recipes import load_run
from recsys.runtime.distributed import Worker
from recsys.train.loop import fit
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run(tmp_path_factory, successor_data) -> Path:
    """One tiny SASRec run (120 users, 30 items) shared by the tests of this file."""
    return fit(tiny_config(tmp_path_factory.mktemp("candidates"), successor_data,
                           epochs=2)).run_dir


@pytest.fixture(scope="module")
def scores(run):
    """(users, items) brute-force user·item scores with seen items at -inf, and the split."""
    model, _, split = load_run(run / "checkpoint" / "best")
    with torch.inference_mode():
        items = model.item_vectors()[1:].numpy()  # (n_items, dim)
    full = user_vectors(model, split) @ items.T  # (n_users, n_items)
    for row, history in enumerate(full_histories(split)):
        full[row, history - 1] = -np.inf
    return full, split


def _frame(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])


def _files(out: Path) -> dict[str, bytes]:
    """Every file of an export (the manifest without its creation time)."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    manifest = json.loads(files.pop("_manifest.json"))
    manifest.pop("created")
    return {**files, "_manifest.json": json.dumps(manifest, sort_keys=True).encode()}


def _expected(full: np.ndarray, split, k: int, rows=None, items=None):
    """Brute-force top-k (items, scores) per user row among the allowed `items` (1-based)."""
    full = full if items is None else np.where(np.isin(np.arange(1, full.shape[1] + 1), items),
                                               full, -np.inf)
    rows = np.arange(len(full)) if rows is None else rows
    result = {}
    for row in rows:
        order = np.argsort(-full[row], kind="stable")[:k]
        order = order[np.isfinite(full[row, order])]
        result[split.users.ids[row]] = (list(split.items.ids[order]), full[row, order])
    return result


def _check_equal(frame: pd.DataFrame, expected: dict) -> None:
    assert list(frame["user_id"].unique()) == list(expected)
    for user, group in frame.groupby("user_id", sort=False):
        items, scores = expected[user]
        assert list(group["rank"]) == list(range(1, len(items) + 1))
        assert list(group["item_id"]) == items
        np.testing.assert_allclose(group["score"], scores, rtol=1e-4, atol=1e-4)


def test_candidates_are_the_exact_top_k_of_unseen_items(run, scores, tmp_path):
    full, split = scores
    # k = 15 of 30 items with up to 14 seen: only the over-fetch leaves 15 for everyone
    summary = export_candidates(run, tmp_path / "c", k=15, part_users=50, batch_users=7)
    frame = _frame(tmp_path / "c")
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "stage"]
    assert len(frame) == 120 * 15 and set(frame["stage"]) == {"retrieval"}
    assert frame.groupby("user_id").size().eq(15).all()
    _check_equal(frame, _expected(full, split, 15))
    histories = dict(zip(split.users.ids, full_histories(split), strict=True))
    for user, group in frame.groupby("user_id"):
        seen = set(split.items.ids[histories[user] - 1])
        assert not seen & set(group["item_id"])

    manifest = json.loads((tmp_path / "c" / "_manifest.json").read_text())
    assert [p["file"] for p in manifest["parts"]] == [f"part-0000{i}.parquet" for i in range(3)]
    schema = pq.read_schema(tmp_path / "c" / "part-00000.parquet")  # plain types, not dictionaries
    assert schema.remove_metadata() == SCHEMA and schema.metadata[b"recsys.users"] == b"50"
    assert [p["users"] for p in manifest["parts"]] == [50, 50, 20]
    for part in manifest["parts"]:
        path = tmp_path / "c" / part["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == part["sha256"]
        assert pq.read_metadata(path).num_rows == part["rows"]
    assert manifest["rows"] == summary["rows"] == 1800 and manifest["run_id"] == run.name
    assert manifest["config"]["k"] == 15 and summary["short_users"] == 0
    assert summary["status"] == "complete" and summary["parts_written"] == 3
    assert not list((tmp_path / "c").glob(".*"))  # no temp file left


def test_a_catalogue_too_small_for_k_keeps_what_remains_and_says_so(run, scores, tmp_path):
    full, split = scores
    summary = export_candidates(run, tmp_path / "c", k=20)
    unseen = np.isfinite(full).sum(axis=1)  # (users,)
    frame = _frame(tmp_path / "c")
    sizes = frame.groupby("user_id", sort=False).size()
    np.testing.assert_array_equal(sizes.to_numpy(), np.minimum(unseen, 20))
    assert summary["short_users"] == int((unseen < 20).sum()) > 0
    _check_equal(frame, _expected(full, split, 20))


def test_allow_and_deny_lists_restrict_the_candidates(run, scores, tmp_path):
    full, split = scores
    allow = [f"i{i}" for i in range(20)] + ["retired-item"]  # unknown ids only warn
    (tmp_path / "allow.txt").write_text("\n".join(allow) + "\n")
    (tmp_path / "deny.txt").write_text("i0\n i1 \n\ni2\n")
    export_candidates(run, tmp_path / "c", k=4, allow_items=str(tmp_path / "allow.txt"),
                      deny_items=str(tmp_path / "deny.txt"))
    frame = _frame(tmp_path / "c")
    offered = {f"i{i}" for i in range(3, 20)}
    assert set(frame["item_id"]) <= offered
    _check_equal(frame, _expected(full, split, 4, items=split.items.index(sorted(offered))))


def test_a_user_list_is_exported_in_its_order_and_parts(run, scores, tmp_path, capsys):
    full, split = scores
    users = ["u7", "u3", "u100", "u0", "u55", "u9", "u1"]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    assert main(["export", "--run", str(run), "--what", "candidates", "--k", "3", "--users",
                 str(tmp_path / "users.txt"), "--out", str(tmp_path / "c"),
                 "--set", "export.part_users=3"]) == 0
    assert "rows" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "c").glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert list(pd.read_parquet(tmp_path / "c" / "part-00002.parquet")["user_id"]) == ["u1"] * 3
    rows = split.users.index(users) - 1
    _check_equal(_frame(tmp_path / "c"), _expected(full, split, 3, rows=rows))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"users": ["u1", "nobody", "u2", "ghost"]}, r"2 of 4 user ids .*\['nobody', 'ghost'\]"),
    ({"users": []}, "user list is empty"),
    ({"users": ["u1", "u1"]}, "listed twice"),
    ({"k": 31}, r"k=31 is larger than the catalogue \(30 items\)"),
    ({"k": 0}, r"export.k': 0 is out of range \(must be >= 1\)"),
    ({"part_users": -1}, "export.part_users': -1 is out of range"),
    ({"overrides": ["train.lr=1"]}, "export.* keys only"),
    ({"overrides": ["export.part_size=1"]}, "unknown config key 'export.part_size'"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(run, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_candidates(run, tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_filters_leaving_fewer_items_than_k_are_an_error(run, tmp_path):
    (tmp_path / "allow.txt").write_text("i1\ni2\n")
    with pytest.raises(ValueError, match="k=3 but the allow/deny lists leave only 2 items"):
        export_candidates(run, tmp_path / "c", k=3, allow_items=str(tmp_path / "allow.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="allow list .* is empty"):
        export_candidates(run, tmp_path / "c", allow_items=str(tmp_path / "empty.txt"))
    assert not (tmp_path / "c").exists()


def test_a_dir_of_another_run_or_other_settings_is_refused_untouched(run, tmp_path, capsys,
                                                                      successor_data):
    out = tmp_path / "c"
    export_candidates(run, out, k=5)
    before = _files(out)
    # another trained run, not a copy of `run` (load_run refuses a copied run dir)
    other = fit(tiny_config(tmp_path, successor_data, epochs=1)).run_dir
    with pytest.raises(ValueError, match=r"holds another export \(_job.json differs in run_id"):
        export_candidates(other, out, k=5)
    assert main(["export", "--run", str(run), "--what", "candidates", "--k", "4",
                 "--out", str(out)]) == 2
    assert "differs in export.k" in capsys.readouterr().err
    (out / "_job.json").unlink()  # a manifest alone also identifies the export
    with pytest.raises(ValueError, match="_manifest.json differs in run_id"):
        export_candidates(other, out, k=5)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a candidates export"):
        export_candidates(run, tmp_path / "junk", k=5)
    assert _files(out) == {k: v for k, v in before.items() if k != "_job.json"}
    assert export_candidates(run, out, k=5)["status"] == "already complete: nothing to do"


def test_a_failing_write_leaves_no_partial_part_and_a_rerun_completes(
    run, tmp_path, monkeypatch, capsys
):
    args = ["export", "--run", str(run), "--what", "candidates", "--k", "5",
            "--set", "export.part_users=40"]
    real_writer, calls = pq.ParquetWriter, []

    class DiskFullOnSecondPart(real_writer):  # the temp part is open and half written
        def write_table(self, table, *args, **kwargs):
            calls.append(table)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            super().write_table(table, *args, **kwargs)

    monkeypatch.setattr(export_dir.pq, "ParquetWriter", DiskFullOnSecondPart)
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "part-00001.parquet" in err and "No space left on device" in err and "rerun" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["_job.json",
                                                                  "part-00000.parquet"]
    monkeypatch.setattr(export_dir.pq, "ParquetWriter", real_writer)
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    assert _files(tmp_path / "c") == _files(tmp_path / "clean")


def _cli(run: Path, out: Path, *launcher: str) -> list[str]:
    # torchrun reads abbreviations of its own options anywhere (--run -> --run-path) unless
    # the script's arguments follow "--" (pytorch/pytorch#120601)
    return [sys.executable, *launcher, "-m", "recsys.cli", *(["--"] if launcher else []),
            "export", "--run", str(run),
            "--what", "candidates", "--k", "5", "--out", str(out),
            "--set", "export.part_users=10", "--set", "export.batch_users=4"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def test_a_killed_export_resumes_to_the_same_files(run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(run, out), cwd=REPO, env=_env(RECSYS_EXPORT_PART_DELAY="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "part-00000.parquet").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no part appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in out.glob("part-*"))
    assert 1 <= len(written) < 12 and not (out / "_manifest.json").exists()

    resumed = export_candidates(run, out, k=5, part_users=10, batch_users=4)
    assert resumed["parts_skipped"] == len(written)
    assert resumed["parts_written"] == 12 - len(written)
    export_candidates(run, tmp_path / "clean", k=5, part_users=10, batch_users=4)
    assert _files(out) == _files(tmp_path / "clean")


@pytest.mark.distributed
def test_torchrun_with_two_processes_writes_the_single_process_export(run, tmp_path):
    done = subprocess.run(
        _cli(run, tmp_path / "two", "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node", "2"),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(re.findall(r"parts_written +6\b", done.stdout)) == 2  # 12 parts, 6 per rank
    assert re.search(r"status +complete", done.stdout)
    export_candidates(run, tmp_path / "one", k=5, part_users=10, batch_users=4)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert len(_frame(tmp_path / "two")) == 600


@pytest.mark.parametrize("error", [AttributeError("'list' object has no attribute 'get'"),
                                   KeyError("parts"), ValueError("holds another export")])
def test_every_rank_raises_rank_0s_error_whatever_its_type(monkeypatch, error):
    sent = []

    def broadcast(value):  # as dist.broadcast_object_list: rank 0's value, pickled, to all
        if not sent:
            sent.append(pickle.dumps(value))
        return pickle.loads(sent[0])

    def step():
        raise error

    monkeypatch.setattr(candidates, "share", broadcast)
    with pytest.raises(type(error)) as on_main:
        candidates._on_main(Worker(0, 2, 0), step)
    assert str(on_main.value) == str(error)
    assert sent, "rank 0 raised without telling the other ranks, which would wait for ever"
    with pytest.raises(Exception) as on_other:
        candidates._on_main(Worker(1, 2, 0), step)  # rank 1 does not run the step
    assert str(error) in str(on_other.value)
    assert isinstance(on_other.value, ValueError) == isinstance(error, ValueError)


@pytest.mark.parametrize("spec", ["Flat", "IVF8,Flat"])
def test_a_searched_part_is_the_exact_top_k_unseen_with_long_histories(spec):
    """Histories long enough that one search per batch leaves users short: the part's second
    search must give what one search as wide as the largest need gives (exact here)."""
    rng = np.random.default_rng(0)
    items, users = rng.standard_normal((400, 16)).astype(np.float32), 300
    queries = rng.standard_normal((users, 16)).astype(np.float32)
    liked = np.argsort(-(queries @ items.T), axis=1) + 1  # (users, 400) best item first
    seen = [np.append(liked[u, :n], rng.integers(1, 401, size=n // 4))  # the best n, and some
            for u, n in enumerate(rng.integers(0, 150, size=users))]  # repeats count once
    cfg = ExportConfig(k=100, index=spec, nprobe=8)
    catalogue = build_catalogue(items, np.arange(1, 401), cfg)
    ids = np.array([f"u{i}" for i in range(users)], dtype=object)
    batches = ((queries[s:s + 64], seen[s:s + 64], ids[s:s + 64]) for s in range(0, users, 64))
    table = search_part(batches, catalogue, cfg).table(
        np.array([f"i{i}" for i in range(1, 401)], dtype=object))
    full = queries @ items.T
    for row, history in enumerate(seen):
        full[row, history - 1] = -np.inf
    best = np.argsort(-full, axis=1, kind="stable")[:, :100]  # (users, k) item rows
    assert table.column("user_id").to_pylist() == list(np.repeat(ids, 100))
    assert table.column("item_id").to_pylist() == [f"i{i + 1}" for i in best.ravel()]
    np.testing.assert_allclose(table.column("score").to_numpy(),
                               np.take_along_axis(full, best, axis=1).ravel(), rtol=1e-4, atol=1e-4)
    assert table.schema.metadata[b"recsys.short_users"] == b"0"


@pytest.mark.parametrize("n_keys", [0, 1, 5000, 2_000_000])
def test_the_seen_filter_flags_every_seen_pair_and_few_others(n_keys):
    """The filter that spares most search results a lookup among the seen pairs may flag a
    pair that was not seen (checked after), never miss one that was."""
    rng = np.random.default_rng(n_keys)
    keys = np.unique(rng.integers(0, 1 << 40, size=n_keys))
    others = np.setdiff1d(rng.integers(0, 1 << 40, size=100_000), keys)
    flagged, shift = candidate_search._bloom_filter(keys)
    assert flagged[candidate_search._slot(keys, shift)].all()
    assert flagged[candidate_search._slot(others, shift)].mean() < (0.05 if n_keys < 1e6 else 0.2)


def test_the_part_writer_writes_behind_in_order(monkeypatch):
    """`write` returns while the part is still being written; the next waits for it. A part
    given as a function is made on the writer's thread."""
    release, written, made_on = threading.Event(), [], []
    table = pa.table({"x": [1]})

    def slow_write(path, table, job):
        assert release.wait(timeout=10), "the caller never went on while the part was written"
        written.append((path, table.num_rows, job))

    def make_table():
        made_on.append(threading.current_thread())
        return table

    monkeypatch.setattr(export_dir, "write_part", slow_write)
    with export_dir.PartWriter("job") as writer:
        writer.write(Path("a"), table)
        assert written == []  # still writing a: the caller is free to search the next part
        release.set()
        writer.write(Path("b"), make_table)
    assert written == [(Path("a"), 1, "job"), (Path("b"), 1, "job")]
    assert made_on and made_on[0] is not threading.main_thread()


@pytest.mark.parametrize("failing", ["a", "b"])
def test_a_failed_background_write_raises_and_nothing_after_it_is_written(monkeypatch, failing):
    written = []

    def write(path, table, job):
        if path.name == failing:
            raise OSError(28, "No space left on device")
        written.append(path.name)

    monkeypatch.setattr(export_dir, "write_part", write)
    table = pa.table({"x": [1]})
    with pytest.raises(OSError, match="No space"), export_dir.PartWriter("job") as writer:
        writer.write(Path("a"), table)
        writer.write(Path("b"), table)  # a's error surfaces here; b's on leaving the block
        written.append("after b")
    assert written == ([] if failing == "a" else ["a", "after b"])


@pytest.mark.parametrize(("n_items", "dictionary"), [(30, True), (5000, False)])
def test_item_ids_are_written_once_per_part_where_few_are_distinct(tmp_path, n_items, dictionary):
    """200 users x K=20 rows name at most 30 distinct items (a dictionary pays) or up to 4,000
    of 5,000 (it does not): either way the part reads back as the plain SCHEMA, row for row.
    Nobody has seen anything here, which the search must take too."""
    rng = np.random.default_rng(0)
    items = rng.standard_normal((n_items, 8)).astype(np.float32)
    queries = rng.standard_normal((200, 8)).astype(np.float32)
    cfg = ExportConfig(k=20)
    item_ids = np.array([f"item-{i}" for i in range(1, n_items + 1)], dtype=object)
    ids = np.array([f"u{i}" for i in range(200)], dtype=object)
    table = search_part([(queries, [np.empty(0, np.int64)] * 200, ids)],
                        build_catalogue(items, np.arange(1, n_items + 1), cfg), cfg).table(item_ids)
    assert pa.types.is_dictionary(table.schema.field("item_id").type) == dictionary
    export_dir.write_part(tmp_path / "part.parquet", table, "job")
    back = pq.read_table(tmp_path / "part.parquet")
    assert back.schema.remove_metadata() == SCHEMA
    best = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :20]  # (200, 20) rows
    assert back.column("item_id").to_pylist() == list(item_ids[best.ravel()])
    encodings = pq.read_metadata(tmp_path / "part.parquet").row_group(0).column(2).encodings
    assert ("RLE_DICTIONARY" in encodings) == dictionary


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
@pytest.mark.parametrize("users", [1, 3])
def test_a_part_with_fewer_users_than_search_workers(spec, users):
    """Two search workers and a part of 1 or 3 users: no worker gets an empty batch, and
    every user gets the exact top K of their unseen items."""
    rng = np.random.default_rng(users)
    items = rng.standard_normal((700, 8)).astype(np.float32)
    queries = rng.standard_normal((users, 8)).astype(np.float32)
    cfg = ExportConfig(k=5, index=spec, nprobe=16)
    catalogue = build_catalogue(items, np.arange(1, 701), cfg)
    seen = [np.array([1, 2, 3])] * users
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        table = search_part([(queries, seen, np.array([f"u{i}" for i in range(users)]))],
                            catalogue, cfg).table(np.array([f"i{i}" for i in range(1, 701)]))
    finally:
        faiss.omp_set_num_threads(threads)
    scores = queries @ items.T
    scores[:, :3] = -np.inf  # items 1-3 seen
    best = np.argsort(-scores, axis=1, kind="stable")[:, :5] + 1
    assert table.column("item_id").to_pylist() == [f"i{i}" for i in best.ravel()]
