"""Approximate nearest-neighbour search over embedding vectors: build, search, save, measure.

Free functions over numpy arrays around a faiss `index_factory` spec ("Flat", "IVF256,Flat",
"HNSW32", "IVF256,PQ16" ...). Every index scores by inner product; metric "cosine" L2-normalises
a copy of the vectors at build time and the queries at search time, so the caller passes the same
metric to both. GPU faiss is used when the installed faiss has GPU support and a GPU is present.
A leaf module: numpy, faiss, the standard library and `recsys.runtime.atomic` for the one file
write.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from recsys.runtime.atomic import atomic_path

log = logging.getLogger(__name__)

METRICS = ("ip", "cosine")
INDEX_FILE = "index.faiss"
_CHUNK = 65_536  # rows per step when checking, normalising or searching, to bound memory


def build_index(
    vectors: np.ndarray, spec: str = "Flat", metric: str = "ip", *, train_size: int = 100_000,
    seed: int = 0, use_gpu: bool | None = None,
) -> faiss.Index:
    """An index over `vectors` (n, d): row i of `vectors` is result row i of `search`.

    Indexes that need training (IVF, PQ) train on a seeded sample of at most `train_size` rows.
    `use_gpu`: None = on a GPU when faiss can use one, True = required, False = CPU.
    """
    x = _prepare(vectors, metric, "vectors")
    if len(x) == 0:
        raise ValueError("vectors is empty: an index needs at least one vector")
    index = _factory(x.shape[1], spec)
    if _want_gpu(use_gpu):
        index = _to_gpu(index, spec)
    if not index.is_trained:
        sample = _sample(x, train_size, seed)
        _check_ivf_lists(index, len(sample), spec)
        try:
            index.train(sample)
        except RuntimeError as err:
            raise ValueError(f"cannot train index {spec!r} on {len(sample)} vectors: "
                             f"{_short(err)}") from err
    index.add(x)
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None,
    ef_search: int | None = None, metric: str = "ip", batch_size: int = _CHUNK,
    probes: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` of `queries` (m, d): scores (m, k) float32, best first, and rows (m, k) int64.

    `nprobe` (IVF) and `ef_search` (HNSW) are set on the index when given and stay set; an index
    without that parameter ignores it. A row is -1 where the index found fewer than k results.
    `probes` are the queries' lists from `probe_lists` (IVF only): the search skips choosing them.
    """
    q = prepare_queries(index, queries, metric)
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be in 1..{index.ntotal} (vectors in the index), got {k}")
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    scores = np.empty((len(q), k), dtype=np.float32)  # (m, k)
    rows = np.empty((len(q), k), dtype=np.int64)  # (m, k)
    for start in range(0, len(q), batch_size):
        stop = start + batch_size
        if probes is None:
            scores[start:stop], rows[start:stop] = index.search(q[start:stop], k)
        else:
            lists, distances = (p[start:stop] for p in probes)
            scores[start:stop], rows[start:stop] = index.search_preassigned(
                q[start:stop], k, lists, distances)
    return scores, rows


def probe_lists(index: faiss.Index, queries: np.ndarray,
                metric: str = "ip") -> tuple[np.ndarray, np.ndarray] | None:
    """The inverted lists a CPU IVF index scans for each query (m, d), nearest first: list ids
    (m, nprobe) int64 and their coarse scores (m, nprobe) float32; None for other indexes.

    Why: searching queries ordered by their nearest list keeps each list in the CPU cache while
    the queries that scan it follow one another (the export does; `search(probes=...)`).
    """
    if _on_gpu(index) or not isinstance(index, faiss.IndexIVF):
        return None
    q = prepare_queries(index, queries, metric)
    distances, lists = index.quantizer.search(q, index.nprobe)
    return lists, distances


