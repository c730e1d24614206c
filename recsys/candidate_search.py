"""The export's work on vectors: search the offered items, drop what each user has seen, keep K.

Apart from the job (`recsys.candidates`) so that benchmarks/export.py times this code, not a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from features.ids import PAD
from recsys import index as ann
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


def build_catalogue(vectors: np.ndarray, items: np.ndarray, cfg: ExportConfig) -> Catalogue:
    """Index the offered `items` (m,) (1-based item indices) of `vectors` (n_items, dim), where
    row i is item index i + 1, with `cfg.index` and `cfg.metric`."""
    offered = np.zeros(len(vectors) + 1, dtype=bool)
    offered[items] = True
    return Catalogue(ann.build_index(vectors[items - 1], cfg.index, cfg.metric), items, offered)


def candidates_table(batches: Iterable[tuple[np.ndarray, Sequence[np.ndarray], np.ndarray]],
                     item_ids: np.ndarray | pa.Array, catalogue: Catalogue, cfg: ExportConfig,
                     bar: tqdm | None = None) -> pa.Table:
    """One part's candidate rows (user_id, rank 1..K, item_id, score, stage), in user order.

    `batches` yields, per batch of B users: their vectors (B, dim), their seen item indices
    (B arrays) and their raw ids (B,); `item_ids` (n_items,) are the raw ids of item indices
    1..n_items (a pyarrow string array saves converting them on every call). The export's work
    after the model: search, drop the seen, build the table.
    """
    if not isinstance(item_ids, pa.Array):
        item_ids = pa.array(item_ids, pa.string())
    tables, short, users = [], 0, 0
    for queries, seen, ids in batches:
        found, scores = top_unseen(queries, seen, catalogue, cfg)
        keep = found != PAD  # (B, K)
        short += int((keep.sum(axis=1) < cfg.k).sum())
        user, col = np.nonzero(keep)  # row-major: users in order, best first
        tables.append(pa.table({
            "user_id": pa.array(ids, pa.string()).take(user),
            "rank": pa.array(col + 1, pa.int32()),
            "item_id": item_ids.take(found[keep] - 1),
            "score": pa.array(scores[keep], pa.float32()),
            "stage": pa.repeat(pa.scalar(STAGE, pa.string()), len(user)),
        }, schema=SCHEMA))
        users += len(queries)
        if bar is not None:
            bar.update(len(queries))
    return pa.concat_tables(tables).replace_schema_metadata(
        {"recsys.short_users": str(short), "recsys.users": str(users)})


def top_unseen(queries: np.ndarray, histories: Sequence[np.ndarray], catalogue: Catalogue,
               cfg: ExportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Top-K unseen items per query (B, dim): item indices (B, K), PAD where fewer, scores (B, K).

    A user's K unseen are among the first K + (their count of seen items the index holds)
    results. One search fetches what 90% of the batch need; the users it leaves short of K who
    need more are searched again, fetching what the most of them need. So the few long histories
    do not make every user's search wide. With Flat, IVF and PQ indexes (the top n results are
    the start of the top n' > n) that is the result of one search as wide as the largest need;
    HNSW searches at least `fetch` wide, so there a second search may find slightly different.
    """
    width = len(catalogue.offered)  # pair key = batch position * width + item index
    lengths = np.fromiter(map(len, histories), np.int64, len(histories))  # (B,)
    seen = np.unique(np.repeat(np.arange(len(histories)) * width, lengths)
                     + np.concatenate(histories))  # (S,) sorted pair keys
    hot = np.zeros(width, dtype=bool)  # (n_items + 1,) seen by someone in the batch
    hot[seen % width] = True
    seen_offered = np.bincount(seen // width, weights=catalogue.offered[seen % width],
                               minlength=len(queries))  # (B,)
    need = np.minimum(cfg.k + seen_offered.astype(np.int64), len(catalogue.items))  # (B,)
    top_items = np.full((len(queries), cfg.k), PAD, dtype=np.int64)  # (B, K)
    top_scores = np.zeros((len(queries), cfg.k), dtype=np.float32)  # (B, K)
    users = np.arange(len(queries))  # (n,) batch positions still to search
    fetch = int(np.quantile(need, 0.9, method="higher"))
    while len(users):
        asked = queries if len(users) == len(queries) else queries[users]  # (n, dim)
        scores, rows = ann.search(catalogue.index, asked, fetch, nprobe=cfg.nprobe,
                                  ef_search=cfg.ef_search, metric=cfg.metric)  # (n, fetch)
        kept = _keep_unseen(users, scores, rows, seen, hot, catalogue, cfg.k,
                            top_items, top_scores)  # (n,)
        users = users[(kept < cfg.k) & (need[users] > fetch)]
        fetch = int(need[users].max()) if len(users) else 0
    return top_items, top_scores


def _keep_unseen(users: np.ndarray, scores: np.ndarray, rows: np.ndarray, seen: np.ndarray,
                 hot: np.ndarray, catalogue: Catalogue, k: int, top_items: np.ndarray,
                 top_scores: np.ndarray) -> np.ndarray:
    """Write the best k unseen of the search results (n, fetch) of batch positions `users` (n,)
    into their rows of `top_items` / `top_scores` (B, k); return how many each kept (n,).
    `seen` (S,) are the batch's sorted (position, item) pair keys, `hot` its seen items."""
    found = np.where(rows >= 0, catalogue.items[rows], PAD)  # (n, fetch) item indices
    ok = found != PAD  # (n, fetch)
    user, col = np.nonzero(hot[found])  # results that someone in the batch has seen
    if len(user):  # drop the user's own seen: look each pair up in `seen`
        pairs = users[user] * len(hot) + found[user, col]
        ok[user, col] &= seen[np.minimum(np.searchsorted(seen, pairs), len(seen) - 1)] != pairs
    rank = np.cumsum(ok, axis=1)  # (n, fetch) 1-based rank among the kept
    ok &= rank <= k
    user, _ = np.nonzero(ok)
    items = np.full((len(users), k), PAD, dtype=np.int64)  # (n, k)
    best = np.zeros((len(users), k), dtype=np.float32)  # (n, k)
    items[user, rank[ok] - 1] = found[ok]
    best[user, rank[ok] - 1] = scores[ok]
    top_items[users], top_scores[users] = items, best
    return ok.sum(axis=1)
