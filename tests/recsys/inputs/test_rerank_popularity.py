"""The reranker's recent-popularity input (`model.reranker.recent_popularity_days`): counts by
hand on a tiny log, the split's timestamps in leave-one-out order, no event at or after an
example's time in its lists, and the export's "now" at the end of the data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recsys.config import RerankerConfig
from recsys.data.split import leave_one_out
from recsys.export.embeddings import full_histories
from recsys.export.reranked import rerank_table
from recsys.inputs.rerank_lists import DAY, RerankData, recent_popularity, split_times


def test_recent_popularity_by_hand():
    # item 1 at days 0, 1, 2, 3 (3 = exactly "now" of row 0); item 2 at day 2.5; item 3 at 5
    event_items = np.array([1, 1, 1, 1, 2, 3])
    event_times = np.array([0, 1, 2, 3, 2.5, 5]) * DAY
    items = np.array([[1, 2, 3, 0], [1, 2, 3, 0]])
    now = np.array([3, 6]) * DAY
    counts = np.expm1(recent_popularity(event_items, event_times.astype(np.int64), items, now,
                                        days=2)[..., 0])
    # row 0: window [day 1, day 3): item 1 at days 1 and 2 (day 3 is not before now), item 2
    # at 2.5; item 3 is later; padding 0 has no events
    # row 1: window [day 4, day 6): only item 3 at day 5
    np.testing.assert_allclose(counts, [[2, 1, 0, 0], [0, 0, 1, 0]], atol=1e-5)
    one = recent_popularity(event_items, event_times.astype(np.int64), items[:1], now[:1], 30)
    assert one.shape == (1, 4, 1) and one[0, 0, 0] == pytest.approx(math.log1p(3))


def _interactions() -> pd.DataFrame:
    """Four users; user a has two rows at the same second (row order breaks the tie).

    Train events: a i1@10, i3@12, i2@12, i4@14; b i1@11; c i2@12; d i3@15, i1@16, i2@16.5
    (days). Held out: a valid i5@16, test i1@17; b valid i2@13, test i3@15; d valid i5@20,
    test i4@21. c is not evaluated.
    """
    rows = [("a", "i1", 10), ("b", "i1", 11), ("a", "i3", 12), ("a", "i2", 12), ("b", "i2", 13),
            ("a", "i4", 14), ("b", "i3", 15), ("a", "i5", 16), ("a", "i1", 17), ("c", "i2", 12),
            ("d", "i3", 15), ("d", "i1", 16), ("d", "i2", 16.5), ("d", "i5", 20), ("d", "i4", 21)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return frame.assign(timestamp=(frame["timestamp"] * DAY).astype(np.int64))


def _split(interactions: pd.DataFrame):
    return leave_one_out(interactions, pd.Series([f"i{i}" for i in range(1, 6)]))


def test_split_times_follow_the_leave_one_out_order():
    interactions = _interactions()
    split = _split(interactions)
    train, valid, test = split_times(split, interactions)
    assert split.train[0].tolist() == [1, 3, 2, 4]  # i3 before i2: same second, earlier row
    assert (train[0] // DAY).tolist() == [10, 12, 12, 14]
    assert (valid[:2] // DAY).tolist() == [16, 13] and (test[:2] // DAY).tolist() == [17, 15]
    assert train[2].tolist() == [12 * DAY] and valid[2] == test[2] == 0  # c is not evaluated
    with pytest.raises(ValueError, match="do not match"):
        split_times(split, interactions.assign(item_id=interactions["item_id"].iloc[::-1].values))


class TableRetriever(torch.nn.Module):
    """score(history, users) = a fixed random row per history item, summed."""

    def __init__(self, n_items: int):
        super().__init__()
        self.register_buffer("table", torch.randn(n_items + 1, n_items + 1,
                                                  generator=torch.Generator().manual_seed(0)))

    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.table[history].sum(1)


def _data(interactions: pd.DataFrame, days: int = 2) -> RerankData:
    config = RerankerConfig(history_stats=False, candidates=5, train_positions=0,
                            recent_popularity_days=days)
    split = _split(interactions)
    return RerankData(split, TableRetriever(split.n_items), config, exclude_seen=False,
                      interactions=interactions)


def _counts(lists, row: int = 0) -> dict[int, int]:
    """{item: its recent count} of list `row` (the feature is the log1p count)."""
    counts = np.rint(np.expm1(lists.features[row, :, -1])).astype(int)
    return dict(zip(lists.items[row].tolist(), counts.tolist(), strict=True))


def _user_a_rows(lists) -> np.ndarray:
    """Training rows of user a, by target: i3, i2, i4 (the last history item is the previous)."""
    return np.flatnonzero(lists.users == 0)


def test_lists_count_train_events_strictly_before_the_target_time():
    """Train events (all users) in the 2 days before each example's target time."""
    data = _data(_interactions())
    train = data.train
    a = _user_a_rows(train)
    assert train.history[a, -1].tolist() == [1, 3, 2]
    # target i2 at day 12, window [10, 12): i1 of a and b; not i3, at the same second
    assert _counts(train, a[1]) == {1: 2, 2: 0, 3: 0, 4: 0, 5: 0}
    # target i4 at day 14, window [12, 14): a's i3 and i2, c's i2; not b's valid i2 at 13
    assert _counts(train, a[2]) == {1: 0, 2: 2, 3: 1, 4: 0, 5: 0}
    # a's valid target i5 at day 16, window [14, 16): a's i4, d's i3; d's i1 is at "now"
    assert _counts(data.lists("valid")) == {1: 0, 2: 0, 3: 1, 4: 1, 5: 0}
    # a's test target i1 at day 17, window [15, 17): d's three; not a's valid i5 or b's test
    # i3 (held-out items are never counted)
    assert _counts(data.lists("test")) == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0}


