"""Feature-masking augmentations for an item tower (Yao et al. 2020, SSL for item recommendation).

An item is F feature groups (item_id, title, brand, ...). Two views of the same item hide
complementary halves of its features; a contrastive loss pulls the two views together. Random
masking picks the hidden half uniformly; Correlated Feature Masking (CFM) hides a seed feature
together with the features that share the most mutual information with it, so the view cannot
recover a hidden feature from a visible correlated one. NMI comes from `attribute_codes` over items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

MISSING = 0  # the one code shared by every missing value, in every column
KINDS = ("random", "correlated")
_SEP = "\x1f"  # joins list elements; a control character no real value contains


def _symbol(value: object) -> str | None:
    """One value -> a hashable symbol, or None when missing (None, NaN, "", empty list)."""
    if isinstance(value, list | tuple | set | np.ndarray):
        elements = sorted({str(v) for v in value if not _is_missing(v)})
        # a value set is one symbol: ["b", "a", "a"] and ["a", "b"] are the same value
        return _SEP.join(elements) if elements else None
    return None if _is_missing(value) else str(value)


def _is_missing(value: object) -> bool:
    if isinstance(value, str):
        return value == ""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def attribute_codes(items: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Discrete code per item and column: (n_items, F) int64, 0 = missing, 1.. dense per column.

    Codes follow first appearance, so the same frame always gives the same codes.
    """
    absent = [c for c in columns if c not in items.columns]
    if absent:
        raise ValueError(f"attribute_codes: columns {absent} not in items (has {list(items)})")
    codes = np.zeros((len(items), len(columns)), dtype=np.int64)  # (n_items, F)
    for f, column in enumerate(columns):
        symbols = pd.Series([_symbol(v) for v in items[column]], dtype=object)
        codes[:, f] = pd.factorize(symbols, use_na_sentinel=True)[0] + 1  # NA -1 -> MISSING
    return codes


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def mutual_information(codes: np.ndarray) -> np.ndarray:
    """Normalized mutual information I(i;j) / sqrt(H(i) H(j)) between columns of codes (n, F).

    Returns (F, F) float64 in [0, 1], symmetric; 1 on the diagonal for a non-constant column and
    0 in every row and column of a constant one (no information to share).
    """
    codes = np.asarray(codes)
    n, n_features = codes.shape
    nmi = np.zeros((n_features, n_features), dtype=np.float64)
    if n == 0:
        return nmi
    # re-index each column densely so pair keys stay small and codes may be any integers
    dense = [np.unique(codes[:, f], return_inverse=True)[1].ravel() for f in range(n_features)]
    marginals = [np.bincount(d) / n for d in dense]
    entropy = np.array([_entropy(np.bincount(d), n) for d in dense])
    for i in range(n_features):
        for j in range(i, n_features):
            if entropy[i] == 0 or entropy[j] == 0:
                continue
            width = len(marginals[j])
            keys, counts = np.unique(dense[i] * width + dense[j], return_counts=True)
            p_xy = counts / n  # (pairs seen,)
            p_x, p_y = marginals[i][keys // width], marginals[j][keys % width]
            info = float((p_xy * np.log(p_xy / (p_x * p_y))).sum())
            nmi[i, j] = nmi[j, i] = info / np.sqrt(entropy[i] * entropy[j])
    return np.clip(nmi, 0.0, 1.0)  # float error can step just outside [0, 1]


def _device(generator: torch.Generator | None) -> torch.device:
    # sampling must happen on the generator's device; without one, the global CPU RNG
    return generator.device if generator is not None else torch.device("cpu")


def _mask_from_order(order: torch.Tensor, n_features: int) -> torch.Tensor:
    """order (batch, F) feature indices by priority -> (batch, F) bool, first F // 2 masked."""
    take = order[:, : n_features // 2]  # (batch, F // 2)
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, take, True)


def random_feature_masks(
    batch: int, n_features: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random masks (batch, F) bool, True = masked in view 1: exactly F // 2 features per row.

    Each row is a uniform random subset (argsort of uniform noise is a uniform permutation).
    View 2 masks the complement `~mask`; for F == 1 view 1 masks nothing.
    """
    noise = torch.rand(batch, n_features, generator=generator, device=_device(generator))
    return _mask_from_order(noise.argsort(dim=1), n_features)


def correlated_feature_masks(
    nmi: torch.Tensor | np.ndarray, batch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Correlated Feature Masking (batch, F) bool, True = masked in view 1, from nmi (F, F).

    Per row: a uniformly random seed feature plus the F // 2 - 1 other features with the highest
    NMI to it (ties -> lower feature index). View 2 masks the complement `~mask`.
    """
    device = _device(generator)
    nmi = torch.as_tensor(nmi, dtype=torch.float64, device=device)
    if nmi.ndim != 2 or nmi.shape[0] != nmi.shape[1]:
        raise ValueError(f"nmi must be square (F, F), got shape {tuple(nmi.shape)}")
    n_features = nmi.shape[0]
    if n_features // 2 == 0:
        return torch.zeros(batch, n_features, dtype=torch.bool, device=device)
    seed = torch.randint(n_features, (batch,), generator=generator, device=device)  # (batch,)
    scores = nmi[seed].clone()  # (batch, F)
    # the seed always goes first, even where its own NMI is 0 (a constant column)
    scores[torch.arange(batch, device=device), seed] = torch.inf
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # stable: ties by index
    return _mask_from_order(order, n_features)


def masked_views(
    kind: str,
    batch: int,
    n_features: int,
    nmi: torch.Tensor | np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for the two views, each (batch, F) bool with True = masked; view 2 = ~view 1."""
    if kind == "random":
        mask = random_feature_masks(batch, n_features, generator)
    elif kind == "correlated":
        if nmi is None:
            raise ValueError("masked_views: kind 'correlated' needs nmi (see mutual_information)")
        if tuple(nmi.shape) != (n_features, n_features):
            raise ValueError(f"nmi shape {tuple(nmi.shape)} != ({n_features}, {n_features})")
        mask = correlated_feature_masks(nmi, batch, generator)
    else:
        raise ValueError(f"masked_views: unknown kind {kind!r}, expected one of {KINDS}")
    return mask, ~mask
