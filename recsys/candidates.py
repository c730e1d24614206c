"""Batch top-K candidates for every user (or a user list): parquet parts + a manifest, resumable.

`export_candidates(run_dir)` rebuilds the run's best model, indexes its item vectors with faiss
(only the items the allow/deny lists let through), and for each user searches the user vector of
the whole known history, drops the items the user already had, and keeps the best K. Users are
cut into fixed parts of `export.part_users`; each part is one `part-NNNNN.parquet`
(user_id, rank, item_id, score, stage), written to a temp file and renamed. `_job.json` (what is
being exported) comes first, `_manifest.json` (parts, rows, sha256) last. Rerunning the same job
skips the parts already there, so a killed export ends byte-identical to an uninterrupted one.
Under torchrun, rank r writes the parts i with i % world == r and rank 0 writes the manifest.
The work on vectors (search, drop the seen, keep K) lives in `recsys.candidate_search`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from features.ids import PAD, IdMap
from recsys import index as ann
from recsys.atomic import atomic_path, write_json
from recsys.candidate_search import Catalogue, SearchedPart, build_catalogue, search_part
from recsys.config import ExportConfig, apply_override, config_from_dict, config_to_dict
from recsys.data.split import Split
from recsys.distributed import Worker, barrier, process_group, share
from recsys.export import batch_user_vectors, full_histories
from recsys.runs import load_run
from serving.store import file_sha256

log = logging.getLogger(__name__)

JOB_FILE, MANIFEST_FILE = "_job.json", "_manifest.json"
PART_DELAY_ENV = "RECSYS_EXPORT_PART_DELAY"  # test-only: seconds to sleep after each part
# Dictionary-encode user_id, rank and stage (few distinct values a part), and item_id where it
# comes as a dictionary array (candidate_search._rows picks it where a part names few distinct
# items): dictionary arrays are written as they are, however large (hence the page limit),
# instead of found by hashing every row. Compress only item_id: scores and codes hardly
# compress. Min/max statistics for user_id only (a reader looking for a user can skip parts by
# them). The arrow schema is not stored: dictionary arrays read back as SCHEMA's plain types.
DICTIONARY_COLUMNS = ("user_id", "rank", "stage")
PARQUET_OPTIONS = {
    "dictionary_pagesize_limit": 1 << 30,
    "compression": {"user_id": "none", "rank": "none", "item_id": "snappy", "score": "none",
                    "stage": "none"},
    "write_statistics": ["user_id"],
}


def export_candidates(
    run_dir: str | Path, out: str | Path | None = None, *, k: int | None = None,
    users: Sequence[str] | None = None, overrides: Sequence[str] = (), **settings: Any,
) -> dict[str, Any]:
    """Write the candidates of `users` (raw ids; default all, in split order) under `out`.

    Settings: the run's `export` config section, then `overrides` ("export.key=value"), then
    keyword `settings` (ExportConfig fields), then `k`. `out` defaults to `export.out`, then
    `run_dir/candidates`. Returns a summary (rows, parts written / skipped, users/s ...).
    """
    run_dir = Path(run_dir)
    model, config, split = load_run(run_dir / "checkpoint" / "best")
    if not hasattr(model, "item_vectors"):
        raise ValueError(f"model {config.model.name!r} has no vectors to search candidates with")
    cfg = resolve_settings(config.export, overrides, {**settings, "k": k})
    out = Path(out or cfg.out or run_dir / "candidates")
    rows = user_rows(split.users, users)  # (n,) user rows, in part order
    items = offered_items(split.items, cfg)  # (m,) item indices the index holds
    job = job_doc(run_dir, cfg, split, rows, items)
    parts = [(s, min(s + cfg.part_users, len(rows))) for s in range(0, len(rows), cfg.part_users)]
    with process_group() as worker:
        # rank 0 checks and claims the dir; the others wait for its answer, so no part is
        # written before the claim and every rank stops with rank 0's reason
        state = share(_claim(out, job) if worker.is_main else None)
        if isinstance(state, Exception):
            raise state
        if state == "complete":
            return {"status": "already complete: nothing to do", "out": str(out),
                    **_totals(json.loads((out / MANIFEST_FILE).read_text()))}
        model = model.to(worker.device)
        summary = _write_parts(model, split, rows, items, cfg, out, job, parts, worker)
        barrier()  # every part is in place
        summary["status"] = "parts written; rank 0 writes the manifest"
        if worker.is_main:
            summary.update(_totals(write_manifest(out, job, cfg, parts)), status="complete")
    return {"out": str(out), "rank": worker.rank, "world": worker.world, **summary}


def read_id_list(path: str | Path) -> list[str]:
    """Raw ids from a text file, one a line (surrounding blanks and empty lines ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]


