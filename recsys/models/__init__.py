"""Models. Each receives its own config section; `build_model` picks one by name."""

from __future__ import annotations

import torch
from torch import nn

from recsys.config import ModelConfig
from recsys.models.popularity import Popularity
from recsys.models.sasrec import SASRec

__all__ = ["Popularity", "SASRec", "build_model"]


def build_model(
    config: ModelConfig, n_items: int, item_counts: torch.Tensor | None = None
) -> nn.Module:
    """A fresh model for a catalogue of `n_items` (indices 1..n_items; 0 is padding).

    `item_counts` (n_items + 1,) are training counts, used by the popularity baseline only.
    """
    if config.name == "sasrec":
        return SASRec(config.sasrec, n_items)
    if config.name == "popularity":
        return Popularity(config.popularity, n_items, item_counts)
    raise ValueError(f"unknown model {config.name!r}")
