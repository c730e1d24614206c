"""Reranker features from a dataset and its CTR split, for the model and for tabular baselines.

`build_reranker_inputs` makes the tables the model reads (frozen text vectors from the same
encoder + cache as the two-tower, attribute codes for torchrec bags). `flat_features` lays the
*same* features out as one float matrix per split part, for LightGBM and logistic regression:
IDs and single-valued attributes as categorical codes (NaN = unknown / none), multi-valued
attributes as multi-hot columns, then the item text, the mean history text and the stats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from recsys.config import RerankerConfig
from recsys.data.ctr import CtrPart, CtrSplit
from recsys.inputs.two_tower import (
    categorical_codes,
    require_columns,
    text_vectors,
    user_attribute_codes,
)
from recsys.models.reranker import RerankerInputs


def build_reranker_inputs(config: RerankerConfig, items: pd.DataFrame, users: pd.DataFrame | None,
                          split: CtrSplit) -> RerankerInputs:
    """The model's tables for every catalogue item and every user row of `split`."""
    require_columns(items, config.text + config.categorical, "items.parquet", "model.reranker")
    item_codes = [categorical_codes(items[c], config.max_values) for c in config.categorical]
    user_codes = user_attribute_codes(users, split.users.ids, config.user_categorical,
                                      config.max_values, "model.reranker")
    text = text_vectors(config, items)  # the two-tower's text path: encoder, cache, sentences
    if not np.isfinite(text).all():
        raise ValueError("the text encoder returned NaN or infinite vectors for some items")
    return RerankerInputs(
        text=torch.as_tensor(text),
        categorical=tuple(torch.as_tensor(codes) for codes, _ in item_codes),
        vocab_sizes=tuple(size for _, size in item_codes),
        user_categorical=tuple(torch.as_tensor(codes) for codes, _ in user_codes),
        user_vocab_sizes=tuple(size for _, size in user_codes),
        item_known=torch.as_tensor(split.item_known),
        user_known=torch.as_tensor(split.user_known),
    )


@dataclass(frozen=True)
class FlatFeatures:
    """One part's feature matrix for tabular models."""

    matrix: np.ndarray  # (n, F) float32; NaN marks an unknown ID / absent attribute
    names: list[str]  # (F,) column names
    categorical: list[int]  # columns holding integer category codes (for LightGBM)


def flat_features(config: RerankerConfig, inputs: RerankerInputs, part: CtrPart) -> FlatFeatures:
    """The reranker's features of `part` as columns (same IDs, attributes, text and stats)."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    categorical: list[int] = []

    def add_codes(name: str, codes: np.ndarray, size: int, known: np.ndarray | None = None):
        """codes (n, k) of `size` values, -1 = none: one categorical column if k == 1 (the
        table's width, the same for every part), else `size` multi-hot columns."""
        if codes.shape[1] == 1 or known is not None:
            value = codes[:, 0].astype(np.float32)
            value[value < 0] = np.nan
            if known is not None:
                value[~known] = np.nan
            categorical.append(len(names))
            columns.append(value[:, None])
            names.append(name)
            return
        hot = np.zeros((len(codes), size), np.float32)
        rows, slots = np.nonzero(codes >= 0)
        hot[rows, codes[rows, slots]] = 1.0
        columns.append(hot)
        names.extend(f"{name}={v}" for v in range(size))

    users, items = part.users, part.items
    if config.user_ids:
        add_codes("user_id", users[:, None], inputs.n_users, inputs.user_known.numpy()[users])
    for name, codes, size in zip(config.user_categorical, inputs.user_categorical,
                                 inputs.user_vocab_sizes, strict=True):
        add_codes(name, codes.numpy()[users], size)
    if config.item_ids:
        add_codes("item_id", items[:, None], inputs.n_items + 1, inputs.item_known.numpy()[items])
    for name, codes, size in zip(config.categorical, inputs.categorical, inputs.vocab_sizes,
                                 strict=True):
        add_codes(name, codes.numpy()[items], size)
    text = inputs.text.numpy().reshape(inputs.n_items + 1, -1)  # (n_items + 1, n_text * dim)
    item_text = text[items]  # (n, n_text * text_dim)
    pooled = _history_means(part.history, len(text)) @ text  # (n, n_text * dim): model pooling
    columns += [item_text, pooled.astype(np.float32)]
    names += [f"text_{i}" for i in range(item_text.shape[1])]
    names += [f"history_text_{i}" for i in range(pooled.shape[1])]
    if config.history_stats:
        columns.append(part.stats)
        names += ["history_log_count", "history_positive_rate"]
    matrix = np.concatenate(columns, axis=1).astype(np.float32)
    dense = np.setdiff1d(np.arange(matrix.shape[1]), categorical)
    if not np.isfinite(matrix[:, dense]).all():
        raise ValueError("NaN or infinite values in the dense CTR features")
    return FlatFeatures(matrix, names, categorical)


def _history_means(history: np.ndarray, n_rows: int) -> sparse.csr_matrix:
    """history (n, L) item indices (0 = none) -> (n, n_rows) sparse mean weights per row."""
    rows, cols = np.nonzero(history > 0)
    counts = np.maximum((history > 0).sum(1), 1)
    return sparse.csr_matrix((1.0 / counts[rows], (rows, history[rows, cols])),
                             shape=(len(history), n_rows))


def part_tensors(part: CtrPart) -> tuple[torch.Tensor, ...]:
    """(users (n,), items (n,), history (n, L), stats (n, 2), labels (n,)) as tensors."""
    return (torch.as_tensor(part.users), torch.as_tensor(part.items),
            torch.as_tensor(part.history), torch.as_tensor(part.stats),
            torch.as_tensor(part.labels))
