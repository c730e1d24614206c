"""The export's work on vectors: search the offered items, drop what each user has seen, keep K.

Apart from the job (`recsys.export.candidates`) so that benchmarks/export.py times this code, not
a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from features.ids import PAD
from recsys.ann import index as ann
from recsys.ann.ivf_scan import ListScanner
from recsys.config import ExportConfig

STAGE = "retrieval"
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("stage", pa.string())])


@dataclass(frozen=True)
class Catalogue:
    """The items a search may offer: the faiss index over their vectors and its row -> item."""

    index: Any  # faiss index over the offered items' vectors
    items: np.ndarray  # (m,) item index of each index row
    offered: np.ndarray  # (n_items + 1,) bool: the item is in the index
    scanner: ListScanner | None = None  # a CPU IVF,Flat index's lists, searched a list at a time

    @cached_property
    def row_items(self) -> np.ndarray:
        """(m + 1,) item index of each index row, then PAD: row -1 (no result) maps to PAD."""
        return np.append(self.items, PAD)


def build_catalogue(vectors: np.ndarray, items: np.ndarray, cfg: ExportConfig) -> Catalogue:
    """Index the offered `items` (m,) (1-based item indices) of `vectors` (n_items, dim), where
    row i is item index i + 1, with `cfg.index`, `cfg.metric` and the search parameters set."""
    offered = np.zeros(len(vectors) + 1, dtype=bool)
    offered[items] = True
    index = ann.build_index(vectors[items - 1], cfg.index, cfg.metric)
    ann.set_search_params(index, nprobe=cfg.nprobe, ef_search=cfg.ef_search)  # once, not per search
    return Catalogue(index, items, offered, ListScanner.of(index))


def search_part(batches: Iterable[tuple[np.ndarray, Sequence[np.ndarray], np.ndarray]],
                catalogue: Catalogue, cfg: ExportConfig, bar: tqdm | None = None) -> SearchedPart:
    """Search one part's users: their top-K unseen, but for the few one search left short.

    `batches` yields, per batch of B users: their vectors (B, dim), their seen item indices
    (B arrays) and their raw ids (B,). The part is searched in batches of users that scan the
    same inverted lists (IVF indexes): a list then stays in the CPU cache from one user to the
    next.
    """
    queries, histories, ids = _gather(batches)  # (U, dim), U arrays, (U,)
    order, probes = _search_order(queries, catalogue, cfg)
    found = np.empty((len(ids), cfg.k), dtype=np.int64)  # (U, K) item indices, PAD = none
    scores = np.empty((len(ids), cfg.k), dtype=np.float32)  # (U, K)
    short = [np.empty(0, dtype=np.int64)]  # per batch, the users left short
    for rows, (batch_found, batch_scores, batch_short) in _search_batches(
            queries, histories, order, probes, catalogue, cfg):
        found[rows], scores[rows] = batch_found, batch_scores
        short.append(rows[batch_short])
        if bar is not None:
            bar.update(len(rows))
    return SearchedPart(queries, histories, ids, found, scores, np.sort(np.concatenate(short)),
                        catalogue, cfg)


@dataclass(frozen=True)
class SearchedPart:
    """A part searched once (`search_part`); `table` finishes it."""

    queries: np.ndarray  # (U, dim)
    histories: list[np.ndarray]  # U arrays of seen item indices
    ids: np.ndarray  # (U,) raw user ids
    found: np.ndarray  # (U, K) item indices, PAD = none
    scores: np.ndarray  # (U, K)
    short: np.ndarray  # (s,) the users the search left short of K who need more
    catalogue: Catalogue
    cfg: ExportConfig

    def table(self, item_ids: np.ndarray | pa.Array) -> pa.Table:
        """The part's rows (user_id, rank 1..K, item_id, score, stage), in user order, once the
        short users are searched again together. `item_ids` (n_items,) are the raw ids of item
        indices 1..n_items (a pyarrow string array saves converting them on every call).

        Short users are searched together as wide as the most of them need (so nobody stays
        short for want of width), once per part: each search call waits for its slowest
        thread, so few calls beat a small second call per batch on a busy machine. Fills the
        part's arrays in place: call it once.
        """
        if not isinstance(item_ids, pa.Array):
            item_ids = pa.array(item_ids, pa.string())
        found, scores, retry = self.found, self.scores, self.short
        if len(retry):
            found[retry], scores[retry], _ = top_unseen(
                self.queries[retry], [self.histories[i] for i in retry], self.catalogue,
                self.cfg, 1.0)
        short = int((found[:, -1] == PAD).sum())
        return _rows(self.ids, found, scores, item_ids).replace_schema_metadata(
            {"recsys.short_users": str(short), "recsys.users": str(len(self.ids))})


def _gather(batches: Iterable[tuple[np.ndarray, Sequence[np.ndarray], np.ndarray]]
            ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The part's vectors (U, dim), seen item indices (U arrays) and raw ids (U,)."""
    queries, histories, ids = [], [], []
    for batch_queries, seen, batch_ids in batches:
        queries.append(batch_queries)
        histories += seen
        ids.append(batch_ids)
    if not queries:
        raise ValueError("a part needs at least one user")
    return np.concatenate(queries), histories, np.concatenate(ids)


