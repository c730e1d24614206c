"""Reranker: a DCN-v2 CTR model that scores (user, item) pairs, built from small named parts.

    SparseArch       user ID + user attributes, item ID + item attributes -> (B, S, dim)
                     (torchrec EmbeddingBagCollection bags, the two-tower `Bags` module)
    DenseArch        [item text, mean text of the history, history stats] -> (B, dense_out)
    InteractionArch  DCN-v2 cross layers over x0 = [sparse flattened, dense out] -> (B, d0)
    OverArch         MLP -> (B,) logits

`Reranker.forward(lists)` returns the logits of B lists of K candidates; it knows nothing of
labels or losses (BCE lives in the CTR task), so the same call scores any (user, candidate)
pairs: a labelled row is a list of one, a retrieval stage's top-K per user a list of K. The model
holds parameters only: a batch arrives as `ListFeatures` (ID and attribute bags as
KeyedJaggedTensors, frozen text vectors), built from the catalogue by `recsys.inputs.reranker`,
which also binds the two into the index-based interface evaluation and export use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from recsys.config import RerankerConfig
from recsys.models.bags import Bags

N_STATS = 2  # history stats per row: log1p(earlier labelled rows), smoothed positive rate
N_RETRIEVAL = 2  # retrieval features per pair: score minus the list's top score, log1p(rank)
N_POPULARITY = 1  # per pair: log1p(the item's recent train interactions), listwise only


def n_dense_extras(config: RerankerConfig) -> int:
    """Width of the `stats` input: history stats, then retrieval features, then recent
    popularity, as configured."""
    return (N_STATS * config.history_stats + N_RETRIEVAL * config.retrieval_features
            + N_POPULARITY * (config.recent_popularity_days > 0))


@dataclass(frozen=True)
class RerankerSizes:
    """The table sizes a reranker is built with (what it needs of the catalogue)."""

    user_tables: dict[str, int]  # user bag name ("user_id", attributes) -> rows
    item_tables: dict[str, int]  # item bag name ("item_id", attributes) -> rows
    text_width: int  # n_text * text_dim: an item's text vectors, flattened


@dataclass(frozen=True)
class ListFeatures:
    """B lists of K candidates each (the history of each list before its interaction) as the
    reranker reads them."""

    users: KeyedJaggedTensor | None  # user bags of the B * K (list, candidate) pairs
    items: KeyedJaggedTensor | None  # item bags of the B * K candidates
    item_text: torch.Tensor  # (B, K, text_width) the candidates' text vectors
    history_text: torch.Tensor  # (U, text_width) the text of the histories' distinct items
    where: torch.Tensor  # (B, L) index of each history entry among those U items
    present: torch.Tensor  # (B, L) bool, False = padding
    stats: torch.Tensor  # (B, K, E) the dense extras (`n_dense_extras`)

    def to(self, device: torch.device) -> ListFeatures:
        return replace(self, **{name: None if value is None else value.to(device)
                                for name, value in vars(self).items()})


def mlp(inputs: int, widths: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout per width; returns the stack and its output size."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(dropout)]
        inputs = width
    return nn.Sequential(*layers), inputs


class SparseArch(nn.Module):
    """User and item bags of n pairs -> (n, S, dim): one pooled embedding per ID / attribute bag.

    IDs without a trained row (users or items absent from training) arrive as empty bags (zeros);
    so do the IDs `user_id_dropout` / `item_id_dropout` hide in training (recsys.inputs.reranker).
    """

    def __init__(self, config: RerankerConfig, sizes: RerankerSizes):
        super().__init__()
        self.config = config
        self.users = Bags(config.dim, sizes.user_tables)
        self.items = Bags(config.dim, sizes.item_tables)
        self.count = self.users.count + self.items.count

    def forward(self, users: KeyedJaggedTensor | None,
                items: KeyedJaggedTensor | None) -> torch.Tensor:
        """Needs at least one bag (`count` > 0)."""
        parts = []
        for bags, rows in ((self.users, users), (self.items, items)):
            if bags.count:
                parts += bags(rows).values()  # (n, dim) each
        return torch.stack(parts, dim=1)  # (n, S, dim)


class DenseArch(nn.Module):
    """Item text (n, text_width), pooled history (n, first), stats (n, E) -> (n, dense_out).

    Dense input: the item's frozen text vectors, the mean text vectors of the history items
    (padding 0 excluded; zeros for an empty history) and the E extras (`n_dense_extras`: the
    history stats with `history_stats`, the retrieval features with `retrieval_features`, the
    recent popularity with `recent_popularity_days`).
    The first layer is applied per distinct item before the history mean: a linear map commutes
    with the mean, so this equals projecting the pooled vector, at a fraction of the memory.
    """

    def __init__(self, config: RerankerConfig, sizes: RerankerSizes):
        super().__init__()
        self.config = config
        if not config.dense_hidden:
            raise ValueError("model.reranker.dense_hidden needs at least one width")
        text_size = sizes.text_width
        first = config.dense_hidden[0]
        self.item_text = nn.Linear(text_size, first)
        self.history_text = nn.Linear(text_size, first, bias=False)
        extras = n_dense_extras(config)
        self.stats = nn.Linear(extras, first, bias=False) if extras else None
        self.mlp, self.out = mlp(first, config.dense_hidden[1:], config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def history_hidden(self, lists: ListFeatures) -> torch.Tensor:
        """-> (B, first): the projected mean text of each list's present history items."""
        projected = self.history_text(lists.history_text)[lists.where]  # (B, L, first)
        present = lists.present.float()[..., None]  # (B, L, 1)
        return (projected * present).sum(1) / present.sum(1).clamp(min=1.0)

    def forward(self, item_text: torch.Tensor, pooled: torch.Tensor,
                stats: torch.Tensor) -> torch.Tensor:
        """item_text (n, text_width), pooled (n, first) = `history_hidden` of each pair's list,
        stats (n, E) -> (n, dense_out)."""
        hidden = self.item_text(item_text) + pooled  # (n, first)
        if self.stats is not None:
            hidden = hidden + self.stats(stats)
        return self.mlp(self.dropout(torch.relu(hidden)))  # (n, dense_out)


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
    """`forward(lists)` -> (B, K) logits of P(label = 1)."""

    def __init__(self, config: RerankerConfig, sizes: RerankerSizes):
        super().__init__()
        if config.recent_popularity_days and config.task != "listwise":
            raise ValueError("model.reranker.recent_popularity_days is a listwise input: set it "
                             "to 0 for task 'ctr'")
        self.config = config
        self.sparse = SparseArch(config, sizes)
        self.dense = DenseArch(config, sizes)
        width = self.sparse.count * config.dim + self.dense.out
        self.interaction = CrossNet(width, config.cross_layers, config.cross_rank)
        self.over = OverArch(width, config.over_hidden, config.dropout)

    def forward(self, lists: ListFeatures) -> torch.Tensor:
        """B lists of K candidates -> (B, K) logits, the history pooled once per list."""
        n_lists, k = lists.item_text.shape[:2]
        pooled = self.dense.history_hidden(lists)  # (B, first)
        dense = self.dense(lists.item_text.flatten(0, 1), pooled.repeat_interleave(k, dim=0),
                           lists.stats.flatten(0, 1))  # (B * K, dense_out)
        parts = [dense]
        if self.sparse.count:  # (B * K, S * dim) in front
            parts.insert(0, self.sparse(lists.users, lists.items).flatten(1))
        return self.over(self.interaction(torch.cat(parts, dim=1))).reshape(n_lists, k)