def resolve_settings(base: ExportConfig, overrides: Sequence[str],
                     settings: dict[str, Any]) -> ExportConfig:
    """`base` with "export.key=value" overrides and then keyword settings (None = keep)."""
    raw = {"export": config_to_dict(base)}
    for item in overrides:
        if not item.strip().startswith("export."):
            raise ValueError(f"override {item!r}: an export takes export.* keys only")
        apply_override(raw, item)
    raw["export"].update({key: v for key, v in settings.items() if v is not None})
    cfg = config_from_dict(raw).export
    for key in ("k", "part_users", "batch_users", "search_users"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"config key 'export.{key}' must be >= 1, got {getattr(cfg, key)}")
    return cfg


def user_rows(users: IdMap, wanted: Sequence[str] | None) -> np.ndarray:
    """(n,) int64 rows of `users` to export: all in split order, or `wanted` in its order."""
    if wanted is None:
        return np.arange(len(users), dtype=np.int64)
    wanted = list(wanted)
    if not wanted:
        raise ValueError("the user list is empty: nothing to export")
    index = users.index(wanted, missing="pad")  # (n,) PAD where unknown
    unknown = [u for u, i in zip(wanted, index, strict=True) if i == PAD]
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(wanted)} user ids are not in the run's data, "
                         f"e.g. {unknown[:5]}")
    uniq, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"user ids listed twice, e.g. {list(users.lookup(uniq[counts > 1][:5]))}")
    return index - 1


def offered_items(items: IdMap, cfg: ExportConfig) -> np.ndarray:
    """(m,) sorted item indices (1-based) allowed by `allow_items` and not in `deny_items`;
    an error unless at least `k` remain."""
    keep = np.ones(items.size_with_pad, dtype=bool)  # (n_items + 1,)
    keep[PAD] = False
    for path, allow in ((cfg.allow_items, True), (cfg.deny_items, False)):
        if path is None:
            continue
        ids = read_id_list(path)
        if allow and not ids:
            raise ValueError(f"allow list {path} is empty: no item could be offered")
        index = items.index(ids, missing="pad")
        if (index == PAD).any():  # business lists often name retired items: warn, go on
            log.warning("%s: %d ids not in the catalogue, e.g. %s", path, (index == PAD).sum(),
                        [i for i, x in zip(ids, index, strict=True) if x == PAD][:5])
        listed = np.zeros_like(keep)
        listed[index[index != PAD]] = True
        keep &= listed if allow else ~listed
    offered = np.flatnonzero(keep)
    if cfg.k > len(items):
        raise ValueError(f"k={cfg.k} is larger than the catalogue ({len(items)} items)")
    if cfg.k > len(offered):
        raise ValueError(f"k={cfg.k} but the allow/deny lists leave only {len(offered)} items")
    return offered


def job_doc(run_dir: Path, cfg: ExportConfig, split: Split, rows: np.ndarray,
            items: np.ndarray) -> dict[str, Any]:
    """What this export is: run, weights, settings, users and offered items; `job` hashes it."""
    settings = config_to_dict(cfg)
    paths = {key: settings.pop(key) for key in ("out", "allow_items", "deny_items")}
    identity = {
        "run_id": run_dir.name,
        "weights_sha256": file_sha256(run_dir / "checkpoint" / "best" / "model.safetensors"),
        "settings": settings,  # the lists count through their content below, not their paths
        "users": {"count": len(rows), "sha256": _ids_sha256(split.users.ids[rows])},
        "items": {"count": len(items), "sha256": _ids_sha256(split.items.ids[items - 1])},
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"job": digest, **identity, "paths": paths}


