"""Reranker: a DCN-v2 CTR model that scores (user, item) pairs, built from small named parts.

    SparseArch       user ID + user attributes, item ID + item attributes -> (B, S, dim)
                     (torchrec EmbeddingBagCollection bags, the two-tower `Bags` module)
    DenseArch        [item text, mean text of the history, history stats] -> (B, dense_out)
    InteractionArch  DCN-v2 cross layers over x0 = [sparse flattened, dense out] -> (B, d0)
    OverArch         MLP -> (B,) logits

`Reranker.forward(users, items, history, stats)` returns logits; it knows nothing of labels or
losses (BCE lives in the CTR task), so the same call scores any (user, candidate) pairs: a
retrieval stage's top-K per user to rerank. Item features are precomputed outside the model
(`RerankerInputs`: frozen text-encoder vectors, padded attribute codes), so it never sees a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from recsys.config import RerankerConfig
from recsys.models.two_tower import Bags

N_STATS = 2  # history stats per row: log1p(earlier labelled rows), smoothed positive rate
N_RETRIEVAL = 2  # retrieval features per pair: score minus the list's top score, log1p(rank)
N_POPULARITY = 1  # per pair: log1p(the item's recent train interactions), listwise only


def n_dense_extras(config: RerankerConfig) -> int:
    """Width of the `stats` input: history stats, then retrieval features, then recent
    popularity, as configured."""
    return (N_STATS * config.history_stats + N_RETRIEVAL * config.retrieval_features
            + N_POPULARITY * (config.recent_popularity_days > 0))


@dataclass(frozen=True)
class RerankerInputs:
    """Model-ready tables: item row 0 is padding, user row r is the split's user row r."""

    text: torch.Tensor  # (n_items + 1, n_text, text_dim) frozen unit vectors, 0 where absent
    categorical: tuple[torch.Tensor, ...]  # per item attribute (n_items + 1, k), -1 = none
    vocab_sizes: tuple[int, ...]  # per item attribute: distinct values
    user_categorical: tuple[torch.Tensor, ...]  # per user attribute (n_users, k), -1 = none
    user_vocab_sizes: tuple[int, ...]
    item_known: torch.Tensor  # (n_items + 1,) bool: the item has a trained ID row
    user_known: torch.Tensor  # (n_users,) bool: the user has a trained ID row

    @property
    def n_items(self) -> int:
        return self.text.shape[0] - 1

    @property
    def n_users(self) -> int:
        return self.user_known.shape[0]


