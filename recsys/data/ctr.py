"""CTR data for the reranker: labelled rows, a global temporal split, each row's past.

- **Labels** come from the dataset's `label` column when it has one (impressions: 1 click, 0 shown
  and not clicked), otherwise from explicit ratings: rating >= `positive_min` -> 1,
  rating <= `negative_max` -> 0, ratings in between are dropped (`data.ctr` in the config).
- **Split** (DESIGN.md: CTR = temporal by time): global time quantiles over the labelled rows,
  the same cut for every user: t < q(valid_from) -> train, t < q(test_from) -> valid, else test.
  Every training row is older than every validation row, which is older than every test row.
- **History** of a row: the user's most recent `max_len` interacted items with a timestamp
  *strictly before* the row's time (a tie may be the same session, so it is left out). On
  impression data only clicks count as interactions; on rating data every rated item does (the
  dropped middle ratings too: the user did watch them). Valid/test rows see the earlier
  valid/test rows of their user, as a live system would.
- **Stats** of a row: how many labelled rows the user had strictly before it and their smoothed
  positive rate, so new users (no trained ID) still carry their rating habit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.ids import IdMap

PRIOR_ROWS = 5.0  # pseudo-rows of the training positive rate in the smoothed user rate
PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class CtrPart:
    """The rows of one split part, in time order (stable on ties)."""

    users: np.ndarray  # (n,) int64 user row (index into CtrSplit.users.ids)
    items: np.ndarray  # (n,) int64 item index 1..n_items (0 is padding)
    labels: np.ndarray  # (n,) float32 in {0, 1}
    times: np.ndarray  # (n,) int64 seconds
    history: np.ndarray  # (n, max_len) int64 items before the row, oldest first, 0-padded left
    stats: np.ndarray  # (n, 2) float32: log1p(earlier labelled rows), their smoothed positive rate
    impressions: np.ndarray | None  # (n,) int64 impression of the row (impression data), or None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class CtrSplit:
    """Labelled rows split by time; users and items coded like `Split` (item 0 = padding)."""

    users: IdMap  # user row r -> users.ids[r]
    items: IdMap  # the whole catalogue, in items.parquet order
    train: CtrPart
    valid: CtrPart
    test: CtrPart
    user_known: np.ndarray  # (n_users,) bool: the user has training rows (a trained ID)
    item_known: np.ndarray  # (n_items + 1,) bool: the item has training rows
    cuts: tuple[int, int]  # timestamps where validation and test start

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def part(self, which: str) -> CtrPart:
        if which not in PARTS:
            raise ValueError(f"CTR split part must be one of {PARTS}, got {which!r}")
        return getattr(self, which)


def ctr_labels(interactions: pd.DataFrame, positive_min: float, negative_max: float) -> pd.Series:
    """(n,) float labels aligned with `interactions`: 1, 0, or NaN for a dropped row.

    The `label` column wins when present (it must hold only 0 and 1); otherwise `rating` is
    thresholded. A label or rating that is missing is an error, never a silent drop.
    """
    if "label" in interactions.columns:
        labels = pd.to_numeric(interactions["label"], errors="coerce").astype("float64")
        bad = labels.isna() | ~labels.isin([0.0, 1.0])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"interactions.parquet column 'label' must hold 0 or 1; "
                             f"{int(bad.sum())} rows do not, e.g. row {row}: "
                             f"{interactions['label'].iloc[row]!r}")
        return labels
    if "rating" not in interactions.columns:
        raise ValueError("CTR labels need a 'label' column (impressions) or a 'rating' column "
                         "in interactions.parquet; this dataset has neither")
    if not negative_max < positive_min:
        raise ValueError(f"data.ctr.negative_max ({negative_max}) must be below "
                         f"data.ctr.positive_min ({positive_min})")
    rating = pd.to_numeric(interactions["rating"], errors="coerce").astype("float64")
    if rating.isna().any():
        row = int(np.flatnonzero(rating.isna().to_numpy())[0])
        raise ValueError(f"interactions.parquet column 'rating' is missing or not a number in "
                         f"{int(rating.isna().sum())} rows, e.g. row {row}")
    return pd.Series(np.where(rating >= positive_min, 1.0,
                              np.where(rating <= negative_max, 0.0, np.nan)),
                     index=interactions.index)


def ctr_split(interactions: pd.DataFrame, item_ids: pd.Series, positive_min: float = 4.0,
              negative_max: float = 2.0, valid_from: float = 0.8, test_from: float = 0.9,
              max_len: int = 50) -> CtrSplit:
    """Label, split by global time quantiles and attach history and stats (see module doc)."""
    if not 0.0 < valid_from < test_from < 1.0:
        raise ValueError(f"need 0 < data.ctr.valid_from ({valid_from}) < data.ctr.test_from "
                         f"({test_from}) < 1")
    labels = ctr_labels(interactions, positive_min, negative_max).to_numpy()
    items = IdMap(item_ids)
    users = IdMap(interactions["user_id"])
    user = users.index(interactions["user_id"]) - 1  # user rows 0..n_users-1
    item = items.index(interactions["item_id"])
    time = interactions["timestamp"].to_numpy().astype(np.int64)

    labelled = ~np.isnan(labels)
    if not labelled.any():
        raise ValueError("no labelled rows: every rating falls between the data.ctr thresholds")
    cuts = tuple(int(np.quantile(time[labelled], q, method="lower"))
                 for q in (valid_from, test_from))
    # history events: clicks on impression data, every rated item on rating data
    is_event = labels == 1 if "label" in interactions.columns else np.ones(len(labels), bool)
    history = _history(user, item, time, is_event, max_len)
    trained = labelled & (time < cuts[0])
    prior = float(labels[trained].mean()) if trained.any() else 0.5  # the training positive rate
    stats = _stats(user, labels, time, labelled, prior)
    impression = (pd.factorize(interactions["impression_id"])[0].astype(np.int64)
                  if "impression_id" in interactions.columns else None)

    bounds = {"train": labelled & (time < cuts[0]),
              "valid": labelled & (time >= cuts[0]) & (time < cuts[1]),
              "test": labelled & (time >= cuts[1])}
    parts = {}
    for name, mask in bounds.items():
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(time[rows], kind="stable")]
        parts[name] = CtrPart(user[rows], item[rows], labels[rows].astype(np.float32),
                              time[rows], history[rows], stats[rows],
                              None if impression is None else impression[rows])
        _check_part(name, parts[name])
    user_known = np.zeros(len(users), bool)
    user_known[parts["train"].users] = True
    item_known = np.zeros(len(items) + 1, bool)
    item_known[parts["train"].items] = True
    return CtrSplit(users, items, parts["train"], parts["valid"], parts["test"], user_known,
                    item_known, cuts)


def _check_part(name: str, part: CtrPart) -> None:
    """Every part needs rows of both classes: AUC, and so model selection, is undefined without."""
    if not len(part):
        raise ValueError(f"CTR {name} split is empty: move data.ctr.valid_from / test_from")
    positives = int(part.labels.sum())
    if positives in (0, len(part)):
        raise ValueError(f"CTR {name} split has a single class ({positives} positives of "
                         f"{len(part)} rows): AUC is undefined; check the label rule "
                         f"(data.ctr.positive_min / negative_max) or the time cuts")


def _history(user: np.ndarray, item: np.ndarray, time: np.ndarray, is_event: np.ndarray,
             max_len: int) -> np.ndarray:
    """(n, max_len) per row: the user's last `max_len` event items with time < the row's time."""
    events, starts, ends = _earlier(user, time, is_event)
    positions = ends[:, None] - max_len + np.arange(max_len)[None, :]  # (n, max_len)
    present = positions >= starts[:, None]
    sorted_items = np.append(item[events], 0)  # index -1 (no events at all) reads padding
    return np.where(present, sorted_items[np.where(present, positions, -1)], 0)


def _stats(user: np.ndarray, labels: np.ndarray, time: np.ndarray, labelled: np.ndarray,
           prior: float) -> np.ndarray:
    """(n, 2) float32: log1p(count) and smoothed positive rate of the user's earlier rows."""
    rows, starts, ends = _earlier(user, time, labelled)
    cum = np.concatenate([[0.0], np.cumsum(labels[rows])])  # positives before sorted position i
    count = (ends - starts).astype(np.float64)
    positives = cum[ends] - cum[starts]
    rate = (positives + PRIOR_ROWS * prior) / (count + PRIOR_ROWS)
    return np.stack([np.log1p(count), rate], axis=1).astype(np.float32)


def _earlier(user: np.ndarray, time: np.ndarray,
             among: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows `among` (n,) bool sorted by user, time and file order (m,), and per row (n,)
    the slice [start, end) of them that are the same user's rows strictly earlier."""
    rows = np.flatnonzero(among)
    rows = rows[np.lexsort((rows, time[rows], user[rows]))]
    keys = _user_time_key(user, time)
    ends = np.searchsorted(keys[rows], keys, side="left")  # first row not strictly earlier
    starts = np.searchsorted(user[rows], user, side="left")  # the user's first row
    return rows, starts, ends


def _user_time_key(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """One int64 per row that sorts like (user, time)."""
    span = int(time.max() - time.min()) + 2 if len(time) else 2
    return user.astype(np.int64) * span + (time - time.min())
