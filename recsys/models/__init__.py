"""Models. Each receives its own config section; `build_model` picks one by name."""

from __future__ import annotations

import torch
from torch import nn

from recsys.config import ModelConfig
from recsys.models.popularity import Popularity
from recsys.models.reranker import Reranker, RerankerInputs
from recsys.models.sasrec import SASRec
from recsys.models.two_tower import TowerInputs, TwoTower

__all__ = ["TowerInputs", "Popularity", "Reranker", "RerankerInputs", "SASRec", "TwoTower",
           "build_model"]


def build_model(
    config: ModelConfig, n_items: int, item_counts: torch.Tensor | None = None,
    inputs: TowerInputs | RerankerInputs | None = None,
) -> nn.Module:
    """A fresh model for a catalogue of `n_items` (indices 1..n_items; 0 is padding).

    `item_counts` (n_items + 1,) are training counts, used by the popularity baseline only;
    `inputs` are the features the two-tower model (`TowerInputs`) or the reranker
    (`RerankerInputs`) reads.
    """
    if config.name == "sasrec":
        return SASRec(config.sasrec, n_items)
    if config.name == "popularity":
        return Popularity(config.popularity, n_items, item_counts)
    if config.name == "two_tower":
        if inputs is None:
            raise ValueError("the two-tower model needs its item inputs")
        return TwoTower(config.two_tower, n_items, inputs)
    if config.name == "reranker":
        if not isinstance(inputs, RerankerInputs):
            raise ValueError("the reranker needs its RerankerInputs")
        return Reranker(config.reranker, inputs)
    raise ValueError(f"unknown model {config.name!r}")
