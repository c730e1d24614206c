"""Candidate lists for relevance reranking: a retriever's top-K for each (history, target) example.

An example is a user's history before a target item. The retriever (any model with
`score(history (B, L), users (B,)) -> (B, n_items + 1)`) ranks the whole catalogue for that
history; with `exclude_seen` the history's items leave the ranking (a repeated target stays), as
in `recsys.evaluate`. The list is the top K in that order (ties: lower item index first), with two
retrieval features per candidate: its score minus the list's top score, and log1p(its rank).

- **train**: the last `train_positions` positions t >= 1 of each user's *train prefix*: history
  = prefix[:t], target = prefix[t]. Nothing at or after t is read (the retriever's weights did
  see the train prefixes: a known stacking bias, never a valid or test item).
- **valid**: history = train prefix, target = the valid item (model selection only).
- **test**: history = train prefix + valid item, target = the test item.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
from torch import nn

from features.ids import PAD
from features.sequences import pad_left
from recsys.config import RerankerConfig
from recsys.data.split import Split
from recsys.evaluate import mask_seen
from recsys.models.reranker import N_RETRIEVAL


@dataclass(frozen=True)
class CandidateLists:
    """One row per example; columns of `items` are in retrieval order."""

    users: np.ndarray  # (n,) int64 user rows of the split
    history: np.ndarray  # (n, L) int64 item indices before the target, oldest first, 0-padded left
    items: np.ndarray  # (n, K) int64 candidates, best first; 0 where the list ran short
    features: np.ndarray  # (n, K, F) float32 retrieval features (F = 2, or 0 when not used)
    retrieval_score: np.ndarray  # (n, K) float32 score minus the list's top score, 0 on padding
    positive: np.ndarray  # (n,) int64 column of the target in `items`, -1 outside the top K
    target_rank: np.ndarray  # (n,) int64 0-based retrieval rank of the target in the catalogue

    def __len__(self) -> int:
        return len(self.users)

    @property
    def valid(self) -> np.ndarray:
        """(n, K) bool: a real candidate (not padding of a short list)."""
        return self.items > PAD

    def take(self, rows: np.ndarray) -> CandidateLists:
        """The examples at `rows` (an index or bool mask)."""
        return CandidateLists(*(getattr(self, f)[rows] for f in
                                ("users", "history", "items", "features",
                                 "retrieval_score", "positive", "target_rank")))


@torch.inference_mode()
def retrieve_lists(retriever: nn.Module, histories: list[np.ndarray], users: np.ndarray,
                   targets: np.ndarray, k: int, exclude_seen: bool, max_len: int,
                   batch_size: int = 512) -> CandidateLists:
    """The retriever's top `k` for each example (histories[i] -> targets[i], user row users[i]).

    `max_len` is how much history the lists keep for the reranker (the retriever reads all).
    """
    retriever.eval()
    parts = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        rows = torch.as_tensor(users[start : start + len(chunk)])
        target = torch.as_tensor(targets[start : start + len(chunk)])
        longest = max(map(len, chunk), default=1)
        scores = retriever.score(torch.as_tensor(pad_left(chunk, longest)), rows)
        scores = scores.float().clone()  # (B, n_items + 1)
        scores[:, PAD] = float("-inf")
        if exclude_seen:
            mask_seen(scores, chunk, target)
        parts.append(_top_k(scores, target, k))
    items, top, rank = (torch.cat(p).numpy() for p in zip(*parts, strict=True))
    live = np.isfinite(top)
    features = retrieval_inputs(top, live)
    positive = np.where(rank < items.shape[1], rank, -1)
    return CandidateLists(users.astype(np.int64), pad_left(histories, max_len),
                          np.where(live, items, PAD), features, features[..., 0].copy(),
                          positive.astype(np.int64), rank.astype(np.int64))


def retrieval_inputs(scores: np.ndarray, live: np.ndarray) -> np.ndarray:
    """(n, K, N_RETRIEVAL) float32 retrieval features of lists with retrieval `scores` (n, K),
    best first: the score minus the list's top score, log1p(0-based position); 0 where `live`
    (n, K) is False (padding). One definition for training, evaluation and the export."""
    first = np.where(live[:, :1], scores[:, :1], 0.0)
    position = np.broadcast_to(np.log1p(np.arange(scores.shape[1])), scores.shape)
    features = np.stack([np.where(live, scores - first, 0.0), position], axis=-1)
    return (features * live[..., None]).astype(np.float32)


def _top_k(scores: torch.Tensor, target: torch.Tensor, k: int):
    """(items (B, k), scores (B, k), target rank (B,)) in a stable order (lower index first)."""
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    rank = (order == target[:, None]).int().argmax(dim=1)  # (B,)
    return order[:, :k], values[:, :k], rank


def training_examples(split: Split, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n,), ends (n,)): the last `positions` positions t >= 1 of every train prefix
    (0 = all). Example i reads prefix[:ends[i]] of user rows[i]; its target is prefix[ends[i]].
    """
    rows, ends = [], []
    for row, prefix in enumerate(split.train):
        first = 1 if positions <= 0 else max(1, len(prefix) - positions)
        t = np.arange(first, len(prefix))
        rows.append(np.full(len(t), row))
        ends.append(t)
    return np.concatenate(rows).astype(np.int64), np.concatenate(ends).astype(np.int64)


