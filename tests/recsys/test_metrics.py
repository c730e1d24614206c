import math

import numpy as np
import pytest

from recsys.metrics import coverage, mrr_at_k, ndcg_at_k, recall_at_k

RANKS = np.array([0, 2, 9, 10, 49])  # 0-based positions of five users' targets


def test_recall_counts_targets_inside_the_cutoff():
    assert recall_at_k(RANKS, 1) == pytest.approx(1 / 5)
    assert recall_at_k(RANKS, 10) == pytest.approx(3 / 5)
    assert recall_at_k(RANKS, 50) == pytest.approx(1.0)


def test_ndcg_by_hand():
    by_hand = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(11)) / 5
    assert ndcg_at_k(RANKS, 10) == pytest.approx(by_hand)
    assert ndcg_at_k(np.array([0, 0]), 10) == pytest.approx(1.0)


def test_mrr_by_hand():
    assert mrr_at_k(RANKS, 10) == pytest.approx((1 + 1 / 3 + 1 / 10) / 5)
    assert mrr_at_k(RANKS, 2) == pytest.approx(1 / 5)


def test_coverage_counts_distinct_items():
    assert coverage(np.array([[1, 2], [2, 3]]), 10) == pytest.approx(0.3)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        recall_at_k(RANKS, 0)
    with pytest.raises(ValueError):
        ndcg_at_k(np.array([-1]), 10)
    assert recall_at_k(np.array([], dtype=np.int64), 10) == 0.0