def mlp(inputs: int, widths: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout per width; returns the stack and its output size."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(dropout)]
        inputs = width
    return nn.Sequential(*layers), inputs


class SparseArch(nn.Module):
    """User and item rows (B,) -> (B, S, dim): one pooled embedding per ID / attribute bag.

    IDs without a trained row (users or items absent from training) read an empty bag (zeros);
    in training, `user_id_dropout` / `item_id_dropout` hide known IDs at that rate so the model
    learns to score such rows from their attributes, text and history.
    """

    def __init__(self, config: RerankerConfig, inputs: RerankerInputs):
        super().__init__()
        self.config = config
        self.register_buffer("user_known", inputs.user_known, persistent=False)
        self.register_buffer("item_known", inputs.item_known, persistent=False)
        self.users = Bags(config.dim, "user_id" if config.user_ids else None, inputs.n_users,
                          config.user_categorical, inputs.user_categorical,
                          inputs.user_vocab_sizes)
        self.items = Bags(config.dim, "item_id" if config.item_ids else None, inputs.n_items + 1,
                          config.categorical, inputs.categorical, inputs.vocab_sizes)
        self.count = self.users.count + self.items.count

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = []
        for bags, rows, known, dropout in (
                (self.users, users, self.user_known, self.config.user_id_dropout),
                (self.items, items, self.item_known, self.config.item_id_dropout)):
            if not bags.count:
                continue
            keep = known[rows]  # (B,)
            if self.training and dropout > 0:
                keep = keep & (torch.rand(rows.shape, device=rows.device) >= dropout)
            parts += bags(rows, torch.where(keep, rows, -1)).values()  # (B, dim) each
        if not parts:
            return torch.zeros(len(users), 0, self.config.dim, device=users.device)
        return torch.stack(parts, dim=1)  # (B, S, dim)


class DenseArch(nn.Module):
    """Items (B,), history (B, L), stats (B, E) -> (B, dense_out) through an MLP.

    Dense input: the item's frozen text vectors, the mean text vectors of the history items
    (padding 0 excluded; zeros for an empty history) and the E extras (`n_dense_extras`: the
    history stats with `history_stats`, the retrieval features with `retrieval_features`, the
    recent popularity with `recent_popularity_days`).
    The first layer is applied per distinct item before the history mean: a linear map commutes
    with the mean, so this equals projecting the pooled vector, at a fraction of the memory.
    """

    def __init__(self, config: RerankerConfig, inputs: RerankerInputs):
        super().__init__()
        self.config = config
        self.register_buffer("text", inputs.text, persistent=False)
        if not config.dense_hidden:
            raise ValueError("model.reranker.dense_hidden needs at least one width")
        text_size = inputs.text.shape[1] * inputs.text.shape[2]
        first = config.dense_hidden[0]
        self.item_text = nn.Linear(text_size, first)
        self.history_text = nn.Linear(text_size, first, bias=False)
        extras = n_dense_extras(config)
        self.stats = nn.Linear(extras, first, bias=False) if extras else None
        self.mlp, self.out = mlp(first, config.dense_hidden[1:], config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def pooled_text(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, n_text * text_dim) mean text of the present items (0 if none)."""
        present = (history > 0).float()[..., None]  # (B, L, 1)
        return (self.text[history].flatten(2) * present).sum(1) / present.sum(1).clamp(min=1.0)

    def history_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, first): the projected mean text of the present items."""
        unique, where = torch.unique(history, return_inverse=True)
        projected = self.history_text(self.text[unique].flatten(1))[where]  # (B, L, first)
        present = (history > 0).float()[..., None]  # (B, L, 1)
        return (projected * present).sum(1) / present.sum(1).clamp(min=1.0)

    def forward(self, items: torch.Tensor, history: torch.Tensor | None, stats: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """`pooled` (B, first), if given, is `history_hidden(history)` already computed."""
        pooled = self.history_hidden(history) if pooled is None else pooled
        hidden = self.item_text(self.text[items].flatten(1)) + pooled  # (B, first)
        if self.stats is not None:
            hidden = hidden + self.stats(stats)
        return self.mlp(self.dropout(torch.relu(hidden)))  # (B, dense_out)


class CrossNet(nn.Module):
    """DCN-v2 interaction arch: x_{l+1} = x0 * (W_l x_l + b_l) + x_l, (B, d) -> (B, d).

    With `rank` > 0, W_l = U_l V_l^T (d x rank each), the low-rank form of the DCN-v2 paper.
    """

    def __init__(self, dim: int, layers: int, rank: int = 0):
        super().__init__()
        if rank > 0:
            self.weights = nn.ModuleList(nn.Sequential(nn.Linear(dim, rank, bias=False),
                                                       nn.Linear(rank, dim)) for _ in range(layers))
        else:
            self.weights = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for weight in self.weights:
            x = x0 * weight(x) + x  # (B, d)
        return x


class OverArch(nn.Module):
    """(B, d) -> (B,) logits: an MLP and one output unit."""

    def __init__(self, inputs: int, widths: Sequence[int], dropout: float):
        super().__init__()
        self.mlp, width = mlp(inputs, widths, dropout)
        self.logit = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.mlp(x)).squeeze(-1)


class Reranker(nn.Module):
    """`forward(users, items, history, stats)` -> (B,) logits of P(label = 1)."""

    def __init__(self, config: RerankerConfig, inputs: RerankerInputs):
        super().__init__()
        if config.recent_popularity_days and config.task != "listwise":
            raise ValueError("model.reranker.recent_popularity_days is a listwise input: set it "
                             "to 0 for task 'ctr'")
        self.config = config
        self.max_len = config.max_len
        self.sparse = SparseArch(config, inputs)
        self.dense = DenseArch(config, inputs)
        width = self.sparse.count * config.dim + self.dense.out
        self.interaction = CrossNet(width, config.cross_layers, config.cross_rank)
        self.over = OverArch(width, config.over_hidden, config.dropout)

    def forward(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor,
                stats: torch.Tensor) -> torch.Tensor:
        """users (B,) user rows, items (B,) item indices, history (B, L) item indices before the
        interaction (left-padded with 0), stats (B, E) float -> logits (B,): lists of one."""
        return self.score_lists(users, items[:, None], history, stats[:, None]).squeeze(1)

    def score_lists(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor,
                    stats: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B, K) candidates, history (B, L), stats (B, K, E) -> (B, K) logits.

        The same logits as `forward` on the B * K flattened pairs, with the history pooled
        once per list instead of once per candidate.
        """
        n_lists, k = items.shape
        pooled = self.dense.history_hidden(history[:, -self.max_len:])  # (B, first)
        flat_items = items.reshape(-1)  # (B * K,)
        sparse = self.sparse(users.repeat_interleave(k), flat_items).flatten(1)  # (B*K, S*dim)
        dense = self.dense(flat_items, None, stats.reshape(n_lists * k, -1),
                           pooled.repeat_interleave(k, dim=0))  # (B * K, dense_out)
        logits = self.over(self.interaction(torch.cat([sparse, dense], dim=1)))
        return logits.reshape(n_lists, k)
