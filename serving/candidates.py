"""Exported candidates by user, read from `candidates/part-*.parquet` + `_manifest.json`."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.lookup import UnknownIdError
from serving.store import StoreError, file_sha256


class CandidateLookup:
    """Exported top-K candidates by user: `candidates/part-*.parquet` + `_manifest.json`.

    Opening reads only the `user_id` column of each part, to index where each user's rows lie
    (users' rows are contiguous, best first); `get` then decodes just the parquet row groups
    that hold them, keeping the last `cached_row_groups` decoded. The manifest is written last
    by the export, so a dir without one is an unfinished export and is refused.
    """

    def __init__(self, path: str | Path, *, verify: bool = False, cached_row_groups: int = 8):
        self.path = Path(path)
        manifest = self.path / "_manifest.json"
        try:
            self.manifest = json.loads(manifest.read_text())
            parts = [self.path / p["file"] for p in self.manifest["parts"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"not a finished candidates export: {manifest} is missing or "
                             f"unreadable ({err})") from err
        self._where: dict[str, tuple[int, int, int]] = {}  # user -> (part, first row, end row)
        self._group_ends: list[np.ndarray] = []  # per part: (row groups,) cumulative row counts
        for n, (file, entry) in enumerate(zip(parts, self.manifest["parts"], strict=True)):
            self._index_part(n, file, entry, verify)
        self._parts = parts
        self._row_group = lru_cache(maxsize=cached_row_groups)(self._read_row_group)

    @property
    def meta(self) -> dict[str, Any]:
        return {"path": str(self.path), "run_id": self.manifest.get("run_id"),
                "users": len(self._where), "rows": self.manifest.get("rows"),
                "parts": len(self._parts), "k": self.manifest.get("config", {}).get("k")}

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._where

    def get(self, user_id: str, k: int | None = None) -> list[dict[str, Any]]:
        """The user's rows as dicts (rank, item_id, score, stage), best first, at most `k`.
        UnknownIdError for a user the export does not hold."""
        if user_id not in self._where:
            raise UnknownIdError([user_id], self.manifest.get("run_id", "?"))
        part, start, stop = self._where[user_id]
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            stop = min(stop, start + k)
        ends = self._group_ends[part]
        first, last = np.searchsorted(ends, [start, stop - 1], side="right")
        tables = [self._row_group(part, int(g)) for g in range(first, last + 1)]
        offset = int(ends[first - 1]) if first else 0
        table = pa.concat_tables(tables).slice(start - offset, stop - start)
        return table.select(["rank", "item_id", "score", "stage"]).to_pylist()

    def _index_part(self, n: int, file: Path, entry: dict[str, Any], verify: bool) -> None:
        try:
            meta = pq.read_metadata(file)
            if verify and file_sha256(file) != entry.get("sha256"):
                raise StoreError(f"{file} does not match its sha256 in the manifest")
            users = pq.read_table(file, columns=["user_id"]).column("user_id").combine_chunks()
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot read candidates part {file}: {err}") from err
        if meta.num_rows != entry.get("rows"):
            raise StoreError(f"{file} holds {meta.num_rows} rows, the manifest says "
                             f"{entry.get('rows')}")
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_ends.append(np.cumsum(sizes, dtype=np.int64))
        if len(users) == 0:
            return
        # a user's rows are contiguous: a run starts where user_id differs from the row before
        changed = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(changed) + 1]).astype(np.int64)
        ends = np.append(starts[1:], len(users))
        for user, start, end in zip(users.take(starts).to_pylist(), starts.tolist(),
                                    ends.tolist(), strict=True):
            if user in self._where:
                raise StoreError(f"user {user!r} appears twice in {self.path} (in {file.name})")
            self._where[user] = (n, start, end)

    def _read_row_group(self, part: int, group: int) -> pa.Table:
        return pq.ParquetFile(self._parts[part]).read_row_group(
            group, columns=["rank", "item_id", "score", "stage"])

