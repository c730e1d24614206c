import math

import numpy as np
import pandas as pd
import pytest
import torch

from features.masking import (
    attribute_codes,
    correlated_feature_masks,
    masked_views,
    mutual_information,
    random_feature_masks,
)


def test_attribute_codes_lists_missing_and_dense_per_column():
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "genres": [["x", "y"], ["y", "x", "x"], [], None, np.array(["y", "x"])],
            "brand": ["b1", np.nan, "", "b2", "b1"],
            "year": [1999, None, 2001, 1999, 2001],
        }
    )
    codes = attribute_codes(items, ["item_id", "genres", "brand", "year"])
    assert codes.dtype == np.int64 and codes.shape == (5, 4)
    assert codes[:, 0].tolist() == [1, 2, 3, 4, 5]  # unique per row
    assert codes[:, 1].tolist() == [1, 1, 0, 0, 1]  # a value set is one symbol; [] / None missing
    assert codes[:, 2].tolist() == [1, 0, 0, 2, 1]  # NaN and "" share the missing code
    assert codes[:, 3].tolist() == [1, 0, 2, 1, 2]


def test_attribute_codes_distinguishes_different_sets_and_orders_columns():
    items = pd.DataFrame(
        {"tags": [["a"], ["a", "b"], ["b", "a"], ["b"]], "k": ["u", "u", "v", "v"]}
    )
    assert attribute_codes(items, ["k", "tags"]).tolist() == [[1, 1], [1, 2], [2, 2], [2, 3]]


def test_attribute_codes_missing_column_is_an_error_naming_it():
    with pytest.raises(ValueError, match="brand"):
        attribute_codes(pd.DataFrame({"item_id": ["a"]}), ["item_id", "brand"])


def test_nmi_identical_independent_and_constant_columns():
    codes = np.array(
        [
            # x, copy of x, independent of x, constant
            [1, 1, 1, 5],
            [1, 1, 2, 5],
            [2, 2, 1, 5],
            [2, 2, 2, 5],
        ]
    )
    nmi = mutual_information(codes)
    assert nmi.shape == (4, 4) and nmi.dtype == np.float64
    assert nmi[0, 1] == pytest.approx(1.0)
    assert nmi[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert nmi[:, 3].tolist() == [0.0] * 4 and nmi[3, :].tolist() == [0.0] * 4
    assert np.diag(nmi)[:3] == pytest.approx([1.0, 1.0, 1.0])
    np.testing.assert_allclose(nmi, nmi.T)


def test_nmi_when_x_determines_y_but_not_back():
    # H(X) = log 4, H(Y) = log 2, I = H(Y) as Y = f(X): NMI = log 2 / sqrt(log 4 log 2) = 1/sqrt 2
    codes = np.array([[0, 0], [1, 0], [2, 1], [3, 1]])
    nmi = mutual_information(codes)
    assert nmi[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert nmi[1, 0] == pytest.approx(1 / math.sqrt(2))


def test_nmi_on_a_skewed_joint_matches_the_formula():
    # joint counts: (0,0)=2, (0,1)=1, (1,1)=1 over 4 rows
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    h_x = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # X marginal (3/4, 1/4)
    h_y = math.log(2)  # Y marginal (1/2, 1/2)
    info = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5))
    info += 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert mutual_information(codes)[0, 1] == pytest.approx(info / math.sqrt(h_x * h_y))


def test_random_masks_hide_exactly_half_and_vary_across_rows():
    mask = random_feature_masks(4000, 6, torch.Generator().manual_seed(0))
    assert mask.shape == (4000, 6) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [3] * 4000
    assert len({tuple(row) for row in mask.tolist()}) == 20  # every 3-of-6 subset shows up
    assert mask.float().mean(dim=0).sub(0.5).abs().max() < 0.05  # each feature about half the time
    assert random_feature_masks(5, 5).sum(dim=1).tolist() == [2] * 5  # odd F: F // 2
    assert not random_feature_masks(7, 1).any()


def test_random_masks_reproducible_and_resumable_from_rng_state():
    first = random_feature_masks(32, 5, torch.Generator().manual_seed(7))
    assert torch.equal(first, random_feature_masks(32, 5, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, random_feature_masks(32, 5, torch.Generator().manual_seed(8)))
    gen = torch.Generator().manual_seed(3)
    random_feature_masks(16, 5, gen)
    state = gen.get_state()
    expected = random_feature_masks(16, 5, gen)
    gen.set_state(state)
    assert torch.equal(random_feature_masks(16, 5, gen), expected)


def test_correlated_masks_keep_correlated_pairs_together():
    nmi = np.array(
        [
            [1.0, 0.9, 0.1, 0.0],
            [0.9, 1.0, 0.0, 0.2],
            [0.1, 0.0, 1.0, 0.8],
            [0.0, 0.2, 0.8, 1.0],
        ]
    )
    mask = correlated_feature_masks(nmi, 500, torch.Generator().manual_seed(0))
    rows = {tuple(row) for row in mask.int().tolist()}
    assert rows == {(1, 1, 0, 0), (0, 0, 1, 1)}  # always a correlated pair, and both pairs occur


def test_correlated_masks_force_the_seed_and_break_ties_by_index():
    # all NMI 0 (e.g. constant columns): seed s is masked with the lowest other index
    mask = correlated_feature_masks(torch.zeros(4, 4), 500, torch.Generator().manual_seed(0))
    rows = {tuple(row) for row in mask.int().tolist()}
    assert rows == {(1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1)}


def test_correlated_masks_reproducible_and_half_sized():
    nmi = mutual_information(np.random.default_rng(0).integers(0, 3, size=(200, 7)))
    a = correlated_feature_masks(nmi, 64, torch.Generator().manual_seed(1))
    b = correlated_feature_masks(nmi, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.sum(dim=1).tolist() == [3] * 64


@pytest.mark.parametrize("kind", ["random", "correlated"])
def test_masked_views_are_complements(kind):
    nmi = np.eye(5)
    view1, view2 = masked_views(kind, 32, 5, nmi=nmi, generator=torch.Generator().manual_seed(0))
    assert torch.equal(view2, ~view1)
    assert view1.sum(dim=1).tolist() == [2] * 32 and view2.sum(dim=1).tolist() == [3] * 32


def test_masked_views_rejects_bad_kind_and_missing_or_wrong_nmi():
    with pytest.raises(ValueError, match="random.*correlated"):
        masked_views("dropout", 4, 4)
    with pytest.raises(ValueError, match="needs nmi"):
        masked_views("correlated", 4, 4)
    with pytest.raises(ValueError, match="shape"):
        masked_views("correlated", 4, 4, nmi=np.eye(3))
