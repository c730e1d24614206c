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
