"""CTR data: the label rule, the global temporal split, history without future leakage, stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.ctr import PRIOR_ROWS, ctr_labels, ctr_split


def _table(rows, rating=True) -> pd.DataFrame:
    """rows of (user, item, time, rating-or-label) -> canonical interactions."""
    users, items, times, values = zip(*rows, strict=True)
    df = pd.DataFrame({"user_id": list(users), "item_id": list(items),
                       "timestamp": np.array(times, np.int64)})
    if rating:
        df["rating"] = np.array(values, np.float32)
    else:
        df["label"] = np.array(values, np.int8)
    return df


def _random_table(seed=0, users=12, items=40, rows=400) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(users, size=rows)],
        "item_id": [f"i{i}" for i in rng.integers(items, size=rows)],
        "timestamp": rng.integers(0, 60, size=rows).astype(np.int64),  # many ties on purpose
        "rating": rng.integers(1, 6, size=rows).astype(np.float32),
    })
    return df, pd.Series([f"i{i}" for i in range(items)])


def test_rating_rule_keeps_high_and_low_and_drops_the_middle():
    df = _table([("a", "x", t, r) for t, r in enumerate([5, 4, 3, 2, 1, 4.5, 2.5])])
    labels = ctr_labels(df, positive_min=4, negative_max=2).to_numpy()
    np.testing.assert_array_equal(labels, [1, 1, np.nan, 0, 0, 1, np.nan])
    strict = ctr_labels(df, positive_min=5, negative_max=1).to_numpy()
    np.testing.assert_array_equal(strict, [1, np.nan, np.nan, np.nan, 0, np.nan, np.nan])


def test_a_label_column_wins_over_ratings():
    df = _table([("a", "x", 1, 1), ("a", "y", 2, 0)], rating=False)
    df["rating"] = [1.0, 5.0]  # would give the opposite labels
    np.testing.assert_array_equal(ctr_labels(df, 4, 2).to_numpy(), [1, 0])


@pytest.mark.parametrize("values, match", [([0, 2], "must hold 0 or 1"),
                                           ([1, -1], "must hold 0 or 1")])
def test_labels_outside_zero_one_are_an_error(values, match):
    df = _table([("a", "x", 1, values[0]), ("a", "y", 2, values[1])], rating=False)
    with pytest.raises(ValueError, match=match):
        ctr_labels(df, 4, 2)


def test_missing_ratings_thresholds_and_columns_are_errors():
    df = _table([("a", "x", 1, 5), ("a", "y", 2, 1)])
    df.loc[1, "rating"] = np.nan
    with pytest.raises(ValueError, match="'rating' is missing"):
        ctr_labels(df, 4, 2)
    with pytest.raises(ValueError, match="must be below"):
        ctr_labels(_table([("a", "x", 1, 5)]), positive_min=3, negative_max=3)
    with pytest.raises(ValueError, match="neither"):
        ctr_labels(_table([("a", "x", 1, 5)]).drop(columns="rating"), 4, 2)


def test_split_is_global_in_time_and_drops_middle_ratings():
    df, items = _random_table()
    split = ctr_split(df, items, valid_from=0.6, test_from=0.8, max_len=5)
    assert split.train.times.max() < split.valid.times.min()
    assert split.valid.times.max() < split.test.times.min()
    assert len(split.train) + len(split.valid) + len(split.test) == int((df.rating != 3).sum())
    for part in (split.train, split.valid, split.test):
        assert set(np.unique(part.labels)) == {0.0, 1.0}
    assert split.cuts[0] <= split.valid.times.min() and split.cuts[1] == split.test.times.min()
    assert split.user_known[split.train.users].all()
    assert split.item_known[split.train.items].all() and not split.item_known[0]


def test_history_holds_exactly_the_last_items_strictly_before_each_row():
    df, items = _random_table(seed=1)
    max_len = 4
    split = ctr_split(df, items, valid_from=0.5, test_from=0.75, max_len=max_len)
    index = {f"i{i}": i + 1 for i in range(len(items))}
    order = np.lexsort((np.arange(len(df)), df.timestamp.to_numpy()))  # time, then file order
    events = df.iloc[order]
    checked = 0
    for part in (split.train, split.valid, split.test):
        for user, time, history in zip(part.users, part.times, part.history, strict=True):
            raw_user = split.users.ids[user]
            earlier = events[(events.user_id == raw_user) & (events.timestamp < time)]
            want = [index[i] for i in earlier.item_id][-max_len:]  # every rated item counts
            want = [0] * (max_len - len(want)) + want
            np.testing.assert_array_equal(history, want)
            checked += 1
    assert checked > 100


def test_changing_the_future_never_changes_the_history_or_stats_of_the_past():
    df, items = _random_table(seed=2)
    split = ctr_split(df, items, max_len=6)
    cut = split.cuts[1]  # everything from the test cut on is "future"
    future = df.timestamp >= cut
    changed = df.copy()
    changed.loc[future, "item_id"] = "i0"
    rating = df.loc[future, "rating"]  # flip labels, keep which rows are labelled (the cuts)
    changed.loc[future, "rating"] = np.where(rating >= 4, 1.0, np.where(rating <= 2, 5.0, 3.0))
    other = ctr_split(changed, items, max_len=6)
    for name in ("train", "valid"):
        a, b = split.part(name), other.part(name)
        np.testing.assert_array_equal(a.history, b.history)
        np.testing.assert_array_equal(a.stats, b.stats)


def test_stats_count_and_smooth_the_earlier_labelled_rows():
    rows = [("a", "x", 1, 5), ("a", "y", 2, 3), ("a", "z", 3, 1), ("a", "w", 3, 5),
            ("a", "v", 4, 4), ("b", "x", 1, 1), ("b", "y", 5, 5), ("b", "z", 6, 4),
            ("b", "w", 6, 1)]
    split = ctr_split(_table(rows), pd.Series(list("xyzwv")), valid_from=0.3, test_from=0.6,
                      max_len=3)
    prior = split.train.labels.mean()
    by_row = {}
    for part in (split.train, split.valid, split.test):
        for u, t, s in zip(part.users, part.times, part.stats, strict=True):
            by_row.setdefault((split.users.ids[u], int(t)), s)
    # user a at t=4 saw rows at t=1 (1), t=3 (0), t=3 (1); the rating 3 at t=2 is not labelled
    count, rate = by_row[("a", 4)]
    assert count == pytest.approx(np.log1p(3))
    assert rate == pytest.approx((2 + PRIOR_ROWS * prior) / (3 + PRIOR_ROWS))
    # rows at the same second do not see each other
    assert by_row[("a", 3)][0] == pytest.approx(np.log1p(1))
    assert by_row[("a", 1)][1] == pytest.approx(prior)


def test_impression_history_holds_clicks_only():
    rows = [("a", "x", 1, 1), ("a", "y", 1, 0), ("a", "z", 2, 0), ("a", "w", 3, 1),
            ("a", "v", 4, 0), ("a", "x", 5, 1), ("a", "y", 6, 0), ("a", "z", 7, 1),
            ("a", "w", 8, 0)]
    split = ctr_split(_table(rows, rating=False), pd.Series(list("xyzwv")), valid_from=5 / 8,
                      test_from=7 / 8, max_len=3)
    assert list(split.test.times) == [7, 8]
    # clicks before t=8: x@1, w@3, x@5, z@7 -> the last three: w, x, z (x=1 ... v=5)
    np.testing.assert_array_equal(split.test.history[-1], [4, 1, 3])
    np.testing.assert_array_equal(split.valid.history[0], [0, 1, 4])  # t=5: x@1, w@3


def test_impression_rows_carry_their_impression_and_rating_rows_none():
    rows = [("a", "x", 1, 1), ("a", "y", 1, 0), ("b", "z", 2, 0), ("b", "w", 2, 1),
            ("a", "v", 3, 0), ("a", "x", 3, 1), ("b", "y", 4, 0), ("b", "z", 4, 1)]
    table = _table(rows, rating=False)
    table["impression_id"] = ["i1", "i1", "i2", "i2", "i3", "i3", "i4", "i4"]
    split = ctr_split(table, pd.Series(list("xyzwv")), valid_from=0.5, test_from=0.75)
    codes = np.concatenate([split.part(p).impressions for p in ("train", "valid", "test")])
    times = np.concatenate([split.part(p).times for p in ("train", "valid", "test")])
    # one code per impression, rows of an impression share it (and its time)
    assert len(set(codes.tolist())) == 4
    assert all(len(set(times[codes == c].tolist())) == 1 and (codes == c).sum() == 2
               for c in set(codes.tolist()))
    ratings = ctr_split(_table([(u, i, t, 5 * v) for u, i, t, v in rows]),
                        pd.Series(list("xyzwv")), valid_from=0.5, test_from=0.75)
    assert ratings.train.impressions is None


def test_a_single_class_validation_split_is_an_error():
    rows = [("a", f"i{t}", t, 5 if t % 2 else 1) for t in range(8)]
    rows += [("a", "i8", 8, 5), ("a", "i9", 9, 1), ("a", "i9", 10, 5)]  # valid: all positive
    items = pd.Series([f"i{i}" for i in range(10)])
    with pytest.raises(ValueError, match="valid split has a single class"):
        ctr_split(_table(rows), items, valid_from=0.7, test_from=0.8)
    with pytest.raises(ValueError, match="valid_from"):
        ctr_split(_table(rows), items, valid_from=0.9, test_from=0.8)
