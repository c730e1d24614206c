"""Full-ranking evaluation, chunked over users so memory stays at chunk x catalogue.

Every evaluated user's held-out item is ranked against **all** items. Items of the user's prefix
are removed from the ranking when `exclude_seen` is on (the target itself is always kept);
metrics without that masking are reported as well, with the suffix `_all`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from features.sequences import pad_left
from recsys.config import EvalConfig
from recsys.data.split import Split
from recsys.metrics import coverage, mrr_at_k, ndcg_at_k, recall_at_k
from recsys.ranking import chunk_scorer, mask_seen, rank_of, rankable


@torch.inference_mode()
def rank_targets(
    model: nn.Module, split: Split, which: str, config: EvalConfig
) -> dict[str, np.ndarray]:
    """0-based ranks of each evaluated user's target, plus the top-10 lists.

    Returns `ranks` and `ranks_all` (n_eval,) int64 (with / without seen masking) and
    `top10` (n_eval, 10) item indices under the configured setting.
    """
    model.eval()
    score = chunk_scorer(model)
    rows = split.eval_users(which)
    targets = split.target(which)[rows]
    ranks, ranks_all, top10 = [], [], []
    for start in range(0, len(rows), config.chunk_users):
        chunk = rows[start : start + config.chunk_users]
        target = torch.as_tensor(targets[start : start + len(chunk)])
        histories = split.history(which, chunk)
        longest = max(map(len, histories), default=1)
        inputs = torch.as_tensor(pad_left(histories, longest))  # models read what they need
        users = torch.as_tensor(chunk)
        scores = rankable(score(inputs, users))  # (chunk, n_items + 1)
        ranks_all.append(rank_of(scores, target))
        if config.exclude_seen:
            mask_seen(scores, histories, target)
        ranks.append(rank_of(scores, target))
        top10.append(scores.topk(min(10, split.n_items), dim=1).indices)
    return {"ranks": _concat(ranks), "ranks_all": _concat(ranks_all), "top10": _concat(top10)}


def ranking_metrics(ranked: dict[str, np.ndarray], split: Split, which: str, config: EvalConfig):
    """The protocol's metrics from `rank_targets` output, as a flat dict of floats."""
    ranks, ranks_all = ranked["ranks"], ranked["ranks_all"]
    out: dict[str, float] = {}
    for k in config.ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
        out[f"recall@{k}_all"] = recall_at_k(ranks_all, k)
    for k in (10, 20):
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
        out[f"ndcg@{k}_all"] = ndcg_at_k(ranks_all, k)
    out["mrr@10"] = mrr_at_k(ranks, 10)
    out["mrr@10_all"] = mrr_at_k(ranks_all, 10)
    out["coverage@10"] = coverage(ranked["top10"], split.n_items)
    cold = _cold_targets(split, which)
    if cold.any():
        out["cold_recall@10"] = recall_at_k(ranks[cold], 10)
    tail = ~head_items(split.train_item_counts)[split.target(which)[split.eval_users(which)]]
    if tail.any():
        out["tail_recall@10"] = recall_at_k(ranks[tail], 10)
    out["users"] = float(len(ranks))
    out["cold_users"] = float(cold.sum())
    out["tail_users"] = float(tail.sum())
    return out


def evaluate(model: nn.Module, split: Split, which: str, config: EvalConfig) -> dict[str, float]:
    """Rank every evaluated user's `which` target ("valid" or "test") and compute metrics."""
    return ranking_metrics(rank_targets(model, split, which, config), split, which, config)


def _concat(parts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.int64)


def head_items(counts: np.ndarray, share: float = 0.2) -> np.ndarray:
    """(n_items + 1,) bool: the `share` most-trained items (ties: lower index); the rest is tail."""
    n_items = len(counts) - 1
    order = np.argsort(-counts[1:], kind="stable") + 1
    head = np.zeros(n_items + 1, dtype=bool)
    head[order[: int(np.ceil(share * n_items))]] = True
    return head


def _cold_targets(split: Split, which: str) -> np.ndarray:
    """(n_eval,) bool: the target never occurs in any training sequence."""
    counts = split.train_item_counts
    return counts[split.target(which)[split.eval_users(which)]] == 0