def _search_order(queries: np.ndarray, catalogue: Catalogue, cfg: ExportConfig
                  ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """The order (U,) to search users in and, for an IVF index, their probed lists in that
    order (`ann.probe_lists`, chosen once here): users sorted by their nearest list."""
    probes = ann.probe_lists(catalogue.index, queries, cfg.metric)
    if probes is None:
        return np.arange(len(queries)), None
    order = np.argsort(probes[0][:, 0], kind="stable")
    return order, (probes[0][order], probes[1][order])


def _search_batches(queries: np.ndarray, histories: Sequence[np.ndarray], order: np.ndarray,
                    probes: tuple[np.ndarray, np.ndarray] | None, catalogue: Catalogue,
                    cfg: ExportConfig) -> Iterator[tuple[np.ndarray, tuple]]:
    """(user rows (B,), top_unseen of them) per batch of users taken in `order`. Batches are
    searched by a pool of single-threaded workers, each a batch from search to dropping the
    seen: one multi-threaded search per batch would leave all cores but one idle while numpy
    drops the seen. BLAS (the IVF,Flat scan's matrix products) runs on one thread for the same
    reason: threads of its own in every worker would fight the workers for the cores (a third
    slower on 2 cores). The batches (at most `cfg.search_users` users) are of equal sizes and a
    multiple of the workers in number, so that the workers finish the part together."""
    def work(start: int, stop: int) -> tuple[np.ndarray, tuple]:
        rows = order[start:stop]
        batch_probes = None if probes is None else (probes[0][start:stop], probes[1][start:stop])
        return rows, top_unseen(queries[rows], [histories[i] for i in rows], catalogue, cfg,
                                probes=batch_probes)

    workers = ann.search_threads(catalogue.index)
    batches = min(workers * -(-len(order) // (workers * cfg.search_users)), len(order))
    edges = [len(order) * i // batches for i in range(batches + 1)]
    with threadpool_limits(1, user_api="blas"):
        if workers == 1:
            yield from map(work, edges[:-1], edges[1:])
            return
        with ThreadPoolExecutor(workers, initializer=faiss.omp_set_num_threads,
                                initargs=(1,)) as pool:
            yield from pool.map(work, edges[:-1], edges[1:])


def _rows(ids: np.ndarray, found: np.ndarray, scores: np.ndarray, item_ids: pa.Array) -> pa.Table:
    """The rows of U users (raw ids (U,)) from their items (U, K) (PAD = none) and scores.

    user_id, rank and stage are dictionary arrays over the part's users, the ranks and the stage
    (SCHEMA's types once written): parquet then writes their dictionaries as they are instead of
    hashing a million strings to find them. So is item_id where the part names few distinct
    items (`_named_items`)."""
    keep = found != PAD  # (U, K)
    user, col = np.nonzero(keep)  # row-major: users in order, best first
    return pa.table({
        "user_id": _dictionary(user, pa.array(ids, pa.string())),
        "rank": _dictionary(col, pa.array(np.arange(1, found.shape[1] + 1, dtype=np.int32))),
        "item_id": _named_items(found[keep] - 1, item_ids),
        "score": pa.array(scores[keep]),
        "stage": _dictionary(np.zeros(len(user), np.int32), pa.array([STAGE], pa.string())),
    })


def _dictionary(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32, copy=False)), values)


def _named_items(rows: np.ndarray, item_ids: pa.Array) -> pa.Array:
    """`item_ids` at `rows` (n,): a dictionary array over the distinct items where they are at
    most 1/8 of the rows (parquet then writes each id once), else plain strings (a dictionary of
    many distinct ids costs the writer more than it saves)."""
    named = np.zeros(len(item_ids), dtype=bool)
    named[rows] = True
    distinct = np.flatnonzero(named)  # (d,) sorted
    if len(distinct) * 8 > len(rows):
        return item_ids.take(rows)
    code = np.zeros(len(item_ids), dtype=np.int32)  # item row -> its place in `distinct`
    code[distinct] = np.arange(len(distinct), dtype=np.int32)
    return _dictionary(code[rows], item_ids.take(pa.array(distinct)))


def top_unseen(queries: np.ndarray, histories: Sequence[np.ndarray], catalogue: Catalogue,
               cfg: ExportConfig, quantile: float = 0.9, *,
               probes: tuple[np.ndarray, np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-K unseen items per query (B, dim) from one search: item indices (B, K), PAD where
    fewer, scores (B, K), and the positions (s,) of the users left short of K who need more.

    A user's K unseen are among the first `need` = K + (their count of seen items the index
    holds) results. The search fetches what `quantile` of the batch need, at least as many as
    the index explores anyway (`ann.free_width`): so the few long histories do not make every
    user's search wide, and `quantile` 1 leaves nobody short for want of width. With Flat, IVF
    and PQ indexes (the top n results are the start of the top n' > n) searching the short
    users again wider gives the result of one search as wide as the largest need; HNSW
    searches at least efSearch wide, so there a second search may find slightly different.
    `probes`: the queries' IVF lists when already chosen (`ann.probe_lists`).
    """
    seen, seen_offered = _seen_pairs(histories, catalogue)
    need = np.minimum(cfg.k + seen_offered, len(catalogue.items))  # (B,)
    fetch = min(max(int(np.quantile(need, quantile, method="higher")),
                    ann.free_width(catalogue.index, cfg.k)), len(catalogue.items))
    if probes is not None and catalogue.scanner is not None:
        scores, rows = catalogue.scanner.search(
            ann.prepare_queries(catalogue.index, queries, cfg.metric), fetch, probes[0])
    else:
        scores, rows = ann.search(catalogue.index, queries, fetch, metric=cfg.metric,
                                  probes=probes)  # (B, fetch)
    found, best, kept = _keep_unseen(scores, rows, seen, catalogue, cfg.k)
    return found, best, np.flatnonzero((kept < cfg.k) & (need > fetch))


def _seen_pairs(histories: Sequence[np.ndarray],
                catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """The batch's seen items as sorted distinct pair keys position * (n_items + 1) + item
    (S,), and per user how many of their seen items the index holds (B,)."""
    width = len(catalogue.offered)
    lengths = np.fromiter(map(len, histories), np.int64, len(histories))  # (B,)
    pairs = np.sort(np.repeat(np.arange(len(histories)) * width, lengths)
                    + np.concatenate(histories))  # (S',) with repeats
    first = np.ones(min(len(pairs), 1), dtype=bool)  # none when nobody in the batch saw any
    seen = pairs[np.concatenate([first, pairs[1:] != pairs[:-1]])]  # (S,) cheaper than unique
    offered = np.bincount(seen // width, weights=catalogue.offered[seen % width],
                          minlength=len(histories)).astype(np.int64)  # (B,)
    return seen, offered


def _keep_unseen(scores: np.ndarray, rows: np.ndarray, seen: np.ndarray, catalogue: Catalogue,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best k unseen of search results (B, fetch): item indices (B, k) (PAD where fewer),
    scores (B, k) and how many each kept (B,). `seen` (S,) are the batch's sorted (position,
    item) pair keys.

    Each result's pair key goes through a one-hash Bloom filter of `seen` first: only the
    few it flags (the user's seen items and a few % false alarms) are looked up in `seen`.
    """
    found = catalogue.row_items[rows]  # (B, fetch) item indices, PAD for row -1 (no result)
    ok = found != PAD  # (B, fetch)
    keys = found + np.arange(0, len(found) * len(catalogue.offered), len(catalogue.offered),
                             dtype=np.int64)[:, None]  # (B, fetch) pair keys
    flagged, shift = _bloom_filter(seen)
    user, col = np.nonzero(flagged[_slot(keys, shift)])  # maybe the user's own seen
    if len(user):
        pairs = keys[user, col]
        ok[user, col] &= seen[np.minimum(np.searchsorted(seen, pairs), len(seen) - 1)] != pairs
    first = np.argsort(~ok, axis=1, kind="stable")  # (B, fetch) kept columns first, in order
    first = np.pad(first[:, :k], ((0, 0), (0, max(0, k - first.shape[1]))))  # (B, k)
    first += np.arange(0, found.size, found.shape[1])[:, None]  # flat positions: cheaper take
    kept = np.minimum(ok.sum(axis=1), k)  # (B,)
    valid = np.arange(k) < kept[:, None]  # (B, k)
    return np.where(valid, found.take(first), PAD), np.where(valid, scores.take(first), 0), kept


_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiply, keep the top bits


def _bloom_filter(keys: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """A one-hash Bloom filter over int64 `keys` (S,): its slots (a power of two, about 32 S:
    ~3% false alarms, and small enough to stay in the CPU cache) and the shift `_slot` needs."""
    bits = int(np.clip(np.ceil(np.log2(32 * max(len(keys), 1))), 16, 24))
    shift = np.uint64(64 - bits)
    flagged = np.zeros(1 << bits, dtype=bool)
    flagged[_slot(keys, shift)] = True
    return flagged, shift


def _slot(keys: np.ndarray, shift: np.uint64) -> np.ndarray:
    """Each non-negative int64 key's slot (same shape) in a filter of 2^(64 - shift) slots."""
    return (np.ascontiguousarray(keys).view(np.uint64) * _FIBONACCI) >> shift
