"""ID and categorical features pooled by one torchrec `EmbeddingBagCollection`.

A `Bags` module holds the tables; which rows a batch reads arrives with the batch as a
`KeyedJaggedTensor` (built in `recsys.inputs.tables.bag_features`), so a model never holds the
catalogue's codes, and a sharded collection (torchrec's DistributedModelParallel) gets its
input the way torchrec expects it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType


def _table(name: str, rows: int, dim: int) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(name=f"t_{name}", embedding_dim=dim, num_embeddings=max(rows, 1),
                              feature_names=[name], pooling=PoolingType.MEAN)


class Bags(nn.Module):
    """One mean-pooled table per feature: a KJT of `names` -> {name: (n, dim)}, in `names`
    order; an empty bag pools to zeros."""

    def __init__(self, dim: int, tables: dict[str, int]):
        """`tables` maps each feature name to its rows (distinct values, or IDs)."""
        super().__init__()
        self.names = tuple(tables)
        self.count = len(tables)
        self.collection = EmbeddingBagCollection(
            tables=[_table(name, rows, dim) for name, rows in tables.items()])

    def forward(self, bags: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        return self.collection(bags).to_dict()
