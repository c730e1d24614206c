"""Exported candidates by user, read from `candidates/part-*.parquet` + `_manifest.json`."""

from __future__ import annotations

import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.lookup import UnknownIdError
from serving.store import StoreError, file_sha256

MANIFEST = "_manifest.json"
COLUMNS = ["rank", "item_id", "score", "stage"]


class CandidateLookup:
    """Exported top-K candidates by user: `candidates/part-*.parquet` + `_manifest.json`.

    Opening reads only the `user_id` column of each part, to index where each user's rows lie
    (users' rows are contiguous, best first); `get` then decodes just the parquet row groups
    that hold them, keeping the last `cached_row_groups` decoded. The manifest is written last
    by the export, so a dir without one is an unfinished export and is refused.

    `refresh()` reopens the dir when its manifest changed (a new export written there, or
    `path` a symlink switched to another export dir); each `get` answers from one export.
    """

    def __init__(self, path: str | Path, *, verify: bool = False, cached_row_groups: int = 8):
        self.path = Path(path)
        self.verify, self.cached_row_groups = verify, cached_row_groups
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self._refused: tuple[tuple, StoreError] | None = None  # last export refused, its key
        self._live = _Export(self.path, verify, cached_row_groups)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._live.manifest

    @property
    def meta(self) -> dict[str, Any]:
        return self._live.meta

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._live.where

    def get(self, user_id: str, k: int | None = None) -> list[dict[str, Any]]:
        """The user's rows as dicts (rank, item_id, score, stage), best first, at most `k`.
        UnknownIdError for a user the export does not hold."""
        return self._live.get(user_id, k)

    def refresh(self) -> bool:
        """Reopen the dir if its `_manifest.json` is not the one open now; True if it was.

        A missing manifest or a broken export raises StoreError and the old one stays live.
        Until a refresh succeeds, a user whose part file was replaced since it was indexed
        gets a StoreError rather than rows read through a stale index.
        """
        with self._lock:
            try:
                text = (self.path / MANIFEST).read_text()
            except OSError as err:
                raise StoreError(f"cannot read {self.path / MANIFEST}: "
                                 f"{err.strerror or err}") from err
            if text == self._live.manifest_text:
                return False
            root = self.path.resolve()
            key = (root, text, _stamps(root))  # before reading: a change meanwhile shows next
            if key[2] is not None and self._refused is not None and self._refused[0] == key:
                # the same broken export as last time: indexing every part again on each
                # tick would only repeat the same error
                raise self._refused[1].with_traceback(None)
            try:
                live = _Export(self.path, self.verify, self.cached_row_groups)
            except StoreError as err:
                self._refused = (key, err)
                raise
            self._live, self._refused = live, None
            return True


class _Export:
    """One opened candidates export: the manifest, where each user's rows lie, open parts.
    Immutable after __init__. Parts are opened again on each row-group read (no file handle
    held a part: an export can have thousands), checked to be the files that were indexed."""

    def __init__(self, path: Path, verify: bool, cached_row_groups: int):
        self.path = path
        root = path.resolve()  # a symlink switched to a new export leaves this one whole
        manifest = root / MANIFEST
        try:
            self.manifest_text = manifest.read_text()
            self.manifest = json.loads(self.manifest_text)
            entries = self.manifest["parts"]
            files = [root / p["file"] for p in entries]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"not a finished candidates export: {manifest} is missing or "
                             f"unreadable ({err})") from err
        self.where: dict[str, tuple[int, int, int]] = {}  # user -> (part, first row, end row)
        self.group_ends: list[np.ndarray] = []  # per part: (row groups,) cumulative row counts
        self.parts: list[tuple[Path, tuple[int, ...]]] = []  # (file, identity when indexed)
        for n, (file, entry) in enumerate(zip(files, entries, strict=True)):
            self._index_part(n, file, entry, verify)
        self._row_group = lru_cache(maxsize=cached_row_groups)(self._read_row_group)

    @property
    def meta(self) -> dict[str, Any]:
        return {"path": str(self.path), "run_id": self.manifest.get("run_id"),
                "users": len(self.where), "rows": self.manifest.get("rows"),
                "parts": len(self.parts), "k": self.manifest.get("config", {}).get("k")}

    def get(self, user_id: str, k: int | None) -> list[dict[str, Any]]:
        if user_id not in self.where:
            raise UnknownIdError([user_id], self.manifest.get("run_id", "?"))
        part, start, stop = self.where[user_id]
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            stop = min(stop, start + k)
        ends = self.group_ends[part]
        first, last = np.searchsorted(ends, [start, stop - 1], side="right")
        tables = [self._row_group(part, int(g)) for g in range(first, last + 1)]
        offset = int(ends[first - 1]) if first else 0
        table = pa.concat_tables(tables).slice(start - offset, stop - start)
        return table.select(COLUMNS).to_pylist()

    def _index_part(self, n: int, file: Path, entry: dict[str, Any], verify: bool) -> None:
        try:
            if verify and file_sha256(file) != entry.get("sha256"):
                raise StoreError(f"{file} does not match its sha256 in the manifest")
            with open(file, "rb") as f:
                identity = _identity(f)
                parquet = pq.ParquetFile(f)
                meta = parquet.metadata
                users = parquet.read(columns=["user_id"]).column("user_id").combine_chunks()
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot read candidates part {file}: {err}") from err
        if meta.num_rows != entry.get("rows"):
            raise StoreError(f"{file} holds {meta.num_rows} rows, the manifest says "
                             f"{entry.get('rows')}")
        self.parts.append((file, identity))
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.group_ends.append(np.cumsum(sizes, dtype=np.int64))
        if len(users) == 0:
            return
        # a user's rows are contiguous: a run starts where user_id differs from the row before
        changed = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(changed) + 1]).astype(np.int64)
        ends = np.append(starts[1:], len(users))
        for user, start, end in zip(users.take(starts).to_pylist(), starts.tolist(),
                                    ends.tolist(), strict=True):
            if user in self.where:
                raise StoreError(f"user {user!r} appears twice in {self.path} (in {file.name})")
            self.where[user] = (n, start, end)

    def _read_row_group(self, part: int, group: int) -> pa.Table:
        file, identity = self.parts[part]
        try:
            with open(file, "rb") as f:
                if _identity(f) != identity:
                    raise StoreError(f"{file} changed since it was indexed: a new export is "
                                     "replacing this one; refresh to serve it")
                return pq.ParquetFile(f).read_row_group(group, columns=COLUMNS)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot read candidates part {file}: {err}") from err


def _stamps(root: Path) -> tuple | None:
    """(name, device, inode, size, mtime, ctime) of each entry of an export dir, None if it
    cannot be listed: changes when the manifest or a part is written, replaced, added, removed
    or made readable (chmod changes only the ctime)."""
    try:
        with os.scandir(root) as entries:
            return tuple(sorted((entry.name, *_stat(entry)) for entry in entries))
    except OSError:
        return None


def _stat(entry: os.DirEntry) -> tuple[int, ...] | tuple[None]:
    try:
        st = entry.stat()
    except OSError:  # a dangling link: its name still counts
        return (None,)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _identity(f: Any) -> tuple[int, ...]:
    """(device, inode, size, mtime) of an open file: differs once the file is replaced."""
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
