"""Ranking and CTR metrics as free functions over numpy arrays.

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


# CTR metrics: `labels` (n,) in {0, 1}, `scores` (n,) any real scores (AUC) or probabilities
# (log loss, calibration).


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties = 1/2.

    Computed from average ranks (Mann-Whitney U). Needs both classes.
    """
    labels, scores = _check_ctr(labels, scores)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes, got {positives} positives and {negatives} "
                         "negatives")
    ranks = _average_ranks(scores)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Mean per-group AUC (per user or impression), weighted by the group's row count.

    Groups with a single class have no AUC and are skipped; NaN if no group has both classes.
    """
    labels, scores = _check_ctr(labels, scores)
    total, weight = 0.0, 0
    for rows in _mixed_groups(labels, groups):
        total += len(rows) * auc(labels[rows], scores[rows])
        weight += len(rows)
    return float(total / weight) if weight else float("nan")


def impression_metrics(labels: np.ndarray, scores: np.ndarray,
                       impressions: np.ndarray) -> dict[str, float]:
    """MIND's ranking metrics of clicks within each impression, averaged over impressions
    (unweighted): `auc`, `mrr` (sum over clicks of 1 / rank, over the clicks), `ndcg@5`,
    `ndcg@10`, and `count`, the impressions averaged. Labels (n,) in {0, 1}, scores and impression
    ids (n,). Impressions with only clicks or none have no AUC and are skipped; NaN if all are.
    """
    labels, scores = _check_ctr(labels, scores)
    rows_of = _mixed_groups(labels, impressions)
    sums = {"auc": 0.0, "mrr": 0.0, "ndcg@5": 0.0, "ndcg@10": 0.0}
    for rows in rows_of:
        clicked = labels[rows][np.argsort(-scores[rows], kind="stable")]  # (m,) by score
        discount = 1.0 / np.log2(np.arange(2, len(rows) + 2))  # (m,)
        ideal = np.sort(clicked)[::-1]
        sums["auc"] += auc(labels[rows], scores[rows])
        sums["mrr"] += float((clicked / np.arange(1, len(rows) + 1)).sum() / clicked.sum())
        for k in (5, 10):
            sums[f"ndcg@{k}"] += float((clicked[:k] * discount[:k]).sum()
                                       / (ideal[:k] * discount[:k]).sum())
    n = len(rows_of)
    return {**{k: v / n if n else float("nan") for k, v in sums.items()}, "count": float(n)}


def _mixed_groups(labels: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    """Row positions of each group (in sorted group order) that holds both classes."""
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups {groups.shape} and labels {labels.shape} differ in shape")
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
    return [rows for rows in np.split(order, bounds) if 0 < labels[rows].sum() < len(rows)]


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    labels, probs = _check_ctr(labels, probs)
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("log loss needs probabilities in [0, 1]")
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def calibration_table(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Predicted vs observed positive rate in `bins` equal-count bins of the predictions (deciles).

    Rows are sorted by probability (stable) and cut into `bins` parts of near-equal size. Returns
    `count`, `predicted` (mean probability), `observed` (positive rate), each (bins,), and `ece`:
    the count-weighted mean |predicted - observed|.
    """
    labels, probs = _check_ctr(labels, probs)
    if bins <= 0 or bins > len(labels):
        raise ValueError(f"bins must be in [1, {len(labels)}], got {bins}")
    parts = np.array_split(np.argsort(probs, kind="stable"), bins)
    count = np.array([len(p) for p in parts])
    predicted = np.array([probs[p].mean() for p in parts])
    observed = np.array([labels[p].mean() for p in parts])
    ece = float(np.sum(count * np.abs(predicted - observed)) / count.sum())
    return {"count": count, "predicted": predicted, "observed": observed, "ece": ece}


def _check_ctr(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal 1-d")
    if not labels.size:
        raise ValueError("no rows")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return labels, scores


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
