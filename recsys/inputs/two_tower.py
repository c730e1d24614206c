"""The two-tower model's catalogue, and the model bound to it for retrieval.

`TowerInputs` holds what the model reads of a dataset: text attributes through the frozen text
encoder (one vector per attribute, cached by text) or as token ids to fine-tune it, categorical
attributes as padded integer codes for torchrec bags. Item row 0 is the padding item, row i the
item of index i (items.parquet order, as in `Split.items`); user row r is the split's user row r.
`TwoTowerRetriever` gives a `TwoTower` (parameters only) the interface evaluation and export use:
item indices in, vectors and scores out; only the rows a batch reads reach the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from recsys.config import TwoTowerConfig
from recsys.inputs.tables import (
    attribute_tables,
    require_columns,
    row_bags,
    user_attribute_tables,
)
from recsys.inputs.text_vectors import text_tokens, text_vectors
from recsys.models.two_tower import ItemFeatures, TowerSizes, TwoTower


@dataclass(frozen=True)
class TowerInputs:
    """The catalogue tables of a two-tower model; plain tensors on the CPU, never trained."""

    text: torch.Tensor  # (n_items + 1, n_text, text_dim) frozen encoder vectors, 0 when absent
    categorical: dict[str, torch.Tensor]  # item attribute -> codes (n_items + 1, k), -1 = none
    vocab_sizes: dict[str, int]  # item attribute -> distinct values (codes 0..size-1)
    id_known: torch.Tensor  # (n_items + 1,) bool: the item has training interactions
    n_users: int  # user rows (the users of the split)
    item_ids: bool = True  # items read their ID bag
    user_ids: bool = True  # users read their ID bag
    user_categorical: dict[str, torch.Tensor] = field(default_factory=dict)  # attribute ->
    # ^ codes (n_users, k), -1 = none
    user_vocab_sizes: dict[str, int] = field(default_factory=dict)
    tokens: torch.Tensor | None = None  # (n_items + 1, n_text, T) token ids, to fine-tune
    token_lengths: torch.Tensor | None = None  # (n_items + 1, n_text), 0 = no text

    @property
    def sizes(self) -> TowerSizes:
        items = {"item_id": len(self.id_known)} if self.item_ids else {}
        users = {"user_id": self.n_users} if self.user_ids else {}
        return TowerSizes(item_tables=items | self.vocab_sizes,
                          user_tables=users | self.user_vocab_sizes,
                          text_dim=self.text.shape[-1])

    def items(self, rows: torch.Tensor, id_dropout: float = 0.0) -> ItemFeatures:
        """The features of items `rows` (n,) on the CPU. Cold items (no training interactions)
        read an empty ID bag, and so does an `id_dropout` share of the others (`row_bags`)."""
        bags = row_bags(rows, "item_id" if self.item_ids else None, self.categorical,
                        self.id_known, id_dropout)
        fine_tuned = self.tokens is not None
        return ItemFeatures(bags=bags, text=self.text[rows],
                            tokens=self.tokens[rows] if fine_tuned else None,
                            token_lengths=self.token_lengths[rows] if fine_tuned else None)

    def users(self, rows: torch.Tensor) -> KeyedJaggedTensor | None:
        """The ID and attribute bags of user rows (n,); None when the users have none."""
        return row_bags(rows, "user_id" if self.user_ids else None, self.user_categorical)


def build_tower_inputs(config: TwoTowerConfig, items: pd.DataFrame, users: pd.DataFrame | None,
                       user_ids: Sequence[str], train_counts: np.ndarray) -> TowerInputs:
    """`TowerInputs` for every row of `items` and every id of `user_ids` (the split's order).

    `users` is the optional user table; train_counts (n_items + 1,) marks items with known IDs.
    """
    require_columns(items, config.text + config.categorical, "items.parquet", "model.two_tower")
    categorical, vocab_sizes = attribute_tables(items, config.categorical, config.max_values)
    user_categorical, user_vocab_sizes = user_attribute_tables(
        users, user_ids, config.user_categorical, config.max_values, "model.two_tower")
    tokens = lengths = None
    if config.finetune_text and config.text:  # the model encodes the text itself, as it learns
        tokens, lengths = map(torch.as_tensor, text_tokens(config, items))
        text = torch.zeros(len(items) + 1, len(config.text), 0)
    else:
        text = torch.as_tensor(text_vectors(config, items))
    return TowerInputs(
        text=text,
        categorical=categorical,
        vocab_sizes=vocab_sizes,
        id_known=torch.as_tensor(train_counts > 0),
        n_users=len(user_ids),
        item_ids=config.item_ids,
        user_ids=config.user_ids,
        user_categorical=user_categorical,
        user_vocab_sizes=user_vocab_sizes,
        tokens=tokens,
        token_lengths=lengths,
    )


class TwoTowerRetriever(nn.Module):
    """A `TwoTower` over its catalogue: `score(history, users)` = user vectors @ item vectors.T.

    Its state is the model's alone (`model.*`); the catalogue stays on the CPU and each batch's
    features move to the model's device.
    """

    def __init__(self, model: TwoTower, inputs: TowerInputs):
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.max_len = model.config.max_len
        self.n_items = len(inputs.id_known) - 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The item features, in the order of a feature mask's columns."""
        return self.model.item_tower.feature_names

    def _items(self, rows: torch.Tensor) -> ItemFeatures:
        dropout = self.model.config.id_dropout if self.training else 0.0
        return self.inputs.items(rows.cpu(), dropout).to(self._device())

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def item_vectors(self, items: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """(n, dim) for `items` (n,), by default the whole catalogue with row 0 (padding) = 0;
        mask (n, F) bool hides features (True = hidden)."""
        if items is None:
            vectors = self.model.item_vectors(self._items(torch.arange(self.n_items + 1)))
            return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])
        return self.model.item_vectors(self._items(items), mask)

    def user_vectors(self, history: torch.Tensor,
                     users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) item indices left-padded with 0, users (batch,) -> (batch, dim)."""
        history = history[:, -self.max_len:]
        unique, where = torch.unique(history, return_inverse=True)  # each distinct item once
        bags = None if users is None else self.inputs.users(users.cpu())
        return self.model.user_vectors(self._items(unique), where, history > 0,
                                       None if bags is None else bags.to(self._device()))

    def score(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> scores (batch, n_items + 1); column 0 (padding) is meaningless."""
        return self.scorer()(history, users)

    def scorer(self) -> Callable[..., torch.Tensor]:
        """`score` with the catalogue's vectors computed once, for many batches of users under
        fixed weights (evaluation scores users chunk by chunk; a 4M-item catalogue took the
        item tower minutes for every chunk)."""
        items = self.item_vectors().T  # (dim, n_items + 1)
        return lambda history, users=None: self.user_vectors(history, users) @ items
