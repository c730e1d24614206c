"""EmbeddingStore: look vectors up by id and search nearest neighbours, with hot version swap.

    store = EmbeddingStore("store/", unknown="zeros")
    vectors, found = store.get(["i1", "i7", "nope"])   # (3, dim) float32, [True, True, False]
    hits = store.nearest("i1", k=10)                   # hits.ids, hits.scores (best first)
    store.refresh()                                    # moves to the version CURRENT names now

Every call works on one immutable `Snapshot` (one version dir, its vectors, its id map and
optional faiss index, all read into memory): it takes a reference to the live snapshot when it
starts, so a `refresh()` in another thread never mixes two versions into one answer. An old
snapshot is freed when the last call using it returns.

The vectors are a private copy, not a memory map: a mapped file truncated in place kills the
process with SIGBUS on the next lookup (nothing to catch in Python), and one rewritten in place
changes answers under the id map and the checksums that were verified. A check before each
lookup (os.fstat) would still race with the truncate, for the whole of an exact search. The
copy costs RAM (count x dim x itemsize per process, twice while a refresh swaps versions) and
nothing per lookup. `refresh()` notices files of the live version that changed on disk and
reopens it; if that fails, the copy in memory keeps serving.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from serving.id_rows import IdRows
from serving.store import (
    CSR_FILES,
    CURRENT,
    IDS,
    META,
    VECTORS,
    StoreData,
    StoreError,
    current_version_dir,
    read_store,
)

UNKNOWN_POLICIES = ("raise", "zeros", "fallback")
METRICS = ("ip", "cosine")
INDEX_FILE = "index.faiss"  # written into a version dir by `recsys index --save`
_CHUNK = 65_536  # rows per step of exact search, to bound the float32 copy of a float16 store


class UnknownIdError(KeyError):
    """Ids not in the store; `ids` lists them once each, in the order asked."""

    def __init__(self, ids: Sequence[Any], version: str):
        self.ids = list(dict.fromkeys(ids))
        self.version = version
        shown = ", ".join(repr(i) for i in self.ids[:10])
        more = f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else ""
        super().__init__(f"{len(self.ids)} unknown ids in store version {version}: {shown}{more}")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class Neighbors:
    """Top-k of one query, best first: `ids[i]` scored `scores[i]` (inner product or cosine)."""

    ids: list[str]
    scores: np.ndarray  # (k',) float32, k' <= k: see `short`
    version: str
    short: str | None = None  # why k' < k: "index" (the faiss index found fewer, e.g. the
    #                           IVF lists probed held fewer vectors) or "excluded"; None if k' = k


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One opened version. Immutable; everything a call needs hangs off it."""

    data: StoreData
    rows: IdRows  # id -> row of `matrix`
    matrix: np.ndarray  # (count, dim) the vectors, in memory
    index: Any | None  # faiss.Index over the same rows, or None for exact search
    stamps: tuple  # the version's files on disk when opened (see _stamps)

    @property
    def version(self) -> str:
        return self.data.path.name

    @property
    def meta(self) -> dict[str, Any]:
        return {**self.data.meta, "version": self.version,
                "search": type(self.index).__name__ if self.index is not None else "exact"}

    def get(self, ids: Sequence[str], unknown: str = "raise",
            fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (n, dim) float32 of `ids` (n,) and found (n,) bool; see EmbeddingStore.get."""
        if not isinstance(ids, (list, tuple)):
            if isinstance(ids, (str, bytes)):
                raise TypeError("ids must be a sequence of ids, not one string: wrap as [id]")
            ids = list(ids)  # an iterator must survive being walked twice
        n = len(ids)
        # Fast path, every id known: rows from the C hash table (serving/id_rows.py), then
        # one gather, the one copy.
        try:
            if n == 1:
                row = self.rows.row(ids[0])
                out = self.matrix[row:row + 1].copy()  # (1, dim)
                known = row >= 0
            else:
                rows = self.rows.rows(ids)  # (n,), -1 where unknown
                out = self.matrix.take(rows, axis=0)  # (n, dim)
                known = n == 0 or rows.min() >= 0
        except TypeError:  # an unhashable id
            known = False
        if not known:
            return self._get_with_misses(ids, unknown, fallback)
        found = np.empty(n, dtype=bool)  # (n,); empty + fill costs half of np.ones
        found.fill(True)
        return out.astype(np.float32, copy=False), found

    def _get_with_misses(self, ids: list | tuple, unknown: str,
                         fallback: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """`get` when some id is unknown; non-str ids are tried as str(id), as write_store
        stored them."""
        keys = [i if isinstance(i, str) else _as_str(i) for i in ids]
        rows = self.rows.rows(keys)  # (n,), -1 where unknown
        found = rows >= 0  # (n,)
        if unknown == "raise" and not found.all():
            raise UnknownIdError([ids[i] for i in np.flatnonzero(~found)], self.version)
        out = self.matrix.take(rows, axis=0).astype(np.float32, copy=False)  # (n, dim)
        out[~found] = fallback if unknown == "fallback" else 0.0  # (row -1 took the last row)
        return out, found

    def nearest(self, query: str | np.ndarray | Sequence[float], k: int, *,
                exclude: Iterable[str] = (), exclude_self: bool = True,
                metric: str = "ip") -> Neighbors:
        """Top-`k` rows for an id or a (dim,) vector; see EmbeddingStore.nearest."""
        count, dim = self.matrix.shape
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= count:
            raise ValueError(f"k must be an integer in 1..{count} (vectors in the store), "
                             f"got {k!r}")
        exclude = [exclude] if isinstance(exclude, str) else exclude
        excluded = {self.rows.row(i) for i in exclude if isinstance(i, str)} - {-1}
        if isinstance(query, str):
            row = self.rows.row(query)
            if row < 0:
                raise UnknownIdError([query], self.version)
            q = self.matrix[row].astype(np.float32)  # (dim,) copy
            if exclude_self:
                excluded.add(row)
        else:
            q = _query_vector(query, dim)
        if metric == "cosine":
            norm = float(np.linalg.norm(q))
            if norm == 0.0:
                raise ValueError("cosine needs a non-zero query vector")
            q = q / norm
        fetch = min(count, k + len(excluded))  # over-fetch so k remain after exclusions
        scores, rows = (self._search_index(q, fetch) if self.index is not None
                        else self._search_exact(q, fetch, metric))
        if len(rows) and rows.max() >= count:  # an index whose ids are not this store's rows
            raise StoreError(f"{INDEX_FILE} of version {self.version} returned row "
                             f"{rows.max()}, the store has {count} vectors: rebuild it with "
                             "`recsys index --save`")
        found = rows >= 0  # -1: faiss found fewer than asked
        keep = found & ~np.isin(rows, list(excluded))
        scores, rows = scores[keep][:k], rows[keep][:k]
        if not np.isfinite(scores).all():
            raise ValueError("scores overflow float32: the query vector's values are too large")
        short = None if len(rows) == k else "excluded" if found.all() else "index"
        return Neighbors(ids=self.data.ids[rows].tolist(), scores=scores, version=self.version,
                         short=short)

    def _search_index(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(q.reshape(1, -1), fetch)  # (1, fetch) each
        return scores[0], rows[0]

    def _search_exact(self, q: np.ndarray, fetch: int,
                      metric: str) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty(len(self.matrix), dtype=np.float32)  # (count,)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by nearest
            for start in range(0, len(self.matrix), _CHUNK):
                block = self.matrix[start:start + _CHUNK].astype(np.float32, copy=False)
                scores[start:start + _CHUNK] = block @ q
            if metric == "cosine" and not self.data.meta.get("normalized"):
                scores /= self._norms
        scores[np.isnan(scores)] = -np.inf  # inf - inf from overflow: never a top hit
        top = np.argpartition(-scores, fetch - 1)[:fetch]
        top = top[np.lexsort((top, -scores[top]))]  # best first, ties by row
        return scores[top], top.astype(np.int64)

    @cached_property
    def _norms(self) -> np.ndarray:
        """(count,) L2 norms, floored so a zero row scores 0, computed on first cosine search."""
        norms = np.concatenate([np.linalg.norm(self.matrix[s:s + _CHUNK].astype(np.float32), axis=1)
                                for s in range(0, len(self.matrix), _CHUNK)])
        return np.maximum(norms, np.finfo(np.float32).tiny)


def open_snapshot(path: Path, *, verify: bool = True) -> Snapshot:
    """Open one version dir (or a root's CURRENT one): checks, id map, faiss index."""
    version_dir = current_version_dir(path) if (path / CURRENT).is_file() else path
    stamps = _stamps(version_dir)  # before reading: a change meanwhile shows at the next refresh
    try:
        data = read_store(version_dir, verify=verify, in_memory=True)
        index = _read_index(data)
    except OSError as err:  # a file vanished while it was being read: the dir was replaced
        raise StoreError(f"cannot open the store at {path}: {err}") from err
    return Snapshot(data=data, rows=IdRows(data.ids.tolist()), matrix=data.vectors, index=index,
                    stamps=stamps)


def _stamps(version_dir: Path) -> tuple:
    """(device, inode, size, mtime, ctime) of each file of a version, None where absent: changes
    when a file is replaced, rewritten in place, added (`recsys index --save`), removed or
    made readable (chmod changes only the ctime)."""
    stamps = []
    for name in (META, VECTORS, *CSR_FILES.values(), IDS, INDEX_FILE):
        try:
            st = os.stat(version_dir / name)
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class EmbeddingStore:
    """Vectors by id from a store root (follows CURRENT; `refresh()` moves on) or one version dir.

    unknown: what `get` does with ids not in the store: "raise" (UnknownIdError, a KeyError
        naming them), "zeros" (zero rows, found False) or "fallback" (the `fallback` (dim,) row).
    metric: "ip" (inner product) or "cosine" for `nearest`. A saved index.faiss scores by inner
        product; for cosine over unnormalised vectors build it with `recsys index --metric cosine`.
    verify: check both files against meta.json's sha256 on open (reads them once in full).
    """

    def __init__(self, path: str | Path, *, unknown: str = "raise",
                 fallback: Sequence[float] | np.ndarray | None = None, metric: str = "ip",
                 verify: bool = True):
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if (unknown == "fallback") != (fallback is not None):
            raise ValueError('give a fallback vector exactly when unknown="fallback"')
        self.path = Path(path)
        self.unknown, self.metric, self.verify = unknown, metric, verify
        self.fallback = None if fallback is None else _query_vector(fallback, None)
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self._refused: tuple[Path, tuple, StoreError] | None = None  # last version refused
        # a root follows CURRENT; a version dir (meta.json, no CURRENT) is pinned
        self.follows_current = not ((self.path / "meta.json").is_file()
                                    and not (self.path / CURRENT).exists())
        self._snapshot = self._checked(open_snapshot(self.path, verify=verify))

    def snapshot(self) -> Snapshot:
        """The live version; hold it to make several calls against one version."""
        return self._snapshot

    @property
    def meta(self) -> dict[str, Any]:
        """meta.json of the live version (model, run_id, dim, count, dtype, normalized, created,
        version, sha256) plus `search`: the faiss index class, or "exact"."""
        return self._snapshot.meta

    @property
    def version(self) -> str:
        return self._snapshot.version

    def __len__(self) -> int:
        return len(self._snapshot.matrix)

    def get(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (n, dim) float32 for `ids` (n,) and found (n,) bool, from one version.

        Ids may repeat (each is answered); [] gives (0, dim). Unknown ids follow `unknown`
        (ids are matched by their 64-bit hash: see serving/id_rows.py for the odds of a clash).
        """
        return self._snapshot.get(ids, self.unknown, self.fallback)

    def nearest(self, query: str | np.ndarray | Sequence[float], k: int, *,
                exclude: Iterable[str] = (), exclude_self: bool = True) -> Neighbors:
        """Top-`k` neighbours of an id or a (dim,) vector, best first, from one version.

        Uses the version's index.faiss when there is one, else exact search. Ids in `exclude`
        (and a query id itself, unless exclude_self=False) are left out, so fewer than k may
        come back. ValueError: k not in 1..count, a vector of the wrong size or not finite.
        UnknownIdError: an unknown query id.
        """
        return self._snapshot.nearest(query, k, exclude=exclude, exclude_self=exclude_self,
                                      metric=self.metric)

    def refresh(self) -> bool:
        """Move to the version CURRENT names now, or reopen the live one if its files changed
        on disk (an index.faiss saved into it, say); True if a new snapshot went live.

        Readers keep being answered from the old snapshot meanwhile. A missing CURRENT or a
        broken version raises StoreError and the old snapshot stays live.
        """
        if not self.follows_current:
            return False
        with self._lock:
            live = self._snapshot
            target = current_version_dir(self.path)
            stamps = _stamps(target)  # before reading: a change meanwhile shows next time
            if target == live.data.path and stamps == live.stamps:
                return False
            if self._refused is not None and self._refused[:2] == (target, stamps):
                # the same broken files as last time: reading and hashing them again on
                # every tick would only repeat the same error
                raise self._refused[2].with_traceback(None)
            try:
                snap = self._checked(open_snapshot(target, verify=self.verify))
            except StoreError as err:
                self._refused = (target, stamps, err)
                raise
            self._snapshot, self._refused = snap, None
            return True

    def _checked(self, snap: Snapshot) -> Snapshot:
        if self.fallback is not None and len(self.fallback) != snap.matrix.shape[1]:
            raise StoreError(f"fallback has {len(self.fallback)} values but version "
                             f"{snap.version} has dim {snap.matrix.shape[1]}")
        return snap


def _query_vector(values: Any, dim: int | None) -> np.ndarray:
    """A finite float32 (dim,) copy of `values`, or ValueError saying what is wrong."""
    x = np.asarray(values)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"a vector must hold numbers, got dtype {x.dtype}")
    if x.ndim != 1 or len(x) == 0 or (dim is not None and len(x) != dim):
        want = f"({dim},)" if dim is not None else "1-D, non-empty"
        raise ValueError(f"vector must have shape {want}, got {x.shape}")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("vector must be finite in float32 (no NaN, inf or values over 3.4e38)")
    return x


def _as_str(i: Any) -> str | None:
    try:
        return str(i)
    except Exception:  # an object whose __str__ fails is simply not found
        return None


def _read_index(data: StoreData) -> Any | None:
    """The version's index.faiss, checked against the vectors, or None. faiss loads lazily."""
    path = data.path / INDEX_FILE
    if not path.is_file():
        return None
    import faiss  # lazy: stores without an index (and `import serving`) never load it

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise StoreError(f"{path} is not a readable faiss index") from err
    count, dim = data.vectors.shape
    if index.ntotal != count or index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise StoreError(f"{path} holds {index.ntotal} vectors of dim {index.d} (metric "
                         f"{index.metric_type}); the store has {count} of dim {dim} and needs an "
                         "inner-product index: rebuild it with `recsys index --save`")
    return index
