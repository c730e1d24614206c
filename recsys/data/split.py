"""Leave-one-out split of the evaluation protocol (DESIGN.md).

Per user, interactions are ordered by (timestamp, original row order): the last item is the test
target, the second-to-last the validation target, the rest is training. Users with fewer than
three interactions keep everything in training and are not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from features.ids import PAD, IdMap


@dataclass(frozen=True)
class Split:
    """Integer-coded sequences of one dataset; index 0 of any item array means 'none'."""

    users: IdMap  # user index u -> raw user id (user_index = u + 1)
    items: IdMap  # the whole catalogue, in items.parquet order
    train: list[np.ndarray]  # per user (n_users,), item indices in time order
    valid_target: np.ndarray  # (n_users,) item index, PAD if the user is not evaluated
    test_target: np.ndarray  # (n_users,) item index, PAD if the user is not evaluated

    @property
    def n_items(self) -> int:
        return len(self.items)

    def eval_users(self, split: str) -> np.ndarray:
        """Row numbers (into `train`) of users evaluated on `split`."""
        return np.flatnonzero(self.target(split) != PAD)

    def target(self, split: str) -> np.ndarray:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return self.valid_target if split == "valid" else self.test_target

    def history(self, split: str, rows: np.ndarray) -> list[np.ndarray]:
        """What the model sees before the target: train prefix (+ valid item for test)."""
        if split == "valid":
            return [self.train[r] for r in rows]
        if split != "test":
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return [np.append(self.train[r], self.valid_target[r]) for r in rows]

    @cached_property
    def train_item_counts(self) -> np.ndarray:
        """(n_items + 1,) interactions per item index in the training part (computed once)."""
        flat = np.concatenate(self.train) if self.train else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.n_items + 1)


def leave_one_out(interactions: pd.DataFrame, item_ids: pd.Series,
                  cold_fraction: float = 0.0) -> Split:
    """Split canonical interactions (row order = raw file order) for the whole catalogue.

    With `cold_fraction` > 0, that share of the interacted items, the newest by first
    interaction, never enters training (they are dropped from every training prefix) but stay
    valid/test targets: a cold-start split for catalogues without enough cold items of their own.
    """
    if not 0.0 <= cold_fraction < 1.0:
        raise ValueError(f"cold_fraction must be in [0, 1), got {cold_fraction}")
    items = IdMap(item_ids)
    users = IdMap(interactions["user_id"])
    user_idx = users.index(interactions["user_id"])
    item_idx = items.index(interactions["item_id"])
    timestamps = interactions["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(interactions)), timestamps, user_idx))  # stable on ties
    user_sorted, item_sorted = user_idx[order], item_idx[order]
    bounds = np.flatnonzero(np.diff(user_sorted)) + 1
    sequences = np.split(item_sorted, bounds)  # in user index order, since users sort first

    cold = _newest_items(item_idx[np.argsort(timestamps, kind="stable")], cold_fraction)
    train, valid, test = [], np.zeros(len(users), np.int64), np.zeros(len(users), np.int64)
    for row, seq in enumerate(sequences):
        prefix = seq[:-2] if len(seq) >= 3 else seq
        train.append(prefix[~np.isin(prefix, cold)] if len(cold) else prefix)
        if len(seq) >= 3:
            valid[row], test[row] = seq[-2], seq[-1]
    return Split(users=users, items=items, train=train, valid_target=valid, test_target=test)


def _newest_items(items_in_time_order: np.ndarray, fraction: float) -> np.ndarray:
    """The last `fraction` of the distinct items, ordered by their first interaction."""
    first_seen = pd.unique(items_in_time_order)
    return first_seen[len(first_seen) - int(round(fraction * len(first_seen))):] \
        if fraction > 0 else first_seen[:0]