def set_search_params(index: faiss.Index, *, nprobe: int | None = None,
                      ef_search: int | None = None) -> None:
    """Set `nprobe` (IVF) / `efSearch` (HNSW) on `index` where given (None = keep); an index
    without that parameter ignores it. Costs about a millisecond: set once, then search."""
    _set_param(index, "nprobe", nprobe)
    _set_param(index, "efSearch", ef_search)


def free_width(index: faiss.Index, k: int) -> int:
    """The most results a search can return for the cost of `k`: an HNSW index explores
    efSearch candidates whatever k <= efSearch, other indexes pay for every result."""
    hnsw = getattr(index, "hnsw", None)
    return max(k, hnsw.efSearch) if hnsw is not None else k


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: brute-force top-`k` (scores (m, k), rows (m, k)) on the CPU."""
    index = build_index(vectors, "Flat", metric, use_gpu=False)
    return search(index, queries, k, metric=metric)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Mean over queries of |approx[:k] ∩ exact[:k]| / k; both (m, >= k) row arrays, -1 = none."""
    approx, exact = np.asarray(approx_rows), np.asarray(exact_rows)
    if approx.ndim != 2 or exact.ndim != 2 or len(approx) != len(exact) or len(approx) == 0:
        raise ValueError(f"need two (m, k) arrays with the same m > 0, got {approx.shape} "
                         f"and {exact.shape}")
    if k < 1 or min(approx.shape[1], exact.shape[1]) < k:
        raise ValueError(f"k={k} but results have {approx.shape[1]} and {exact.shape[1]} columns")
    hits = [len(set(a.tolist()) & set(e.tolist()) - {-1})
            for a, e in zip(approx[:, :k], exact[:, :k], strict=True)]
    return float(np.mean(hits)) / k


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write `index` to `path` (a directory gets `index.faiss` inside) atomically; return the file.

    Written through `recsys.runtime.atomic.atomic_path`, so a reader sees the old file or the new
    one, never half. A GPU index is copied to the CPU first.
    """
    path = Path(path)
    target = path / INDEX_FILE if path.is_dir() else path
    with atomic_path(target) as tmp:
        faiss.write_index(_to_cpu(index), str(tmp))
    return target


def load_index(path: str | Path, *, use_gpu: bool | None = None) -> faiss.Index:
    """Read an index written by `save_index` (a file, or a directory holding `index.faiss`)."""
    path = Path(path)
    target = path / INDEX_FILE if path.is_dir() else path
    if not target.is_file():
        raise FileNotFoundError(f"no index file at {target}")
    try:
        index = faiss.read_index(str(target))
    except RuntimeError as err:
        raise ValueError(f"{target} is not a readable faiss index: {_short(err)}") from err
    return _to_gpu(index, str(target)) if _want_gpu(use_gpu) else index


def sample_rows(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of min(n, len(vectors)) rows (n', d), in row order, as float32."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    return np.asarray(_sample(np.asarray(vectors), n, seed), dtype=np.float32)


def index_report(
    vectors: np.ndarray, queries: np.ndarray, specs: Sequence[str],
    k_values: Sequence[int] = (10, 100), metric: str = "ip", nprobe: int | None = None,
    ef_search: int | None = None, *, train_size: int = 100_000, seed: int = 0,
    use_gpu: bool | None = None,
) -> list[dict]:
    """Per spec: build seconds, recall@k vs exact search, queries/second and size in MB.

    Recall and speed come from one timed search of all `queries` (m, d) at k = max(k_values).
    """
    k_max = max(k_values)
    if k_max > len(vectors):
        raise ValueError(f"k={k_max} is larger than the catalogue ({len(vectors)} vectors)")
    _, exact = exact_search(vectors, queries, k_max, metric)
    rows = []
    for spec in specs:
        start = time.perf_counter()
        index = build_index(vectors, spec, metric, train_size=train_size, seed=seed,
                            use_gpu=use_gpu)
        built = time.perf_counter()
        _, found = search(index, queries, k_max, nprobe=nprobe, ef_search=ef_search,
                          metric=metric)
        searched = time.perf_counter() - built
        row = {"spec": spec, "build_s": built - start}
        row.update({f"recall@{k}": recall_at_k(found, exact, k) for k in k_values})
        row["queries_per_s"] = len(queries) / max(searched, 1e-9)
        row["memory_mb"] = len(faiss.serialize_index(_to_cpu(index))) / 2**20
        rows.append(row)
    return rows


def prepare_queries(index: faiss.Index, queries: np.ndarray, metric: str) -> np.ndarray:
    """`queries` (m, d) as `search` gives them to faiss: checked float32, normalised for cosine."""
    q = _prepare(queries, metric, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"dimension mismatch: queries have dim {q.shape[1]}, index has {index.d}")
    return q


def _prepare(x: np.ndarray, metric: str, name: str) -> np.ndarray:
    """A checked (n, d) float32 C-contiguous array; for cosine a normalised copy."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (n, dim) with dim > 0, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    for start in range(0, len(x), _CHUNK):
        bad = ~np.isfinite(x[start:start + _CHUNK]).all(axis=1)
        if bad.any():
            raise ValueError(f"{name} must be finite; row {start + int(np.argmax(bad))} "
                             "holds NaN or inf")
    return _normalized(x) if metric == "cosine" else x


