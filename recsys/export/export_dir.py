"""The dir a batch export writes: parquet parts, `_job.json` first, `_manifest.json` last.

Shared by the candidates export (`recsys.export.candidates`) and the reranked one
(`recsys.export.reranked`). An export holds its dir for as long as it writes (`hold_dir`, a lock
that dies with the process), checks that the dir is its own or free (`check_dir`: another job's
parts are refused, a claim no part followed is not; a finished export's parts are checked
against the manifest's sha256) and claims it (`claim_dir`) only once its settings proved good.
Parts are written atomically, each tagged with the job (`write_part`, `part_done`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.runtime.atomic import atomic_path, write_json
from serving.store import file_sha256

log = logging.getLogger(__name__)

JOB_FILE, MANIFEST_FILE = "_job.json", "_manifest.json"
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


@contextmanager
def hold_dir(out: Path) -> Iterator[None]:
    """Hold `out` (made if missing) for the block: another export into it meanwhile is refused
    instead of mixing its parts in. The lock (flock) dies with its process, so a killed export
    leaves none; a dir made here and still empty on leaving is removed."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is not a dir: an export writes a dir of parts; nothing was "
                         "changed")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        _lock(fd, out)
        yield
    finally:
        if made:
            with suppress(OSError):  # not empty: the export wrote something
                out.rmdir()
        os.close(fd)  # after the rmdir: nobody else takes the dir between the two


def _lock(fd: int, out: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"{out} is being written by another export right now; nothing was "
                         "changed: wait for it to end or use another --out") from None
    except OSError as err:  # a file system without locks (some FUSE, Lustre without flock)
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning("cannot lock %s (%s): another export into it at the same time would not "
                    "be refused", out, err.strerror)


def check_dir(out: Path, job: dict[str, Any]) -> str:
    """Rank 0, holding `out`: "complete" when it is this job's finished export, "todo" when
    it is to write or finish; a ValueError, nothing touched, when it is another's.

    A claim (_job.json) that no part or manifest followed (its export failed first) is no
    export: the next job takes the dir. A finished export's parts are checked against the
    manifest's sha256: those damaged or deleted since go, then the manifest (a dir with no
    manifest is resumed, and `part_done` would take a damaged part with a good footer).
    """
    docs = {name: _read_json(out / name) for name in (JOB_FILE, MANIFEST_FILE)}
    written = docs[MANIFEST_FILE] is not None or any(out.glob("part-*.parquet"))
    for name, doc in docs.items():
        if doc is not None and doc.get("job") != job["job"] and (written or name != JOB_FILE):
            raise ValueError(f"{out} holds another export ({name} differs in "
                             f"{_differences(doc, job)}); nothing was changed: "
                             "use another --out or remove that dir")
    if docs == {JOB_FILE: None, MANIFEST_FILE: None} and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {JOB_FILE}: not a candidates "
                         "export; nothing was changed")
    manifest = docs[MANIFEST_FILE]
    if manifest is None:
        return "todo"
    damaged = damaged_parts(out, manifest)
    if not damaged:
        return "complete"
    log.warning("%s: %s missing or changed since the export (sha256 differs from %s): writing "
                "them again", out, damaged, MANIFEST_FILE)
    claim_dir(out, job)  # the manifest may have been the dir's only claim
    for name in damaged:
        (out / name).unlink(missing_ok=True)
    (out / MANIFEST_FILE).unlink()
    return "todo"


def claim_dir(out: Path, job: dict[str, Any]) -> None:
    """Rank 0, holding `out`, once the job's settings proved good: `_job.json` names this job,
    and no temp part of a killed writer is left."""
    for stale in out.glob(".part-*.tmp.parquet"):
        stale.unlink()
    if (_read_json(out / JOB_FILE) or {}).get("job") != job["job"]:
        write_json(out / JOB_FILE, job)


def finished(out: Path) -> bool:
    """Whether `out` holds a finished export whose parts are all as its manifest says (an
    unreadable manifest is not finished: the export runs again and says what is wrong)."""
    try:
        manifest = _read_json(out / MANIFEST_FILE)
        return manifest is not None and not damaged_parts(out, manifest)
    except (ValueError, OSError):
        return False


def damaged_parts(out: Path, manifest: dict[str, Any]) -> list[str]:
    """The parts `manifest` lists that are missing from `out` or differ from their sha256."""
    parts = manifest.get("parts")
    if not isinstance(parts, list) or not all(map(_is_part_entry, parts)):
        raise ValueError(f"{out / MANIFEST_FILE}: 'parts' must be a list of {{file, sha256}} "
                         "of part-*.parquet files; nothing was changed: remove that dir or "
                         "use another --out")
    return [p["file"] for p in parts
            if not ((out / p["file"]).is_file() and file_sha256(out / p["file"]) == p["sha256"])]


def _is_part_entry(entry: Any) -> bool:
    """A manifest entry naming a part of this dir (never a path elsewhere, which a rewrite would
    delete) and its sha256."""
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("file"), str) and "/" not in entry["file"]
            and Path(entry["file"]).match("part-*.parquet"))


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


def part_entry(path: Path, users: int, counted: str) -> dict[str, Any]:
    """A written part's manifest entry: file, users, rows, the count its metadata keeps as
    `recsys.<counted>` (e.g. short_users), sha256."""
    meta = pq.read_metadata(path)
    return {"file": path.name, "users": users, "rows": meta.num_rows,
            counted: int(meta.metadata[f"recsys.{counted}".encode()]), "sha256": file_sha256(path)}


def _differences(doc: dict[str, Any], job: dict[str, Any]) -> str:
    """Which parts of the job identity `doc` (a _job.json or _manifest.json) does not share."""
    keys = [key for key in job if key not in ("job", "settings", "paths")]
    diff = [key for key in keys if doc.get(key) != job[key]]
    theirs = doc.get("settings") or doc.get("config")  # _job.json or _manifest.json
    theirs = theirs if isinstance(theirs, dict) else {}
    diff += [f"export.{key}" for key, v in job.get("settings", {}).items()
             if theirs.get(key) != v]
    return ", ".join(diff) or "job hash"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None where there is no file; a ValueError naming the file
    where it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); nothing was changed") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path} holds a JSON {type(doc).__name__}, not an object: not an "
                         "export's file; nothing was changed")
    return doc