def test_an_event_counts_only_once_strictly_before_the_example_time():
    """Moving d's i3 from day 15 to exactly a's target time (i4, day 14) leaves a's training
    lists alone; one second earlier, it enters the window of that example."""
    interactions = _interactions()
    lists = {}
    for name, when in (("later", 15 * DAY), ("at", 14 * DAY), ("before", 14 * DAY - 1)):
        moved = interactions.copy()
        moved.loc[10, "timestamp"] = when  # d's i3 (still d's first item)
        lists[name] = _data(moved).train
    a = _user_a_rows(lists["later"])
    np.testing.assert_array_equal(lists["at"].features[a], lists["later"].features[a])
    assert _counts(lists["before"], a[2])[3] == _counts(lists["later"], a[2])[3] + 1


class PopularityModel(torch.nn.Module):
    """score_lists = the last input feature (the recent popularity), to read what it was fed."""

    max_len = 4

    def score_lists(self, users, items, history, stats):
        return stats[..., -1]


def test_export_counts_up_to_the_end_of_the_data():
    """The export's "now" is one second after the last interaction (d's test item, day 21):
    6 days back, [15 d + 1 s, 21 d + 1 s), holds d's train i1 and i2 (not its i3 at day 15)."""
    data = _data(_interactions(), days=6)
    assert data.end_time == 21 * DAY + 1
    items = np.array([[1, 2, 3, 4, 5]])
    assert np.rint(np.expm1(data.popularity(items)[0, :, 0])).tolist() == [1, 1, 0, 0, 0]
    part = pa.table({"user_id": ["a"] * 5, "rank": pa.array([1, 2, 3, 4, 5], pa.int32()),
                     "item_id": ["i5", "i4", "i3", "i2", "i1"],
                     "score": pa.array([5.0, 4.0, 3.0, 2.0, 1.0], pa.float32()),
                     "stage": ["retrieval"] * 5})
    out = rerank_table(PopularityModel(), data.split, full_histories(data.split), part, 3,
                       retrieval_features=False, popularity=data.popularity).to_pandas()
    assert out["item_id"].tolist() == ["i2", "i1", "i5"]  # by popularity, ties in retrieval order
    assert out["score"].tolist() == pytest.approx([math.log1p(1), math.log1p(1), 0.0])
