"""Reranker features from a dataset and its CTR split, for the model and for tabular baselines.

`build_reranker_inputs` makes the catalogue tables the model reads (frozen text vectors from the
same encoder + cache as the two-tower, attribute codes for torchrec bags); `RerankerScorer` binds
a `Reranker` (parameters only) to them: (user, candidate, history) indices in, logits out, with
only the rows a batch reads reaching the model. `flat_features` lays the
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
from torch import nn

from recsys.config import RerankerConfig
from recsys.data.ctr import CtrPart, CtrSplit
from recsys.inputs.tables import (
    attribute_tables,
    require_columns,
    row_bags,
    user_attribute_tables,
)
from recsys.inputs.text_vectors import text_vectors
from recsys.models.reranker import ListFeatures, Reranker, RerankerSizes


@dataclass(frozen=True)
class RerankerInputs:
    """The catalogue tables: item row 0 is padding, user row r is the split's user row r."""

    text: torch.Tensor  # (n_items + 1, n_text, text_dim) frozen unit vectors, 0 where absent
    categorical: dict[str, torch.Tensor]  # item attribute -> codes (n_items + 1, k), -1 = none
    vocab_sizes: dict[str, int]  # item attribute -> distinct values
    user_categorical: dict[str, torch.Tensor]  # user attribute -> codes (n_users, k), -1 = none
    user_vocab_sizes: dict[str, int]
    item_known: torch.Tensor  # (n_items + 1,) bool: the item has a trained ID row
    user_known: torch.Tensor  # (n_users,) bool: the user has a trained ID row
    item_ids: bool = True  # items read their ID bag
    user_ids: bool = True  # users read their ID bag

    @property
    def n_items(self) -> int:
        return self.text.shape[0] - 1

    @property
    def n_users(self) -> int:
        return self.user_known.shape[0]

    @property
    def sizes(self) -> RerankerSizes:
        users = {"user_id": self.n_users} if self.user_ids else {}
        items = {"item_id": self.n_items + 1} if self.item_ids else {}
        return RerankerSizes(user_tables=users | self.user_vocab_sizes,
                             item_tables=items | self.vocab_sizes,
                             text_width=self.text.shape[1] * self.text.shape[2])

    def lists(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor,
              stats: torch.Tensor, user_id_dropout: float = 0.0,
              item_id_dropout: float = 0.0) -> ListFeatures:
        """users (B,) user rows, items (B, K) candidates, history (B, L) item indices before
        the interaction (left-padded with 0), stats (B, K, E), all on the CPU -> the features.
        Users and items without a trained ID row, and the dropout shares of the others, read
        an empty ID bag (`row_bags`)."""
        n_lists, k = items.shape
        flat = items.reshape(-1)  # (B * K,)
        user_bags = row_bags(users.repeat_interleave(k), "user_id" if self.user_ids else None,
                             self.user_categorical, self.user_known, user_id_dropout)
        item_bags = row_bags(flat, "item_id" if self.item_ids else None, self.categorical,
                             self.item_known, item_id_dropout)
        text = self.text.flatten(1)  # (n_items + 1, text_width)
        unique, where = torch.unique(history, return_inverse=True)
        return ListFeatures(users=user_bags, items=item_bags,
                            item_text=text[flat].reshape(n_lists, k, -1),
                            history_text=text[unique], where=where, present=history > 0,
                            stats=stats)


class RerankerScorer(nn.Module):
    """A `Reranker` over its catalogue: `forward(users, items, history, stats)` -> (B,) logits of
    labelled pairs, `score_lists` -> (B, K) logits of candidate lists.

    Its state is the model's alone (`model.*`); the catalogue stays on the CPU and each batch's
    features move to the model's device.
    """

    def __init__(self, model: Reranker, inputs: RerankerInputs):
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.config = model.config
        self.max_len = model.config.max_len

    def forward(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor,
                stats: torch.Tensor) -> torch.Tensor:
        """users (B,) user rows, items (B,) item indices, history (B, L) item indices before the
        interaction (left-padded with 0), stats (B, E) float -> logits (B,): lists of one."""
        return self.score_lists(users, items[:, None], history, stats[:, None]).squeeze(1)

    def score_lists(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor,
                    stats: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B, K) candidates, history (B, L), stats (B, K, E) -> (B, K) logits:
        the same logits as `forward` on the B * K flattened pairs."""
        device = next(self.model.parameters()).device
        cfg = self.config
        dropout = (cfg.user_id_dropout, cfg.item_id_dropout) if self.training else (0.0, 0.0)
        lists = self.inputs.lists(users.cpu(), items.cpu(), history[:, -self.max_len:].cpu(),
                                  stats.cpu(), *dropout)
        return self.model(lists.to(device))


def build_reranker_inputs(config: RerankerConfig, items: pd.DataFrame, users: pd.DataFrame | None,
                          split: CtrSplit) -> RerankerInputs:
    """The model's tables for every catalogue item and every user row of `split`."""
    require_columns(items, config.text + config.categorical, "items.parquet", "model.reranker")
    categorical, vocab_sizes = attribute_tables(items, config.categorical, config.max_values)
    user_categorical, user_vocab_sizes = user_attribute_tables(
        users, split.users.ids, config.user_categorical, config.max_values, "model.reranker")
    text = text_vectors(config, items)  # the two-tower's text path: encoder, cache, sentences
    if not np.isfinite(text).all():
        raise ValueError("the text encoder returned NaN or infinite vectors for some items")
    return RerankerInputs(
        text=torch.as_tensor(text),
        categorical=categorical,
        vocab_sizes=vocab_sizes,
        user_categorical=user_categorical,
        user_vocab_sizes=user_vocab_sizes,
        item_known=torch.as_tensor(split.item_known),
        user_known=torch.as_tensor(split.user_known),
        item_ids=config.item_ids,
        user_ids=config.user_ids,
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
    for name in config.user_categorical:
        add_codes(name, inputs.user_categorical[name].numpy()[users],
                  inputs.user_vocab_sizes[name])
    if config.item_ids:
        add_codes("item_id", items[:, None], inputs.n_items + 1, inputs.item_known.numpy()[items])
    for name in config.categorical:
        add_codes(name, inputs.categorical[name].numpy()[items], inputs.vocab_sizes[name])
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
