"""Candidate lists for relevance reranking: a retriever's top-K for each (history, target) example.

An example is a user's history before a target item. The retriever (any model with
`score(history (B, L), users (B,)) -> (B, n_items + 1)`) ranks the whole catalogue for that
history; with `exclude_seen` the history's items leave the ranking (a repeated target stays), as
in `recsys.eval.retrieval`. The list is the top K in that order (ties: lower item index first),
with two retrieval features per candidate: its score minus the list's top score, and
log1p(its rank).

- **train**: the last `train_positions` positions t >= 1 of each user's *train prefix*: history
  = prefix[:t], target = prefix[t]. Nothing at or after t is read (the retriever's weights did
  see the train prefixes: a known stacking bias, never a valid or test item).
- **valid**: history = train prefix, target = the valid item (model selection only).
- **test**: history = train prefix + valid item, target = the test item.

With `recent_popularity_days` N > 0, every candidate also gets log1p(its train interactions, all
users, in the N days before the example's time) as a model input (`recent_popularity`): the
example's time is its target's timestamp, and only interactions strictly before it count, so
neither the target nor anything later is read. The export's time is the end of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import nn

from features.ids import PAD
from features.sequences import pad_left
from recsys.config import RerankerConfig
from recsys.data.split import Split
from recsys.models.reranker import N_RETRIEVAL
from recsys.ranking import chunk_scorer, mask_seen, rank_of, rankable

DAY = 86_400  # seconds: the canonical schema's timestamps are integer seconds


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
    score = chunk_scorer(retriever)
    parts = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        rows = torch.as_tensor(users[start : start + len(chunk)])
        target = torch.as_tensor(targets[start : start + len(chunk)])
        longest = max(map(len, chunk), default=1)
        scores = rankable(score(torch.as_tensor(pad_left(chunk, longest)), rows))
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
    """(items (B, k), scores (B, k), target rank (B,)) of scores (B, n), best first, ties in
    index order: what a stable descending sort gives, without sorting the catalogue (k << n)."""
    k = min(k, scores.shape[1])
    index = torch.arange(scores.shape[1])
    last = torch.topk(scores, k, dim=1).values[:, -1:]  # (B, 1) the k-th best score
    above = scores > last  # (B, n) in the top k for sure
    tied = scores == last  # the lowest-index ties fill the rest
    keep = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))  # k a row
    kept = index.expand_as(scores)[keep].view(len(scores), k)  # (B, k) in index order
    values, order = torch.sort(scores.gather(1, kept), dim=1, descending=True, stable=True)
    return kept.gather(1, order), values, rank_of(scores, target)


def recent_popularity(event_items: np.ndarray, event_times: np.ndarray, items: np.ndarray,
                      now: np.ndarray, days: int) -> np.ndarray:
    """(n, K, 1) float32 log1p(how many events name items[i, j] at a time in
    [now[i] - days * DAY, now[i])): strictly before now, so an event at `now` never counts.

    event_items (m,) item indices and event_times (m,) seconds of the interactions that may be
    counted (any order); items (n, K) candidates (0 = padding, which has no events); now (n,)
    seconds. One definition for the training lists, the valid/test lists and the export
    (which keep one `EventLog` rather than sort the events again per call).
    """
    return EventLog.of(event_items, event_times).recent(items, now, days)


@dataclass(frozen=True)
class EventLog:
    """Interactions sorted once by (item, time): an item's events in a time window are then two
    binary searches away."""

    keys: np.ndarray  # (m,) sorted item * span + (time - start)
    start: int  # the earliest event time
    span: int  # seconds from the earliest to the latest event, + 1

    @classmethod
    def of(cls, event_items: np.ndarray, event_times: np.ndarray) -> EventLog:
        start = int(event_times.min()) if len(event_times) else 0
        span = int(event_times.max()) - start + 1 if len(event_times) else 1
        _check_keys(int(event_items.max(initial=0)), span)
        keys = np.sort(event_items.astype(np.int64) * span + (event_times - start))  # (m,)
        return cls(keys, start, span)

    def recent(self, items: np.ndarray, now: np.ndarray, days: int) -> np.ndarray:
        """`recent_popularity` of candidates items (n, K) at times now (n,)."""
        _check_keys(int(items.max(initial=0)), self.span)
        base = items.astype(np.int64) * self.span  # (n, K): an item's keys are base + [0, span)
        # window ends as offsets from start, clipped to [0, span]: no event lies outside
        now = now.astype(np.int64)[:, None] - self.start  # (n, 1)
        stop, begin = (np.clip(t, 0, self.span) for t in (now, now - days * DAY))
        counts = (np.searchsorted(self.keys, base + stop, side="left")
                  - np.searchsorted(self.keys, base + begin, side="left"))  # (n, K)
        return np.log1p(counts).astype(np.float32)[..., None]


def _check_keys(max_item: int, span: int) -> None:
    if (max_item + 1) * span >= np.iinfo(np.int64).max:
        raise ValueError("recent_popularity: items x time span overflows int64 keys")


def split_times(split: Split, interactions: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray,
                                                                    np.ndarray]:
    """(train times per user, like `split.train`; valid target time (n_users,); test target time
    (n_users,), 0 where not evaluated): the timestamps of the split's items, in the order of
    `recsys.data.split.leave_one_out` ((timestamp, row) per user; a cold item's time is dropped
    with it). Raises if `interactions` is not the data the split was made from."""
    users = split.users.index(interactions["user_id"]) - 1
    items = split.items.index(interactions["item_id"])
    times = interactions["timestamp"].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(times)), times, users))
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    trained = split.train_item_counts > 0  # a prefix item without a train count is a cold item
    train = []
    valid, test = np.zeros(len(split.train), np.int64), np.zeros(len(split.train), np.int64)
    for row, (seq, when) in enumerate(zip(np.split(items[order], bounds),
                                          np.split(times[order], bounds), strict=True)):
        prefix, at = (seq[:-2], when[:-2]) if len(seq) >= 3 else (seq, when)
        train.append(at[trained[prefix]])
        if not np.array_equal(prefix[trained[prefix]], split.train[row]):
            raise ValueError("interactions do not match the split's train prefixes")
        if len(seq) >= 3:
            valid[row], test[row] = when[-2], when[-1]
    return train, valid, test


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
    once on first use. `interactions` (the split's source rows) give the example times that
    `recent_popularity_days` needs.
    """

    def __init__(self, split: Split, retriever: nn.Module, config: RerankerConfig,
                 exclude_seen: bool, interactions: pd.DataFrame | None = None):
        if config.recent_popularity_days < 0:
            raise ValueError("model.reranker.recent_popularity_days must be >= 0 (0 = off)")
        if config.recent_popularity_days and interactions is None:
            raise ValueError("model.reranker.recent_popularity_days needs the interactions' "
                             "timestamps")
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
        self.times, self.end_time = None, None  # (train, valid, test) timestamps, export "now"
        if config.recent_popularity_days:
            self.times = split_times(split, interactions)
            self.end_time = int(interactions["timestamp"].max()) + 1  # after the last interaction

    @cached_property
    def train(self) -> CandidateLists:
        """The training lists whose target made the top K (built on first use: evaluation and
        export never need them)."""
        rows, ends = training_examples(self.split, self.config.train_positions)
        prefixes = self.split.train
        histories = [prefixes[r][:e] for r, e in zip(rows, ends, strict=True)]
        targets = np.array([prefixes[r][e] for r, e in zip(rows, ends, strict=True)], np.int64)
        now = (np.array([self.times[0][r][e] for r, e in zip(rows, ends, strict=True)], np.int64)
               if self.times is not None else None)
        lists = self._retrieve(histories, rows, targets, now)
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
            now = self.times[1 if which == "valid" else 2][rows] if self.times is not None else None
            self._eval[which] = self._retrieve(self.split.history(which, rows), rows,
                                               self.split.target(which)[rows], now)
        return self._eval[which]

    def popularity(self, items: np.ndarray, now: np.ndarray | None = None) -> np.ndarray:
        """(n, K, P) model inputs of candidates `items` (n, K) at times `now` (n,) (default:
        the end of the data, as the export): `recent_popularity` over the train interactions
        of all users, P = 1; P = 0 when `recent_popularity_days` is off."""
        if self.times is None:
            return np.zeros((*items.shape, 0), np.float32)
        now = np.full(len(items), self.end_time, np.int64) if now is None else now
        return self._train_events.recent(items, now, self.config.recent_popularity_days)

    @cached_property
    def _train_events(self) -> EventLog:
        """Every train interaction, what `popularity` counts, sorted once (not per call: the
        export asks per part)."""
        return EventLog.of(np.concatenate(self.split.train), np.concatenate(self.times[0]))

    def _retrieve(self, histories, rows, targets, now) -> CandidateLists:
        lists = retrieve_lists(self.retriever, histories, rows, targets, self.config.candidates,
                               self.exclude_seen, self.config.max_len)
        width = N_RETRIEVAL if self.config.retrieval_features else 0
        features = lists.features[..., :width]
        if self.times is not None:
            features = np.concatenate([features, self.popularity(lists.items, now)], axis=-1)
        return replace(lists, features=features)


def list_tensors(lists: CandidateLists) -> tuple[torch.Tensor, ...]:
    """(users (n,), items (n, K), history (n, L), features (n, K, F), valid (n, K)) tensors."""
    return (torch.as_tensor(lists.users), torch.as_tensor(lists.items),
            torch.as_tensor(lists.history), torch.as_tensor(lists.features),
            torch.as_tensor(lists.valid))
