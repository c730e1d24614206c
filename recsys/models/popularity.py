"""Most-popular baseline: every user gets items ranked by training interaction count."""

from __future__ import annotations

import torch
from torch import nn

from recsys.config import PopularityConfig


class Popularity(nn.Module):
    """Scores are training counts; it has no trainable parameters."""

    max_len = 1  # the history does not matter

    def __init__(self, config: PopularityConfig, n_items: int, item_counts: torch.Tensor | None):
        super().__init__()
        self.config = config
        counts = torch.zeros(n_items + 1) if item_counts is None else item_counts.float()
        if counts.shape != (n_items + 1,):
            raise ValueError(f"item_counts must have shape ({n_items + 1},), got {counts.shape}")
        self.register_buffer("counts", counts.clone())  # (n_items + 1,)

    def score(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> (batch, n_items + 1), the same counts for every user."""
        return self.counts.expand(history.shape[0], -1)