def _normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as a new array."""
    out = np.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK]
        norms = np.linalg.norm(part, axis=1, keepdims=True)  # (chunk, 1)
        out[start:start + _CHUNK] = part / np.maximum(norms, np.finfo(np.float32).tiny)
    return out


def _factory(dim: int, spec: str) -> faiss.Index:
    """`index_factory` with inner product, minus PQ's polysemous training: `search` never uses
    Hamming filtering, and that training takes longer than all the rest of the build."""
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"faiss rejects index spec {spec!r}: {_short(err)}") from err
    for part in (index, faiss.try_extract_index_ivf(index)):
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    return index


def _sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) <= n:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return x[rows]


def _check_ivf_lists(index: faiss.Index, n_train: int, spec: str) -> None:
    ivf = faiss.try_extract_index_ivf(index) if not _on_gpu(index) else None
    nlist = ivf.nlist if ivf is not None else getattr(index, "nlist", 0)
    if nlist > n_train:
        raise ValueError(f"index {spec!r} has {nlist} inverted lists but only {n_train} "
                         "training vectors; use fewer lists (e.g. IVF<n/40>)")


def _set_param(index: faiss.Index, name: str, value: int | None) -> None:
    if value is None:
        return
    space = faiss.GpuParameterSpace() if _on_gpu(index) else faiss.ParameterSpace()
    try:
        space.set_index_parameter(index, name, value)
    except RuntimeError as err:  # this kind of index has no such parameter
        if "could not set parameter" not in str(err):
            raise


def _want_gpu(use_gpu: bool | None) -> bool:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        raise ValueError("use_gpu=True but faiss has no GPU support or no GPU is present")
    return available if use_gpu is None else use_gpu


def _to_gpu(index: faiss.Index, what: str) -> faiss.Index:
    resources = faiss.StandardGpuResources()
    try:
        gpu = faiss.index_cpu_to_gpu(resources, 0, index)
    except RuntimeError as err:  # e.g. HNSW has no GPU implementation
        log.info("index %s stays on the CPU: %s", what, _short(err))
        return index
    gpu.referenced_objects = [resources]  # the resources must outlive the index
    return gpu


def search_threads(index: faiss.Index) -> int:
    """How many threads may search `index` at once, each with one OpenMP thread: as many as
    faiss would use on a CPU index; 1 on a GPU, whose indexes are not safe to share."""
    return 1 if _on_gpu(index) else max(1, faiss.omp_get_max_threads())


def _on_gpu(index: faiss.Index) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index


def _short(err: Exception) -> str:
    """faiss errors start with the C++ signature and location; keep the message after them."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err).strip()) or repr(err)
