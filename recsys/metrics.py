"""Ranking metrics as free functions over numpy arrays.

`ranks` are 0-based positions of each user's single held-out item in the full ranking
(0 = ranked first). Every function returns the mean over users as a float.
"""

from __future__ import annotations

import numpy as np


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is in the top k (= hit rate with one target)."""
    ranks = _check(ranks, k)
    return float(np.mean(ranks < k)) if ranks.size else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean 1 / log2(rank + 2) over users whose target is in the top k, 0 otherwise."""
    ranks = _check(ranks, k)
    if not ranks.size:
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, counting only targets inside the top k."""
    ranks = _check(ranks, k)
    if not ranks.size:
        return 0.0
    return float(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0).mean())


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list; top_items (users, k)."""
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    return float(np.unique(top_items).size / n_items)


def _check(ranks: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or (ranks.size and ranks.min() < 0):
        raise ValueError("ranks must be a 1-d array of non-negative positions")
    return ranks
