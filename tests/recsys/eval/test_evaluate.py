import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recsys.config import EvalConfig
from recsys.data.split import leave_one_out
from recsys.eval.retrieval import evaluate, head_items, rank_targets


class FixedScores(nn.Module):
    """Scores item i as `values[i]` for every user."""

    max_len = 5

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def score(self, history, users=None):
        return self.values.expand(history.shape[0], -1)


def _split():
    # u1: train (a, b), valid c, test d.  u2: train (d, b), valid a, test e (never trained: cold).
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4),
            ("u2", "d", 0), ("u2", "b", 1), ("u2", "a", 2), ("u2", "e", 3)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return leave_one_out(frame, pd.Series(["a", "b", "c", "d", "e"]))


def test_ranks_with_and_without_seen_masking():
    split = _split()
    # item indices: a=1 b=2 c=3 d=4 e=5; column 0 is padding and never ranked
    model = FixedScores([100.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    ranked = rank_targets(model, split, "test", EvalConfig(chunk_users=1))
    # u1 target d: all-items order a b c d e -> 3; seen (a, b, c) removed -> 0
    # u2 target e: -> 4 ; seen (d, b, a) removed -> 1
    assert ranked["ranks_all"].tolist() == [3, 4]
    assert ranked["ranks"].tolist() == [0, 1]
    unmasked = rank_targets(model, split, "test", EvalConfig(exclude_seen=False))
    assert unmasked["ranks"].tolist() == [3, 4]


def test_ties_are_broken_by_item_index_and_chunking_changes_nothing():
    split = _split()
    model = FixedScores([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    one = rank_targets(model, split, "test", EvalConfig(chunk_users=1, exclude_seen=False))
    all_ = rank_targets(model, split, "test", EvalConfig(chunk_users=99, exclude_seen=False))
    assert one["ranks"].tolist() == [3, 4] == all_["ranks"].tolist()


def test_metrics_include_cold_items_and_state_the_user_count():
    split = _split()
    metrics = evaluate(FixedScores([0.0, 5.0, 4.0, 3.0, 2.0, 1.0]), split, "test", EvalConfig())
    assert metrics["users"] == 2 and metrics["cold_users"] == 1
    assert metrics["recall@10"] == pytest.approx(1.0)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert metrics["cold_recall@10"] == pytest.approx(1.0)
    assert metrics["coverage@10"] == pytest.approx(1.0)  # top-10 of 5 items covers all


def test_head_items_are_the_most_trained_fifth_and_tail_recall_uses_the_rest():
    counts = np.array([0, 9, 1, 5, 5, 0, 2, 0, 0, 0, 3])  # ten items: head = 2 most trained
    assert np.flatnonzero(head_items(counts)).tolist() == [1, 3]  # tie 3/4: lower index
    split = _split()
    metrics = evaluate(FixedScores([0.0, 5.0, 4.0, 3.0, 2.0, 1.0]), split, "test", EvalConfig())
    # train counts a=1, b=2, d=1 -> head (1 of 5 items) = b; both targets (d, e) are tail
    assert metrics["tail_users"] == 2 and metrics["tail_recall@10"] == pytest.approx(1.0)


def test_a_target_with_a_non_finite_score_ranks_last_not_first():
    from recsys.ranking import UNRANKED, rank_of

    scores = torch.tensor([[float("-inf"), 0.3, float("nan"), 0.1],
                           [float("-inf"), 0.3, float("inf"), 0.1],
                           [float("-inf"), 0.3, float("nan"), 0.1]])
    ranks = rank_of(scores, torch.tensor([2, 2, 3]))
    assert ranks.tolist() == [UNRANKED, UNRANKED, 1]  # never a hit; a NaN item is never ahead


def test_a_diverged_model_scores_nothing():
    split = _split()
    nan = float("nan")
    metrics = evaluate(FixedScores([nan] * 6), split, "test", EvalConfig(ks=(10,)))
    assert metrics["recall@10"] == metrics["ndcg@10"] == metrics["recall@10_all"] == 0.0
    # some items NaN, the rest finite: the NaN ones rank behind every finite item
    ranked = rank_targets(FixedScores([0.0, nan, 0.2, 0.3, 0.4, 0.5]), split, "test",
                          EvalConfig(exclude_seen=False))
    assert ranked["ranks"].tolist() == [1, 0]  # d (0.4) behind e; e (0.5) first
    assert 1 not in ranked["top10"][:, :4]  # the NaN item a is never offered ahead of scored ones
