"""Attention masks shared by the sequence models."""

from __future__ import annotations

import torch


def causal_padding_mask(present: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """present (batch, L) bool -> (batch * heads, L, L) bool, True = blocked.

    A position sees itself and the earlier non-padding positions; it always sees itself, so rows
    of pure padding stay finite (their outputs carry no label and are ignored).
    """
    length = present.shape[1]
    future = torch.ones(length, length, dtype=torch.bool, device=present.device).triu(1)
    blocked = future.unsqueeze(0) | ~present.unsqueeze(1)  # (batch, L, L)
    blocked &= ~torch.eye(length, dtype=torch.bool, device=present.device)
    return blocked.repeat_interleave(heads, dim=0)
