"""Training tasks: how a model's batches are cut from the split and which loss they feed.

A task is an `nn.Module` that holds its model: `task(batch)` is the loss, so a wrapper that
works through `forward` (DDP, a sparsity mask) wraps the task. The one training loop
(`recsys.train.loop`) asks it for the batches of an epoch and the loss of each; the models stay
free of both. Shuffling uses the global torch RNG, which checkpoints
save and restore, so a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from features.masking import masked_views
from features.sequences import length_batches, next_item_pairs, pad_left, training_windows
from recsys.config import LossConfig
from recsys.data.split import Split
from recsys.losses import full_softmax_cross_entropy, info_nce, sampled_softmax


class NextItemTask(nn.Module):
    """SASRec+ recipe: windows of each history, full softmax over the catalogue at each position."""

    def __init__(self, model: nn.Module, split: Split, max_len: int, batch_size: int):
        super().__init__()
        self.model = model
        self.max_len = max_len
        self.windows = training_windows(split.train, max_len)
        self.lengths = np.array([len(w) for w in self.windows])
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets), each (batch, L); batches group windows of similar length."""
        order = torch.randperm(len(self.windows)).numpy()
        batches = length_batches(order, self.lengths, self.batch_size)
        for b in torch.randperm(len(batches)).tolist():
            chosen = [self.windows[w] for w in batches[b]]
            yield tuple(map(torch.as_tensor, next_item_pairs(chosen, self.max_len)))

    def forward(self, batch) -> torch.Tensor:
        """The mean next-item cross-entropy of a `batches()` batch (a scalar)."""
        inputs, targets = batch
        labelled = targets > 0
        return full_softmax_cross_entropy(self.model.position_scores(inputs, labelled),
                                          targets[labelled])


class TwoTowerTask(nn.Module):
    """(history prefix, next item) examples, sampled softmax with logQ, optional SSL masking.

    Every position t >= 1 of a user's training sequence is one example: the user tower reads the
    items before t, the item at t is the positive. Negatives are the other positives of the batch
    plus `uniform_negatives` items drawn uniformly; the SSL loss reads its own uniform items.

    Under torchrun (`shard_rows`) every rank draws the same global batch and negatives, scores
    the whole batch's candidates, and takes the loss of its own slice of the examples, scaled so
    that the ranks' gradients average (DDP, torchrec) to the global batch's.
    """

    def __init__(self, model: nn.Module | None, loss: LossConfig, split: Split, max_len: int,
                 batch_size: int, nmi: np.ndarray | None = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.max_len = max_len
        self.sequences = split.train  # not self.train: nn.Module.train()
        self.n_items = split.n_items
        self.batch_size = batch_size
        self.nmi = nmi
        lengths = np.array([len(s) for s in split.train])
        self.rows = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
        self.ends = np.concatenate([np.arange(1, n) for n in lengths] + [np.zeros(0, np.int64)])
        log_q = _log_inclusion(split.train_item_counts, batch_size, loss.uniform_negatives)
        self.register_buffer("log_q", torch.as_tensor(log_q, dtype=torch.float32),
                             persistent=False)
        if loss.masking.kind == "correlated" and nmi is None:
            raise ValueError("correlated feature masking needs the feature NMI matrix")
        self.rank, self.world = 0, 1

    def shard_rows(self, rank: int, world: int) -> None:
        """Take rank `rank`'s share of each batch's examples from now on."""
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(history (batch, L), users (batch,), targets (batch,)), similar lengths together."""
        order = torch.randperm(len(self.rows)).numpy()
        lengths = np.minimum(self.ends, self.max_len)
        batches = length_batches(order, lengths, self.batch_size)
        for b in torch.randperm(len(batches)).tolist():
            rows, ends = self.rows[batches[b]], self.ends[batches[b]]
            history = pad_left([self.sequences[r][:e] for r, e in zip(rows, ends, strict=True)],
                               self.max_len)
            targets = np.array([self.sequences[r][e] for r, e in zip(rows, ends, strict=True)])
            yield torch.as_tensor(history), torch.as_tensor(rows), torch.as_tensor(targets)

    def forward(self, batch) -> torch.Tensor:
        """Sampled softmax (+ the SSL loss) of a `batches()` batch (a scalar)."""
        model = self.model
        history, users, targets = batch
        cfg = self.loss
        # drawn on the CPU generator (the one checkpoints keep), then moved to the batch's device
        negatives = torch.randint(1, self.n_items + 1, (cfg.uniform_negatives,)).to(targets.device)
        candidates, where = torch.unique(torch.cat([targets, negatives]), return_inverse=True)
        mine = torch.arange(len(targets), device=targets.device).tensor_split(self.world)[self.rank]
        loss = sampled_softmax(model.user_vectors(history[mine], users[mine]),
                               model.item_vectors(candidates), where[mine], cfg.temperature,
                               self.log_q[candidates] if cfg.logq else None, reduction="sum")
        loss = loss * (self.world / len(targets))  # averaged over the ranks: the batch's mean
        if cfg.masking.kind != "none":
            loss = loss + cfg.masking.alpha * self.ssl_loss()
        return loss

    def ssl_loss(self) -> torch.Tensor:
        """InfoNCE between two complementary masked views of items drawn uniformly (distinct)."""
        model = self.model
        ssl = self.loss.masking
        device = self.log_q.device
        items = (torch.randperm(self.n_items)[: ssl.batch_size] + 1).to(device)
        n_features = len(model.feature_names)
        view1, view2 = (v.to(device) for v in masked_views(ssl.kind, len(items), n_features,
                                                            self.nmi))
        return info_nce(model.item_vectors(items, view1), model.item_vectors(items, view2),
                        ssl.temperature)


def _log_inclusion(counts: np.ndarray, batch: int, uniform: int) -> np.ndarray:
    """(n_items + 1,) log P(item is among the candidates of a step).

    An item is a candidate when one of `batch` positives (drawn with the training frequency)
    or one of `uniform` draws over the catalogue picks it.
    """
    n_items = len(counts) - 1
    p = counts / max(counts.sum(), 1)
    missed = (1 - p) ** batch * (1 - 1 / max(n_items, 1)) ** uniform
    return np.log(np.clip(1 - missed, 1e-12, None))
