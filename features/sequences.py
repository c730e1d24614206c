"""User histories as padded integer batches.

A history is an int64 array of item indices in time order. Batches are left-padded with 0 so the
most recent item always sits in the last column; histories longer than `max_len` keep their most
recent `max_len` items, and a batch is only as wide as its longest history (no all-pad columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.ids import PAD


def pad_left(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Stack histories into (batch, width) int64, newest item last, PAD where empty.

    width = min(max_len, longest history), at least 1.
    """
    width = max(1, min(max_len, max((len(h) for h in histories), default=0)))
    out = np.full((len(histories), width), PAD, dtype=np.int64)
    for row, items in enumerate(histories):
        recent = items[-width:]
        if len(recent):
            out[row, width - len(recent) :] = recent
    return out


def next_item_pairs(histories: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets for training on every position at once.

    For a history (i1, ..., in) the input is (i1, ..., i(n-1)) and the target (i2, ..., in),
    both left-padded to (batch, width); target PAD marks positions without a label.
    """
    inputs = pad_left([h[:-1] for h in histories], max_len)
    targets = pad_left([h[1:] for h in histories], max_len)
    return inputs, targets


def length_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut `order` (a shuffled array of row numbers) into batches of similar length.

    Rows are stably sorted by `lengths[row]`, so equal lengths keep their shuffled order, then cut
    into `batch_size` chunks; padding then costs little. The caller shuffles the batch order.
    """
    by_length = order[np.argsort(lengths[order], kind="stable")]
    return [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]


def training_windows(histories: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each history into windows of at most `max_len + 1` items, newest window first.

    Consecutive windows share one item (the last input of one is the first of the next), so
    every transition of a long history is trained on, not only its most recent `max_len`.
    Windows with fewer than two items carry no (input, target) pair and are dropped.
    """
    windows = []
    for items in histories:
        for end in range(len(items), 1, -max_len):
            windows.append(items[max(0, end - max_len - 1) : end])
    return windows