class RerankData:
    """A leave-one-out split, its retriever, and the candidate lists the reranker reads.

    Offers what the reranker's input tables need (`users`, `items`, `n_items`, `user_known`,
    `item_known`), the training lists whose target made the top K, and valid/test lists built
    once on first use.
    """

    def __init__(self, split: Split, retriever: nn.Module, config: RerankerConfig,
                 exclude_seen: bool):
        if config.history_stats:
            raise ValueError("model.reranker.history_stats is a CTR feature: set it to false "
                             "for task 'listwise'")
        if config.candidates < 2:
            raise ValueError("model.reranker.candidates must be at least 2 to reorder anything")
        self.split, self.retriever, self.config = split, retriever, config
        self.exclude_seen = exclude_seen
        self.users, self.items = split.users, split.items
        self.user_known = np.array([len(p) > 0 for p in split.train])
        self.item_known = split.train_item_counts > 0
        self._eval: dict[str, CandidateLists] = {}
        self.train_examples = 0

    @cached_property
    def train(self) -> CandidateLists:
        """The training lists whose target made the top K (built on first use: evaluation and
        export never need them)."""
        rows, ends = training_examples(self.split, self.config.train_positions)
        prefixes = self.split.train
        histories = [prefixes[r][:e] for r, e in zip(rows, ends, strict=True)]
        targets = np.array([prefixes[r][e] for r, e in zip(rows, ends, strict=True)], np.int64)
        lists = self._retrieve(histories, rows, targets)
        self.train_examples = len(lists)
        kept = lists.take(lists.positive >= 0)  # a list without its target teaches nothing
        if not len(kept):
            raise ValueError("no training example has its target in the retriever's top "
                             f"{self.config.candidates}: raise model.reranker.candidates")
        return kept

    @property
    def n_items(self) -> int:
        return self.split.n_items

    def lists(self, which: str) -> CandidateLists:
        """The lists of the users evaluated on `which` ("valid" or "test")."""
        if which not in self._eval:
            rows = self.split.eval_users(which)
            self._eval[which] = self._retrieve(self.split.history(which, rows), rows,
                                               self.split.target(which)[rows])
        return self._eval[which]

    def _retrieve(self, histories, rows, targets) -> CandidateLists:
        lists = retrieve_lists(self.retriever, histories, rows, targets, self.config.candidates,
                               self.exclude_seen, self.config.max_len)
        width = N_RETRIEVAL if self.config.retrieval_features else 0
        return replace(lists, features=lists.features[..., :width])
