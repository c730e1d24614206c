"""Ranks from model scores (torch): the step between a model's scores over the catalogue and
the metrics, shared by evaluation and by the reranker's candidate lists.

Scores are (B, n_items + 1) with column 0 the padding item, never ranked.
"""

from __future__ import annotations

import numpy as np
import torch

UNRANKED = torch.iinfo(torch.int64).max  # the rank of a target the model could not score


def chunk_scorer(model):
    """`model.score` for scoring many chunks of users under fixed weights: a model with a
    `scorer()` (the two-tower) computes its catalogue side once there, not once a chunk."""
    return model.scorer() if hasattr(model, "scorer") else model.score


def with_repeat_bias(scores: torch.Tensor, history: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """scores (B, n_items + 1) plus the scalar `bias` on every item of history (B, L), however
    long: one learned offset for items already seen (RepeatNet-style repeat awareness)."""
    seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history.to(scores.device), True)
    return scores + bias * seen


def rankable(scores: torch.Tensor) -> torch.Tensor:
    """A float copy of model scores (B, n_items + 1) fit for ranking: the padding column and every
    non-finite score (a diverged model's NaN or inf) set to -inf, so that they rank last."""
    inf = float("-inf")
    scores = torch.nan_to_num(scores.float(), nan=inf, posinf=inf)  # a new tensor
    scores[:, 0] = inf
    return scores


def rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) 0-based position of each row's `target` column (B,) in `scores` (B, n) sorted
    descending; ties go to the lower column, as a stable sort would. A target whose score is not
    finite is never a hit, whatever the cut-off: its rank is UNRANKED (every comparison with NaN
    is false, so it would otherwise rank first).
    """
    target_score = scores.gather(1, target[:, None])  # (chunk, 1)
    items = torch.arange(scores.shape[1])[None, :]
    ahead = (scores > target_score) | ((scores == target_score) & (items < target[:, None]))
    return torch.where(torch.isfinite(target_score[:, 0]), ahead.sum(dim=1), UNRANKED)


def mask_seen(scores: torch.Tensor, histories: list[np.ndarray], target: torch.Tensor) -> None:
    """Set the history items of each row of `scores` (B, n_items + 1) to -inf in place; each
    row's target (B,) stays rankable."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    keep = scores.gather(1, target[:, None])
    scores[torch.as_tensor(rows), torch.as_tensor(cols, dtype=torch.long)] = float("-inf")
    scores.scatter_(1, target[:, None], keep)  # a repeated target stays rankable
