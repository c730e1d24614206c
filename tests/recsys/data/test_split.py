import numpy as np
import pandas as pd

from recsys.data.split import leave_one_out


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_last_is_test_second_last_is_valid_and_ties_keep_file_order():
    interactions = _frame([
        ("u1", "a", 5), ("u1", "b", 1), ("u1", "c", 5), ("u1", "d", 3),  # c after a: same time
        ("u2", "a", 1), ("u2", "b", 2),  # fewer than 3: train only
    ])
    split = leave_one_out(interactions, pd.Series(["a", "b", "c", "d", "e"]))
    a, b, c, d = split.items.index(["a", "b", "c", "d"])
    assert split.train[0].tolist() == [b, d]
    assert split.valid_target[0] == a and split.test_target[0] == c
    assert split.train[1].tolist() == [a, b]
    assert split.eval_users("test").tolist() == [0]
    assert [h.tolist() for h in split.history("test", np.array([0]))] == [[b, d, a]]
    assert [h.tolist() for h in split.history("valid", np.array([0]))] == [[b, d]]


def test_catalogue_includes_items_without_interactions_and_counts_train_only():
    interactions = _frame([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "a", 4)])
    split = leave_one_out(interactions, pd.Series(["a", "b", "c", "z"]))
    assert split.n_items == 4
    counts = split.train_item_counts
    assert counts.tolist() == [0, 1, 1, 0, 0]  # train = (a, b); c valid, a test


def test_cold_fraction_keeps_the_newest_items_out_of_training_only():
    interactions = _frame([
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "e", 9), ("u1", "c", 10), ("u1", "d", 11),
        ("u2", "b", 3), ("u2", "e", 8), ("u2", "a", 12), ("u2", "d", 13),
    ])  # first seen: a 1, b 2, e 8, c 10, d 11 -> the newest 40% are c and d
    split = leave_one_out(interactions, pd.Series(["a", "b", "c", "d", "e"]), cold_fraction=0.4)
    a, b, c, d, e = split.items.index(["a", "b", "c", "d", "e"])
    assert split.train[0].tolist() == [a, b, e]  # nothing cold was in u1's prefix
    assert split.train[1].tolist() == [b, e]
    assert split.valid_target[0] == c and split.test_target[0] == d  # cold targets stay
    assert split.train_item_counts[[c, d]].tolist() == [0, 0]
    plain = leave_one_out(interactions, pd.Series(["a", "b", "c", "d", "e"]))
    assert [t.tolist() for t in plain.train] == [t.tolist() for t in split.train]


def test_cold_fraction_removes_items_from_prefixes():
    interactions = _frame([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4),
                           ("v", "c", 5), ("v", "a", 6), ("v", "b", 7)])
    split = leave_one_out(interactions, pd.Series(["a", "b", "c", "d"]), cold_fraction=0.5)
    a, b = split.items.index(["a", "b"])
    assert split.train[0].tolist() == [a, b]
    assert split.train[1].tolist() == []  # c (cold) was v's only training item
    assert split.test_target[1] == b
