import math

import numpy as np
import pytest

from recsys.eval.ctr import ctr_metrics
from recsys.metrics import (
    auc,
    calibration_table,
    coverage,
    grouped_auc,
    impression_metrics,
    log_loss,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

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


# CTR metrics


def test_auc_by_hand_with_a_tie():
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.8, 0.1, 0.3])
    # positive-negative pairs: (0.9 > 0.8, 0.9 > 0.1), (0.8 = 0.8 -> 1/2, 0.8 > 0.1),
    # (0.3 < 0.8, 0.3 > 0.1): 4.5 of 6
    assert auc(labels, scores) == pytest.approx(4.5 / 6)
    assert auc(labels, -scores) == pytest.approx(1.5 / 6)
    assert auc(np.array([0, 1]), np.array([2.0, 2.0])) == pytest.approx(0.5)


def test_grouped_auc_weights_groups_by_rows_and_skips_single_class_groups():
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.5, 0.6])
    groups = np.array(["a", "a", "b", "b", "b", "c", "c"])
    # a: 1.0 (2 rows); b: positive 0.2 vs 0.8, 0.3 -> 0.0 (3 rows); c: one class, skipped
    assert grouped_auc(labels, scores, groups) == pytest.approx((2 * 1.0 + 3 * 0.0) / 5)
    assert np.isnan(grouped_auc(np.array([1, 1]), np.array([0.1, 0.2]), np.array([0, 0])))


def test_impression_metrics_by_hand_skip_impressions_without_both_classes():
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.2, 0.3, 0.4, 0.6])
    impressions = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])  # c: no click, skipped
    got = impression_metrics(labels, scores, impressions)
    # a ranks its clicks 2nd and 3rd of 4 (AUC 2/4); b ranks its one click 2nd of 2 (AUC 0)
    ndcg_a = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert got["auc"] == pytest.approx((0.5 + 0.0) / 2)
    assert got["mrr"] == pytest.approx(((1 / 2 + 1 / 3) / 2 + 1 / 2) / 2)
    assert got["ndcg@5"] == pytest.approx((ndcg_a + 1 / np.log2(3)) / 2)
    assert got["ndcg@10"] == got["ndcg@5"] and got["count"] == 2
    assert np.isnan(impression_metrics(np.array([0, 0]), np.array([0.1, 0.2]),
                                       np.array([1, 1]))["auc"])


def test_log_loss_by_hand_and_clipping():
    labels = np.array([1, 0])
    probs = np.array([0.8, 0.4])
    assert log_loss(labels, probs) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))


def test_calibration_table_by_deciles():
    probs = np.arange(20) / 20  # 0.0 .. 0.95, two rows per decile
    labels = np.array([0, 0] * 5 + [1, 1] * 5)
    table = calibration_table(labels, probs, bins=10)
    np.testing.assert_array_equal(table["count"], [2] * 10)
    np.testing.assert_allclose(table["predicted"], (np.arange(10) * 2 + 0.5) / 20)
    np.testing.assert_array_equal(table["observed"], [0] * 5 + [1] * 5)
    want = np.mean(np.abs(table["predicted"] - table["observed"]))
    assert table["ece"] == pytest.approx(want)


def test_ctr_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="0 or 1"):
        auc(np.array([1, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([1, 0]), np.array([np.nan, 0.2]))
    with pytest.raises(ValueError, match="probabilities"):
        log_loss(np.array([1, 0]), np.array([1.5, 0.2]))
    with pytest.raises(ValueError, match="shape|1-d"):
        grouped_auc(np.array([1, 0]), np.array([0.1, 0.2]), np.array([0]))


def test_ctr_metrics_add_per_impression_metrics_only_for_impression_data():
    labels, probs = np.array([1, 0, 0, 1]), np.array([0.9, 0.2, 0.7, 0.4])
    users, impressions = np.array([0, 0, 1, 1]), np.array([5, 5, 6, 6])
    plain = ctr_metrics(labels, probs, users)
    assert not any(key.startswith("impression_") for key in plain)
    both = ctr_metrics(labels, probs, users, impressions)
    assert both["impression_auc"] == pytest.approx(0.5)  # impression 5 right, 6 wrong
    assert both["impression_mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert both["impression_count"] == 2 and both["auc"] == plain["auc"]
