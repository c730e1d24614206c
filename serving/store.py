"""The embedding store format: one versioned directory per export, read back by memory map.

    root/CURRENT                 text: name of the live version (switched atomically)
    root/<version>/ids.parquet   `id` (string), `row` (int64): the id of vectors[row]
    root/<version>/vectors.npy   (count, dim) float32 or float16, C order, np.save format
    root/<version>/meta.json     dim, dtype, layout, normalized, model, run_id, count, created,
                                 version, sha256 {"vectors.npy": ..., "ids.parquet": ...}

With layout "csr" (vectors mostly zero, as a sparse-trained item table's rows) the vectors are
stored as `vectors.data.npy`, `vectors.indices.npy` and `vectors.indptr.npy` instead
(features.sparse: only the non-zeros and their positions) and read back dense.

A version dir is complete before it gets its name (written under a temp name, then renamed), and
CURRENT moves only after that, so a reader never sees half an export. No torch here: serving
code reads stores without the training stack.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.sparse import CSR_PARTS, Csr

DTYPES = ("float32", "float16")
LAYOUTS = ("dense", "csr")
CURRENT = "CURRENT"
IDS, VECTORS, META = "ids.parquet", "vectors.npy", "meta.json"
CSR_FILES = {part: f"vectors.{part}.npy" for part in CSR_PARTS}  # data, indices, indptr


class StoreError(ValueError):
    """A store on disk is missing, incomplete or does not match its meta.json."""


@dataclass(frozen=True, eq=False)
class StoreData:
    """One version of a store: `ids[i]` is the id of `vectors[i]`."""

    ids: np.ndarray  # (count,) object array of str
    vectors: np.ndarray  # (count, dim) read-only, dtype as in meta; np.memmap or in memory
    meta: dict[str, Any]
    path: Path  # the version dir


def write_store(
    root: str | Path, ids: Sequence[str], vectors: np.ndarray, *, model: str, run_id: str,
    normalized: bool, version: str | None = None, dtype: str = "float32",
    make_current: bool = True, layout: str = "dense",
) -> Path:
    """Write `ids` (count,) and `vectors` (count, dim) as a new version under `root`, make it
    CURRENT (unless `make_current` is False: `switch_current` does it later), and return the
    version dir. Bad input raises ValueError before anything is written.
    """
    root = Path(root)
    ids, vectors = _validate(ids, vectors, dtype)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if version is not None:
        _check_version_name(version)
    if version is not None and (root / version).exists():
        raise ValueError(f"version {version!r} already exists in {root}")
    now = datetime.now(UTC)
    root.mkdir(parents=True, exist_ok=True)
    version = version or _new_version(root, now)

    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=root))
    try:
        if layout == "csr":
            csr = Csr.from_dense(vectors)
            for part, name in CSR_FILES.items():
                np.save(tmp / name, getattr(csr, part))
        else:
            np.save(tmp / VECTORS, vectors)
        rows = pa.array(np.arange(len(ids), dtype=np.int64))
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "row": rows}), tmp / IDS)
        meta = {
            "version": version, "count": len(ids), "dim": int(vectors.shape[1]), "dtype": dtype,
            "layout": layout, "normalized": bool(normalized), "model": model, "run_id": run_id,
            "created": now.isoformat(timespec="seconds"),
            "sha256": {n: file_sha256(tmp / n) for n in (*_vector_files(layout), IDS)},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, root / version)  # fails rather than merge if the name appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        switch_current(root, version)
    return root / version


def read_store(path: str | Path, *, verify: bool = True, in_memory: bool = False) -> StoreData:
    """Open a store root (follows CURRENT) or one version dir. Raises StoreError.

    The vectors are memory-mapped, or with `in_memory` read into memory: a map shows later
    writes to the file and a process touching a page the file no longer has (truncated in
    place) dies of SIGBUS, so a long-lived reader (the server) takes a private copy.
    With `verify` (the default) both files are checked against their sha256 in meta.json, which
    reads them once in full; count, dim and dtype are always checked.
    """
    path = Path(path)
    via_current = (path / CURRENT).is_file()
    if via_current:
        path = current_version_dir(path)
    if not (path / META).is_file():
        if via_current or (path / VECTORS).is_file():  # a version dir that lost its meta.json
            raise StoreError(f"{path / META} is missing")
        what = "no CURRENT and no meta.json" if path.is_dir() else "no such directory"
        raise StoreError(f"not an embedding store: {path} ({what})")

    meta = _read_meta(path)
    for name in (*_vector_files(meta["layout"]), IDS):
        if not (path / name).is_file():
            raise StoreError(f"{path / name} is missing")
    if meta["layout"] == "csr":
        vectors = _load_csr(path, meta, verify)
    elif in_memory:
        vectors = _load_vectors(path / VECTORS, meta, verify)
    else:
        if verify:
            _check_sha256(path / VECTORS, file_sha256(path / VECTORS), meta)
        vectors = _map_vectors(path / VECTORS, meta)
    return StoreData(ids=_read_ids(path / IDS, meta, verify), vectors=vectors, meta=meta,
                     path=path)


def current_version_dir(root: Path) -> Path:
    """The version dir that `root/CURRENT` names now; StoreError if there is none."""
    try:
        version = (root / CURRENT).read_bytes().decode().strip()
    except OSError as err:
        raise StoreError(f"cannot read {root / CURRENT}: {err.strerror or err}") from err
    except UnicodeDecodeError:
        raise StoreError(f"{root / CURRENT} is not a version name (not UTF-8 text)") from None
    # write_store never names a version "", ".x" (its temp dirs) or with a "/"
    if not version or "/" in version or version.startswith(".") or \
            not (root / version).is_dir():
        raise StoreError(f"{root / CURRENT} names version {version[:100]!r}, which is not in "
                         f"{root}")
    return root / version


def _map_vectors(path: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:  # header damaged or data shorter than the header says
        raise StoreError(f"{path} is not a readable .npy file: {err}") from err
    _check_shape(path, vectors.shape, vectors.dtype, meta)
    return vectors


def _load_vectors(path: Path, meta: dict[str, Any], verify: bool) -> np.ndarray:
    """vectors.npy read into memory in one pass, hashed on the way when `verify`; a file
    shorter or longer than its header says is a StoreError, never a half-filled array."""
    header_reader = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            reader = header_reader.get(np.lib.format.read_magic(f))
            if reader is None:
                raise ValueError("unsupported .npy format version")
            shape, fortran, dtype = reader(f)
            _check_shape(path, shape, dtype, meta)
            if fortran:
                raise ValueError("Fortran order; the store format is C order")
            header = f.tell()
            vectors = np.empty(shape, dtype)  # (count, dim)
            expected, size = header + vectors.nbytes, os.fstat(f.fileno()).st_size
            got = f.readinto(vectors.reshape(-1).view(np.uint8)) if size == expected else -1
            if verify:
                f.seek(0)
                digest = hashlib.sha256(f.read(header))
    except StoreError:
        raise
    except (ValueError, OSError) as err:
        raise StoreError(f"{path} is not a readable .npy file: {err}") from err
    if got != vectors.nbytes:  # -1: wrong size; less: shrank while being read
        raise StoreError(f"{path} is {size} bytes, its header says {expected} "
                         "(truncated or modified)")
    if verify:
        digest.update(vectors.reshape(-1).view(np.uint8))
        _check_sha256(path, digest.hexdigest(), meta)
    vectors.flags.writeable = False
    return vectors


def _vector_files(layout: str) -> tuple[str, ...]:
    return tuple(CSR_FILES.values()) if layout == "csr" else (VECTORS,)


def _load_csr(path: Path, meta: dict[str, Any], verify: bool) -> np.ndarray:
    """The CSR files read (hashed when `verify`) and made dense (count, dim), read-only."""
    parts = {}
    for part, name in CSR_FILES.items():
        try:
            raw = (path / name).read_bytes()
        except OSError as err:
            raise StoreError(f"cannot read {path / name}: {err}") from err
        if verify:  # a StoreError of its own, not one for the .npy reader to rewrap
            _check_sha256(path / name, hashlib.sha256(raw).hexdigest(), meta)
        try:
            parts[part] = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError) as err:
            raise StoreError(f"{path / name} is not a readable .npy file: {err}") from err
    try:
        vectors = Csr(shape=(meta["count"], meta["dim"]), **parts).to_dense()
    except ValueError as err:
        raise StoreError(f"{path}: {err}") from err
    _check_shape(path / CSR_FILES["data"], vectors.shape, vectors.dtype, meta)
    vectors.flags.writeable = False
    return vectors


def _check_shape(path: Path, shape: tuple, dtype: np.dtype, meta: dict[str, Any]) -> None:
    expected = (meta["count"], meta["dim"])
    if tuple(shape) != expected or dtype != np.dtype(meta["dtype"]):
        raise StoreError(f"{path} holds {tuple(shape)} {dtype}, meta.json says {expected} "
                         f"{meta['dtype']}")


def _check_sha256(path: Path, digest: str, meta: dict[str, Any]) -> None:
    if digest != meta["sha256"][path.name]:
        raise StoreError(f"{path} does not match its sha256 in meta.json (truncated or modified)")


def _validate(ids: Sequence[str], vectors: np.ndarray, dtype: str) -> tuple[list[str], np.ndarray]:
    """Checked copies: ids as a list of str, vectors (count, dim) C-contiguous in `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    ids = [str(i) for i in ids]
    vectors = np.asarray(vectors)
    if not ids:
        raise ValueError("no ids: a store needs at least one vector")
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"vectors must be 2-D (count, dim) with dim > 0, got {vectors.shape}")
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    if len(set(ids)) != len(ids):
        dupes = [i for i, n in Counter(ids).items() if n > 1][:5]
        raise ValueError(f"ids must be unique; duplicated: {dupes}")
    if vectors.dtype.kind not in "fiu":  # float, int, unsigned; not bool, complex or object
        raise ValueError(f"vectors must be real numbers, got dtype {vectors.dtype}")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        out = np.ascontiguousarray(vectors, dtype=dtype)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():  # checked after the cast: a float32 value can overflow float16 to inf
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"vectors must be finite in {dtype}; {int(bad.sum())} rows with "
                         f"NaN/inf, e.g. rows {rows} (ids {[ids[r] for r in rows]})")
    return ids, out


def _new_version(root: Path, now: datetime) -> str:
    """UTC timestamp like 20261126T190501Z, with a random suffix if that name is taken."""
    version = now.strftime("%Y%m%dT%H%M%SZ")
    while (root / version).exists():
        version = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    return version


def _check_version_name(version: str) -> None:
    if version in ("", ".", "..", CURRENT) or "/" in version or version.startswith("."):
        raise ValueError(f"bad version name {version!r}")


def switch_current(root: str | Path, version: str) -> None:
    """Make `version` (a version dir of `root`) the one `root/CURRENT` names, atomically."""
    root = Path(root)
    _check_version_name(version)
    if not (root / version).is_dir():
        raise ValueError(f"version {version!r} is not in {root}: CURRENT was not changed")
    tmp = root / f".{CURRENT}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(version + "\n")
        os.replace(tmp, root / CURRENT)  # readers see the old name or the new, never half
    finally:
        tmp.unlink(missing_ok=True)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{path / META} is not readable JSON: {err}") from err
    meta.setdefault("layout", "dense")  # stores written before sparse layouts
    missing = [k for k in ("count", "dim", "dtype", "sha256") if k not in meta]
    if meta["layout"] not in LAYOUTS:
        raise StoreError(f"{path / META}: unknown layout {meta['layout']!r}")
    missing += [f"sha256.{n}" for n in (*_vector_files(meta["layout"]), IDS)
                if n not in meta.get("sha256", {})]
    if missing or meta["dtype"] not in DTYPES:
        raise StoreError(f"{path / META}: missing keys {missing} or bad dtype {meta.get('dtype')}")
    return meta


def _read_ids(path: Path, meta: dict[str, Any], verify: bool) -> np.ndarray:
    """(count,) ids ordered by row; rows must be exactly 0..count-1. The file is read once:
    the bytes hashed are the bytes parsed."""
    count = meta["count"]
    try:
        raw = path.read_bytes()
        if verify:
            _check_sha256(path, hashlib.sha256(raw).hexdigest(), meta)
        table = pq.read_table(pa.BufferReader(raw), columns=["id", "row"])
    except (OSError, pa.ArrowException, KeyError) as err:
        raise StoreError(f"{path} is not a readable ids table: {err}") from err
    rows = table.column("row").to_numpy()
    if len(rows) != count or not np.array_equal(np.sort(rows), np.arange(count)):
        raise StoreError(f"{path}: rows must be 0..{count - 1} once each, got {len(rows)} rows")
    ids = np.empty(count, dtype=object)
    ids[rows] = table.column("id").to_pylist()
    return ids


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (the checksums of meta.json and of candidate manifests)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
