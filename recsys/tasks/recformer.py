"""Fine-tuning task for Recformer (Li et al., KDD'23): the next item against the item table.

Per epoch every user with at least two train items gives one example: a random cut t >= 1 of
their train prefix (the global torch RNG, which checkpoints keep), the items before t as the
history and the item at t as the target. The loss is the softmax cross-entropy of the target
over the whole catalogue, scored as cosine(sequence vector, item table row) / temperature. The
item table is a buffer the `ItemTableRefresh` hook re-encodes (stage 1) and then keeps (stage
2), so gradients reach the sequence side only, as in the paper's fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.sequences import pad_left
from recsys.data.split import Split
from recsys.tasks.hooks import Hook, LoopContext


class RecformerTask(nn.Module):
    """One (train prefix cut, next item) example per user and epoch; full softmax loss."""

    def __init__(self, model: nn.Module, split: Split, batch_size: int):
        super().__init__()
        self.model = model
        self.sequences = [s for s in split.train if len(s) >= 2]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.sequences) // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(history (B, L) left-padded with 0, targets (B,)), users in random order."""
        order = torch.randperm(len(self.sequences)).tolist()
        lengths = torch.tensor([len(s) for s in self.sequences])
        cuts = (torch.rand(len(lengths)) * (lengths - 1)).long() + 1  # in [1, len - 1]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            history = [self.sequences[r][: cuts[r]] for r in rows]
            targets = np.array([self.sequences[r][cuts[r]] for r in rows])
            yield torch.as_tensor(pad_left(history, self.model.max_len)), torch.as_tensor(targets)

    def forward(self, batch) -> torch.Tensor:
        """The mean next-item cross-entropy over the catalogue (a scalar)."""
        history, targets = batch
        logits = self.model.score(history)  # (B, n_items + 1)
        logits = logits.masked_fill(torch.arange(logits.shape[1], device=logits.device) == 0,
                                    -torch.inf)  # padding is never a target
        return F.cross_entropy(logits, targets.to(logits.device))


class ItemTableRefresh(Hook):
    """Stage 1: re-encode the catalogue into the model's item table at the start of epoch 0
    and every `every` epochs after, up to epoch `stage1_epochs`; stage 2 keeps the last table.

    The table lives in the model's state (checkpoints keep it), so a resumed run continues from
    the table it had, and this hook holds no state of its own.
    """

    name = "item_table_refresh"

    def __init__(self, every: int, stage1_epochs: int):
        self.every, self.stage1_epochs = every, stage1_epochs

    def on_epoch_start(self, ctx: LoopContext) -> None:
        first = ctx.epoch == 0  # the table starts empty: encode it once even with no stage 1
        if first or (ctx.epoch < self.stage1_epochs and ctx.epoch % self.every == 0):
            bf16 = ctx.config.train.precision == "bf16"  # encoded as the training steps run
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
                ctx.model.refresh_items()