def _claim(out: Path, job: dict[str, Any]) -> str | Exception:
    """Rank 0: check `out` belongs to this job (else an error, nothing touched) and claim it.

    Returns "complete" when a manifest of this job lists parts that are all there, else "todo".
    """
    try:
        docs = {name: _read_json(out / name) for name in (JOB_FILE, MANIFEST_FILE)}
        for name, doc in docs.items():
            if doc is not None and doc.get("job") != job["job"]:
                raise ValueError(f"{out} holds another export ({name} differs in "
                                 f"{_differences(doc, job)}); nothing was changed: "
                                 "use another --out or remove that dir")
        if docs == {JOB_FILE: None, MANIFEST_FILE: None} and out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no {JOB_FILE}: not a candidates "
                             "export; nothing was changed")
    except ValueError as err:
        return err
    manifest = docs[MANIFEST_FILE]
    if manifest is not None and all((out / p["file"]).is_file() for p in manifest["parts"]):
        return "complete"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".part-*.tmp.parquet"):  # left by a killed writer
        stale.unlink()
    if docs[JOB_FILE] is None:
        write_json(out / JOB_FILE, job)
    return "todo"


def _write_parts(model: nn.Module, split: Split, rows: np.ndarray, items: np.ndarray,
                 cfg: ExportConfig, out: Path, job: dict[str, Any],
                 parts: list[tuple[int, int]], worker: Worker) -> dict[str, Any]:
    """Write this rank's missing parts; return what it did."""
    with torch.inference_mode():
        vectors = model.item_vectors()[1:].float().cpu().numpy()  # (n_items, dim)
    catalogue = build_catalogue(vectors, items, cfg)
    histories = full_histories(split)
    item_ids = pa.array(split.items.ids, pa.string())  # (n_items,) converted once, taken per row
    mine = [i for i in range(len(parts)) if i % worker.world == worker.rank]
    delay = float(os.environ.get(PART_DELAY_ENV, "0"))
    done = {"parts_written": 0, "parts_skipped": 0, "users_searched": 0}
    bar = tqdm(total=sum(parts[i][1] - parts[i][0] for i in mine), unit=" users",
               desc=f"candidates rank {worker.rank}/{worker.world}")
    start = time.perf_counter()
    concurrent = ann.search_threads(catalogue.index) > 1
    with PartWriter(job["job"]) as writer:
        for i in mine:
            path, part = out / f"part-{i:05d}.parquet", rows[parts[i][0]:parts[i][1]]
            if part_done(path, job["job"]):
                done["parts_skipped"] += 1
                bar.update(len(part))
                continue
            searched = _search_part(model, split, histories, part, catalogue, cfg, bar)
            # the table's second search may share the index with the next part's only on a CPU
            writer.write(path, partial(searched.table, item_ids) if concurrent
                         else searched.table(item_ids))
            done["parts_written"] += 1
            done["users_searched"] += len(part)
            time.sleep(delay)
    bar.close()
    seconds = time.perf_counter() - start
    return {**done, "seconds": round(seconds, 3),
            "users_per_s": round(done["users_searched"] / max(seconds, 1e-9), 1)}


def _search_part(model: nn.Module, split: Split, histories: list[np.ndarray], part: np.ndarray,
                 catalogue: Catalogue, cfg: ExportConfig, bar: tqdm) -> SearchedPart:
    """The users `part` (user rows) searched, their table yet to make."""

    def batches():  # the model forward happens here, one batch at a time
        for start in range(0, len(part), cfg.batch_users):
            batch = part[start:start + cfg.batch_users]  # (B,) user rows
            seen = [histories[r] for r in batch]
            yield batch_user_vectors(model, seen, batch), seen, split.users.ids[batch]

    return search_part(batches(), catalogue, cfg, bar)


