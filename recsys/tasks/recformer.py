"""Fine-tuning task for Recformer (Li et al., KDD'23): the next item against the item table.

Per epoch every user with at least two train items gives one example: a random cut t >= 1 of
their train prefix (the global torch RNG, which checkpoints keep), the items before t as the
history and the item at t as the target. The loss is the softmax cross-entropy of the target
over the whole catalogue (less the history's own items with `train.loss.exclude_history`),
scored as cosine(sequence vector, item table row) / temperature (`train.loss.temperature`). The
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
from recsys.ranking import mask_seen
from recsys.tasks.hooks import Hook, LoopContext


class RecformerTask(nn.Module):
    """One (train prefix cut, next item) example per user and epoch; full softmax loss."""

    def __init__(self, model: nn.Module, split: Split, batch_size: int, temperature: float,
                 exclude_history: bool = False):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.exclude_history = exclude_history
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
        logits = self.model.score(history) / self.temperature  # (B, n_items + 1)
        targets = targets.to(logits.device)
        logits = logits.masked_fill(torch.arange(logits.shape[1], device=logits.device) == 0,
                                    -torch.inf)  # padding is never a target
        if self.exclude_history:  # ... nor, then, an item of the history (the target stays)
            seen = torch.zeros_like(logits.detach())  # masked apart: in place on logits would
            mask_seen(seen, list(history.cpu().numpy()), targets)  # break their backward
            logits = logits + seen
        return F.cross_entropy(logits, targets)


class ItemTableRefresh(Hook):
    """Re-encode the catalogue into the model's item table every `every` epochs while the
    epoch is below `until` (None: always), at epoch starts (fine-tuning's stage 1; the table
    starts empty, so epoch 0 always encodes it; later epochs, stage 2, keep the last table) or
    at epoch ends (pre-training: validation then scores with the weights it just trained).

    The table lives in the model's state (checkpoints keep it), so a resumed run continues from
    the table it had, and this hook holds no state of its own. Unlike the reference code, stage
    2 goes on from the last stage-1 weights rather than reloading the best stage-1 checkpoint.
    """

    name = "item_table_refresh"

    def __init__(self, every: int = 1, until: int | None = None, at_end: bool = False):
        self.every, self.until, self.at_end = every, until, at_end

    def _due(self, epoch: int) -> bool:
        return (self.until is None or epoch < self.until) and epoch % self.every == 0

    def on_epoch_start(self, ctx: LoopContext) -> None:
        if not self.at_end and (ctx.epoch == 0 or self._due(ctx.epoch)):
            self._refresh(ctx)

    def on_epoch_end(self, ctx: LoopContext) -> None:
        if self.at_end and self._due(ctx.epoch):
            self._refresh(ctx)

    def _refresh(self, ctx: LoopContext) -> None:
        bf16 = ctx.config.train.precision == "bf16"  # encoded as the training steps run
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            ctx.model.refresh_items()
