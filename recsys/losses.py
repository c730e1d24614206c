"""Training losses, apart from the models that produce their inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_cross_entropy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the whole catalogue.

    scores (n, n_items + 1) with column 0 the padding item, which is never a valid answer;
    targets (n,) item indices >= 1. Returns the mean loss (scalar).
    """
    return F.cross_entropy(scores[:, 1:], targets - 1)


def sampled_softmax(users: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
                    temperature: float, log_q: torch.Tensor | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """Softmax over a sampled set of distinct candidate items, with logQ correction.

    users (n, dim) and candidates (c, dim) are unit vectors; positive (n,) is the column of each
    row's own item. log_q (c,) is the log probability that the sampler put each candidate in the
    set; subtracting it undoes the bias towards popular items of in-batch negatives
    (Yi et al. 2019). Candidates are distinct, so no "accidental hit" repeats a positive.
    `reduction` "sum" adds the rows' losses (0 for no rows) instead of averaging them.
    """
    logits = users @ candidates.T / temperature  # (n, c)
    if log_q is not None:
        logits = logits - log_q
    return F.cross_entropy(logits, positive, reduction=reduction)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive loss between two views of the same n items, (n, dim) unit vectors each.

    Row i of view1 must pick row i of view2 among all n (the other items are its negatives),
    and the other way round; the mean of both directions is returned.
    """
    logits = view1 @ view2.T / temperature  # (n, n)
    labels = torch.arange(len(view1), device=view1.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def listwise_softmax(logits: torch.Tensor, positive: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over each candidate list (ListNet with one relevant item).

    logits (n, k) scores of a list's candidates, positive (n,) the column of the relevant one,
    valid (n, k) bool or None: False columns (padding) take no share of the softmax.
    Returns the mean over lists of -log softmax(logits)[positive].
    """
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, positive)