def write_part(path: Path, table: pa.Table, job: str) -> None:
    """Write one part atomically; a failed write leaves no file and says how to go on."""
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    dictionaries = [f.name for f in table.schema
                    if f.name in DICTIONARY_COLUMNS or pa.types.is_dictionary(f.type)]
    try:
        with atomic_path(path) as tmp, pq.ParquetWriter(
                tmp, table.schema, store_schema=False, use_dictionary=dictionaries,
                **PARQUET_OPTIONS) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({**meta, "recsys.job": job})
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); no part of it "
                      "was kept and no manifest written: free space and rerun the same command "
                      "to resume") from err


class PartWriter:
    """`write_part` on a thread of its own, one part at a time: part i is written while the
    caller searches part i + 1 (a write is single-threaded, and would leave a core idle).

    `write` waits for the previous part's write first, so at most two parts are in memory; a
    failed write raises at the next `write` or on leaving the block, which waits for the last.
    Given a function instead of a table, the thread also makes the table by calling it.
    """

    def __init__(self, job: str):
        self.job = job
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="part-writer")
        self._pending: Future | None = None

    def write(self, path: Path, table: pa.Table | Callable[[], pa.Table]) -> None:
        self._wait()
        self._pending = self._thread.submit(self._write, path, table)

    def _write(self, path: Path, table: pa.Table | Callable[[], pa.Table]) -> None:
        write_part(path, table if isinstance(table, pa.Table) else table(), self.job)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, error_type: type | None, *_: Any) -> None:
        try:
            if error_type is None:
                self._wait()
        finally:  # on an error, too, the write under way ends (whole or not at all)
            self._thread.shutdown(wait=True)


def part_done(path: Path, job: str) -> bool:
    """Whether `path` is a readable part of this job (a damaged one is written again)."""
    if not path.is_file():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as err:
        log.warning("%s is unreadable (%s): writing it again", path, err)
        return False
    return meta.get(b"recsys.job") == job.encode()


def write_manifest(out: Path, job: dict[str, Any], cfg: ExportConfig,
                   parts: list[tuple[int, int]]) -> dict[str, Any]:
    """Rank 0, after every part is written: `_manifest.json` with per-part rows and sha256."""
    entries = []
    for i, (start, stop) in enumerate(parts):
        path = out / f"part-{i:05d}.parquet"
        if not part_done(path, job["job"]):
            raise ValueError(f"{path} is missing or not of this job: the manifest is not written")
        entries.append(part_entry(path, stop - start, "short_users"))
    identity = {key: v for key, v in job.items() if key not in ("settings", "paths")}
    doc = {**identity, "config": config_to_dict(cfg), "rows": sum(e["rows"] for e in entries),
           "short_users": sum(e["short_users"] for e in entries), "parts": entries,
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    write_json(out / MANIFEST_FILE, doc)
    return doc


def part_entry(path: Path, users: int, counted: str) -> dict[str, Any]:
    """A written part's manifest entry: file, users, rows, the count its metadata keeps as
    `recsys.<counted>` (e.g. short_users), sha256."""
    meta = pq.read_metadata(path)
    return {"file": path.name, "users": users, "rows": meta.num_rows,
            counted: int(meta.metadata[f"recsys.{counted}".encode()]), "sha256": file_sha256(path)}


def _totals(manifest: dict[str, Any]) -> dict[str, Any]:
    """The summary lines a manifest answers; short_users > 0 means a catalogue ran out."""
    return {"run_id": manifest["run_id"], "k": manifest["config"]["k"],
            "users": manifest["users"]["count"], "parts": len(manifest["parts"]),
            "rows": manifest["rows"], "short_users": manifest["short_users"]}


def _differences(doc: dict[str, Any], job: dict[str, Any]) -> str:
    """Which parts of the job identity `doc` (a _job.json or _manifest.json) does not share."""
    keys = ("run_id", "weights_sha256", "users", "items")
    diff = [key for key in keys if doc.get(key) != job[key]]
    theirs = doc.get("settings") or doc.get("config") or {}  # _job.json or _manifest.json
    diff += [f"export.{key}" for key, v in job["settings"].items() if theirs.get(key) != v]
    return ", ".join(diff) or "job hash"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); nothing was changed") from err


def _ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()
