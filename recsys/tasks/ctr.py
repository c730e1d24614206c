"""CTR training task for the reranker: shuffled labelled rows, binary cross-entropy.

Like the tasks in `recsys.tasks.retrieval`, it hands the one training loop
(`recsys.train.loop.fit`) the batches of an epoch and the loss of each, so the model stays free of
both. Shuffling uses the global torch RNG, which checkpoints save and restore (a resumed run
draws the same batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.ctr import CtrPart
from recsys.inputs.reranker import part_tensors


class CtrTask(nn.Module):
    """Every training row once per epoch, in random order; loss = mean BCE on the logits."""

    def __init__(self, model: nn.Module, part: CtrPart, batch_size: int):
        super().__init__()
        self.model = model
        self.tensors = part_tensors(part)
        self.rows = len(part)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """(users (B,), items (B,), history (B, L), stats (B, 2), labels (B,))."""
        order = torch.randperm(self.rows)
        for start in range(0, self.rows, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield tuple(t[rows] for t in self.tensors)

    def forward(self, batch) -> torch.Tensor:
        """The mean BCE of a `batches()` batch (a scalar)."""
        *inputs, labels = batch
        return F.binary_cross_entropy_with_logits(self.model(*inputs), labels)
