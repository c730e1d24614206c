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
