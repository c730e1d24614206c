"""Listwise training task for the relevance reranker: softmax over the retriever's candidates.

Each training example is a list of the retriever's top K for a train-prefix history whose next
item made the top K (`recsys.inputs.rerank_lists`). Per step, every list keeps its positive plus
`list_size - 1` candidates drawn uniformly from the rest of its top K (all K with 0), and the
loss is the softmax cross-entropy of the positive among them (`losses.listwise_softmax`): the
model learns to order the candidates a retriever actually returns. Draws use the global torch
RNG, which checkpoints save and restore.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from recsys.inputs.rerank_lists import CandidateLists, list_tensors
from recsys.losses import listwise_softmax


def sample_columns(positive: torch.Tensor, valid: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) columns per list: the positive first, then real candidates in random order.

    positive (B,) column of each list's target, valid (B, K) bool. Padding columns come last,
    so they are only taken when a list has fewer than `size` real candidates.
    """
    keys = torch.rand(valid.shape)  # (B, K) in [0, 1)
    keys = keys.masked_fill(~valid, 2.0)
    keys[torch.arange(len(positive)), positive] = -1.0
    return keys.argsort(dim=1)[:, :size]


class ListwiseTask(nn.Module):
    """Every training list once per epoch, in random order; loss = listwise softmax of the
    model's `score_lists`."""

    def __init__(self, model: nn.Module, lists: CandidateLists, batch_size: int, list_size: int):
        super().__init__()
        self.model = model
        self.tensors = list_tensors(lists)
        self.positive = torch.as_tensor(lists.positive)
        self.rows = len(lists)
        self.batch_size = batch_size
        k = lists.items.shape[1]
        self.list_size = k if list_size <= 0 else min(list_size, k)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """(users (B,), items (B, n), history (B, L), features (B, n, F), valid (B, n)); the
        positive is column 0 of every list."""
        order = torch.randperm(self.rows)
        for start in range(0, self.rows, self.batch_size):
            rows = order[start : start + self.batch_size]
            users, items, history, features, valid = (t[rows] for t in self.tensors)
            cols = sample_columns(self.positive[rows], valid, self.list_size)  # (B, n)
            yield (users, items.gather(1, cols), history,
                   features.gather(1, cols[..., None].expand(-1, -1, features.shape[-1])),
                   valid.gather(1, cols))

    def forward(self, batch) -> torch.Tensor:
        """The mean listwise softmax loss of a `batches()` batch (a scalar)."""
        users, items, history, features, valid = batch
        logits = self.model.score_lists(users, items, history, features)  # (B, n)
        positive = torch.zeros(len(users), dtype=torch.long, device=logits.device)  # column 0
        return listwise_softmax(logits, positive, valid)
