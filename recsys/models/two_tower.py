"""Two-tower retrieval: an item tower over text + ID/attribute features, a user tower over history.

The model holds parameters only. What an item batch reads arrives as `ItemFeatures` (frozen
text-encoder vectors per attribute, or their token ids when `finetune_text` lets the item tower
train its own copy of the encoder; a KeyedJaggedTensor of its ID and attribute codes), built by
`recsys.inputs.two_tower` from the catalogue, which also binds the two into the index-based
retrieval interface (`TwoTowerRetriever`). ID and categorical features go through one torchrec
`EmbeddingBagCollection` per tower. Each item feature becomes a `dim` vector; feature masking
(SSL) zeroes whole features before the tower's MLP. Both towers return unit vectors, so a score
is a cosine; the losses live in `recsys.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor

from recsys.config import TwoTowerConfig
from recsys.models.bags import Bags
from recsys.models.text_encoder import TextEncoder


@dataclass(frozen=True)
class TowerSizes:
    """The table sizes a two-tower model is built with (what it needs of the catalogue)."""

    item_tables: dict[str, int]  # item bag name ("item_id", attributes) -> rows
    user_tables: dict[str, int]  # user bag name ("user_id", attributes) -> rows
    text_dim: int  # width of a frozen text vector (0 when the encoder is fine-tuned)


@dataclass(frozen=True)
class ItemFeatures:
    """A batch of n items as the item tower reads them."""

    bags: KeyedJaggedTensor | None  # the item_id and attribute bags; None: the model has none
    text: torch.Tensor  # (n, n_text, text_dim) frozen unit vectors, 0 where absent
    tokens: torch.Tensor | None = None  # (n, n_text, T) token ids, to fine-tune the encoder
    token_lengths: torch.Tensor | None = None  # (n, n_text), 0 = no text

    def to(self, device: torch.device) -> ItemFeatures:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return replace(self, bags=move(self.bags), text=move(self.text),
                       tokens=move(self.tokens), token_lengths=move(self.token_lengths))


def _mlp(inputs: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out))


class ItemTower(nn.Module):
    """`ItemFeatures` of n items [+ feature mask (n, F)] -> unit vectors (n, dim)."""

    def __init__(self, config: TwoTowerConfig, sizes: TowerSizes):
        super().__init__()
        self.config = config
        self.feature_names = (("item_id",) if config.item_ids else ()) + config.text \
            + config.categorical
        if not self.feature_names:
            raise ValueError("two_tower needs at least one item feature (item_ids, text or "
                             "categorical)")
        self.bags = Bags(config.dim, sizes.item_tables)
        self.text_encoder = None
        text_dim = sizes.text_dim
        if config.finetune_text and config.text:
            self.text_encoder = TextEncoder(config.encoder)
            text_dim = self.text_encoder.dim
        self.text_proj = nn.ModuleList(nn.Linear(text_dim, config.dim) for _ in config.text)
        self.mlp = _mlp(len(self.feature_names) * config.dim, config.hidden, config.dim,
                        config.dropout)

    def features(self, items: ItemFeatures) -> torch.Tensor:
        """n items -> one vector per feature (n, F, dim), in `feature_names` order."""
        by_name = self.bags(items.bags) if self.bags.count else {}
        texts = items.text if self.text_encoder is None else self.encode_text(items)
        for name, proj, text in zip(self.config.text, self.text_proj, texts.unbind(1),
                                    strict=True):
            by_name[name] = proj(text)  # (n, dim); absent text is a zero vector -> the bias only
        return torch.stack([by_name[name] for name in self.feature_names], dim=1)

    def encode_text(self, items: ItemFeatures) -> torch.Tensor:
        """n items -> (n, n_text, text_dim) unit vectors from the encoder being fine-tuned;
        an item without the text keeps a zero vector, as in the frozen path."""
        if items.tokens is None or items.token_lengths is None:
            raise ValueError("finetune_text needs the items' token ids in ItemFeatures")
        slots = []
        for slot in range(len(self.config.text)):
            lengths = items.token_lengths[:, slot]  # (n,)
            rows = torch.nonzero(lengths > 0).squeeze(1)
            out = torch.zeros(len(lengths), self.text_encoder.dim, device=lengths.device)
            if len(rows):
                width = int(lengths[rows].max())  # trim the padding shared by the whole batch
                ids = items.tokens[rows, slot, :width]  # (r, width)
                mask = (torch.arange(width, device=ids.device) < lengths[rows, None]).long()
                out = out.index_copy(0, rows, F.normalize(self.text_encoder(ids, mask), dim=-1))
            slots.append(out)
        return torch.stack(slots, dim=1)

    def forward(self, items: ItemFeatures, mask: torch.Tensor | None = None) -> torch.Tensor:
        """n items, mask (n, F) bool (True = feature hidden) -> (n, dim) unit vectors."""
        feats = self.features(items)  # (n, F, dim)
        if mask is not None:
            feats = feats.masked_fill(mask[..., None], 0.0)
        return F.normalize(self.mlp(feats.flatten(1)), dim=-1)


class UserTower(nn.Module):
    """History item vectors (batch, L, dim) + user bags -> unit vectors (batch, dim).

    The user's ID and categorical attributes (torchrec bags) join the pooled history.
    """

    def __init__(self, config: TwoTowerConfig, sizes: TowerSizes):
        super().__init__()
        self.config = config
        self.bags = Bags(config.dim, sizes.user_tables)
        self.encoder = None
        if config.history == "transformer":
            self.positions = nn.Embedding(config.max_len, config.dim)
            nn.init.normal_(self.positions.weight, std=0.02)  # small next to unit item vectors
            block = nn.TransformerEncoderLayer(config.dim, nhead=1, dim_feedforward=2 * config.dim,
                                               dropout=config.dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(block, config.history_layers,
                                                 enable_nested_tensor=False)
        self.mlp = _mlp((1 + self.bags.count) * config.dim, config.hidden, config.dim,
                        config.dropout)

    def forward(self, history: torch.Tensor, present: torch.Tensor,
                users: KeyedJaggedTensor | None) -> torch.Tensor:
        """history (batch, L, dim) item vectors, present (batch, L) bool, the users' ID and
        attribute bags (one row per user) -> (batch, dim)."""
        if self.encoder is not None:
            length = history.shape[1]
            history = history + self.positions.weight[self.config.max_len - length:]
            blocked = ~present | ~present.any(1, keepdim=True)  # all-empty rows attend to all
            pooled = self.encoder(history, src_key_padding_mask=blocked)[:, -1]  # newest item
        else:
            weights = present.float()[..., None]  # (batch, L, 1)
            pooled = (history * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (batch, dim)
        parts = [pooled]
        if self.bags.count:
            if users is None:
                raise ValueError("this two-tower model reads user IDs or attributes: pass `users`")
            parts += list(self.bags(users).values())  # (batch, dim) each, in table order
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class TwoTower(nn.Module):
    """Both towers: item vectors of `ItemFeatures`, user vectors of a history of them."""

    def __init__(self, config: TwoTowerConfig, sizes: TowerSizes):
        super().__init__()
        self.config = config
        self.item_tower = ItemTower(config, sizes)
        self.user_tower = UserTower(config, sizes)

    def item_vectors(self, items: ItemFeatures, mask: torch.Tensor | None = None) -> torch.Tensor:
        """n items [, mask (n, F) bool: features hidden] -> (n, dim) unit vectors."""
        return self.item_tower(items, mask)

    def user_vectors(self, history_items: ItemFeatures, where: torch.Tensor,
                     present: torch.Tensor, users: KeyedJaggedTensor | None = None
                     ) -> torch.Tensor:
        """The histories' distinct items (U of them), where (batch, L) the index of each history
        entry among them, present (batch, L) bool (False = padding), the users' bags ->
        (batch, dim) unit vectors."""
        vectors = self.item_tower(history_items)[where]  # (batch, L, dim)
        return self.user_tower(vectors * present[..., None], present, users)
