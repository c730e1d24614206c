"""Two-tower retrieval: an item tower over text + ID/attribute features, a user tower over history.

Item features are computed outside the model (`TowerInputs`: frozen text-encoder vectors per
attribute, or their token ids when `finetune_text` lets the item tower train its own copy of the
encoder; padded categorical codes), so the model never sees a dataset. ID and categorical
features go through one torchrec `EmbeddingBagCollection` per tower. Each item feature becomes a
`dim` vector; feature masking (SSL) zeroes whole features before the tower's MLP. Both towers
return unit vectors, so a score is a cosine; the losses live in `recsys.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from recsys.config import TwoTowerConfig
from recsys.models.text_encoder import TextEncoder


@dataclass(frozen=True)
class TowerInputs:
    """Model-ready features: items (row 0 = the padding item) and users (row = user row)."""

    text: torch.Tensor  # (n_items + 1, n_text, text_dim) frozen encoder vectors, 0 when absent
    categorical: tuple[torch.Tensor, ...]  # per attribute (n_items + 1, max_values), -1 = none
    vocab_sizes: tuple[int, ...]  # per categorical attribute: values (codes 0..size-1)
    id_known: torch.Tensor  # (n_items + 1,) bool: the item has training interactions
    n_users: int  # user rows (the users of the split)
    user_categorical: tuple[torch.Tensor, ...] = ()  # per user attribute (n_users, k), -1 = none
    user_vocab_sizes: tuple[int, ...] = ()
    tokens: torch.Tensor | None = None  # (n_items + 1, n_text, T) token ids, to fine-tune
    token_lengths: torch.Tensor | None = None  # (n_items + 1, n_text), 0 = no text


def _bags(features: dict[str, torch.Tensor]) -> KeyedJaggedTensor:
    """{name: codes (batch, k) with -1 = none} -> a KeyedJaggedTensor of the non-negative codes."""
    lengths = [(codes >= 0).sum(1) for codes in features.values()]
    values = [codes[codes >= 0] for codes in features.values()]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(features), values=torch.cat(values), lengths=torch.cat(lengths).int())


def _table(name: str, rows: int, dim: int) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(name=f"t_{name}", embedding_dim=dim, num_embeddings=max(rows, 1),
                              feature_names=[name], pooling=PoolingType.MEAN)


class Bags(nn.Module):
    """An optional ID feature plus categorical attributes, pooled by one torchrec
    `EmbeddingBagCollection`: rows (n,) -> {name: (n, dim)}, an empty bag pooling to zeros."""

    def __init__(self, dim: int, id_name: str | None, id_rows: int, names: tuple[str, ...],
                 codes: tuple[torch.Tensor, ...], vocab_sizes: tuple[int, ...]):
        super().__init__()
        self.id_name, self.names = id_name, names
        for name, table in zip(names, codes, strict=True):  # (rows, max_values), -1 = none
            self.register_buffer(f"codes_{name}", table, persistent=False)
        tables = [_table(n, v, dim) for n, v in zip(names, vocab_sizes, strict=True)]
        if id_name is not None:
            tables.insert(0, _table(id_name, id_rows, dim))
        self.collection = EmbeddingBagCollection(tables=tables)
        self.count = len(tables)

    def forward(self, rows: torch.Tensor, ids: torch.Tensor | None = None) -> dict:
        """rows (n,) index the attribute codes; ids (n,) the ID table (-1 = no ID)."""
        codes = {n: getattr(self, f"codes_{n}")[rows] for n in self.names}
        if self.id_name is not None:
            codes = {self.id_name: ids[:, None], **codes}
        return self.collection(_bags(codes)).to_dict()


def _mlp(inputs: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out))


class ItemTower(nn.Module):
    """Item indices (n,) [+ feature mask (n, F)] -> unit vectors (n, dim)."""

    def __init__(self, config: TwoTowerConfig, n_items: int, inputs: TowerInputs):
        super().__init__()
        self.config = config
        self.feature_names = (("item_id",) if config.item_ids else ()) + config.text \
            + config.categorical
        if not self.feature_names:
            raise ValueError("two_tower needs at least one item feature (item_ids, text or "
                             "categorical)")
        self.register_buffer("text", inputs.text, persistent=False)
        self.register_buffer("id_known", inputs.id_known, persistent=False)
        self.bags = Bags(config.dim, "item_id" if config.item_ids else None, n_items + 1,
                         config.categorical, inputs.categorical, inputs.vocab_sizes)
        self.text_encoder = None
        text_dim = inputs.text.shape[-1]
        if config.finetune_text and config.text:
            if inputs.tokens is None or inputs.token_lengths is None:
                raise ValueError("finetune_text needs the items' token ids in TowerInputs")
            self.text_encoder = TextEncoder(config.encoder)
            self.register_buffer("tokens", inputs.tokens, persistent=False)
            self.register_buffer("token_lengths", inputs.token_lengths, persistent=False)
            text_dim = self.text_encoder.dim
        self.text_proj = nn.ModuleList(nn.Linear(text_dim, config.dim) for _ in config.text)
        self.mlp = _mlp(len(self.feature_names) * config.dim, config.hidden, config.dim,
                        config.dropout)

    def features(self, items: torch.Tensor) -> torch.Tensor:
        """items (n,) -> one vector per feature (n, F, dim), in `feature_names` order."""
        keep = self.id_known[items]  # cold items have no trained ID row: their bag stays empty
        if self.training and self.config.id_dropout > 0:  # learn to do without the ID
            keep = keep & (torch.rand(items.shape, device=items.device) >= self.config.id_dropout)
        by_name = self.bags(items, torch.where(keep, items, -1)) if self.bags.count else {}
        texts = self.text[items] if self.text_encoder is None else self.encode_text(items)
        for name, proj, text in zip(self.config.text, self.text_proj, texts.unbind(1),
                                    strict=True):
            by_name[name] = proj(text)  # (n, dim); absent text is a zero vector -> the bias only
        return torch.stack([by_name[name] for name in self.feature_names], dim=1)

    def encode_text(self, items: torch.Tensor) -> torch.Tensor:
        """items (n,) -> (n, n_text, text_dim) unit vectors from the encoder being fine-tuned;
        an item without the text keeps a zero vector, as in the frozen path."""
        slots = []
        for slot in range(len(self.config.text)):
            lengths = self.token_lengths[items, slot]  # (n,)
            rows = torch.nonzero(lengths > 0).squeeze(1)
            out = torch.zeros(len(items), self.text_encoder.dim, device=items.device)
            if len(rows):
                width = int(lengths[rows].max())  # trim the padding shared by the whole batch
                ids = self.tokens[items[rows], slot, :width]  # (r, width)
                mask = (torch.arange(width, device=ids.device) < lengths[rows, None]).long()
                out = out.index_copy(0, rows, F.normalize(self.text_encoder(ids, mask), dim=-1))
            slots.append(out)
        return torch.stack(slots, dim=1)

    def forward(self, items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """items (n,), mask (n, F) bool (True = feature hidden) -> (n, dim) unit vectors."""
        feats = self.features(items)  # (n, F, dim)
        if mask is not None:
            feats = feats.masked_fill(mask[..., None], 0.0)
        return F.normalize(self.mlp(feats.flatten(1)), dim=-1)


class UserTower(nn.Module):
    """History item vectors (batch, L, dim) + user rows (batch,) -> unit vectors (batch, dim).

    The user's ID and categorical attributes (torchrec bags) join the pooled history.
    """

    def __init__(self, config: TwoTowerConfig, inputs: TowerInputs):
        super().__init__()
        self.config = config
        self.bags = Bags(config.dim, "user_id" if config.user_ids else None, inputs.n_users,
                         config.user_categorical, inputs.user_categorical,
                         inputs.user_vocab_sizes)
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
                users: torch.Tensor | None) -> torch.Tensor:
        """history (batch, L, dim) item vectors, present (batch, L) bool -> (batch, dim)."""
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
            parts += list(self.bags(users, users).values())  # (batch, dim) each, in table order
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class TwoTower(nn.Module):
    """The retrieval model: `score(history, users)` = user vectors @ item vectors.T."""

    def __init__(self, config: TwoTowerConfig, n_items: int, inputs: TowerInputs):
        super().__init__()
        self.config = config
        self.max_len = config.max_len
        self.n_items = n_items
        self.item_tower = ItemTower(config, n_items, inputs)
        self.user_tower = UserTower(config, inputs)

    def item_vectors(self, items: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """(n, dim) for `items` (n,), by default the whole catalogue with row 0 (padding) = 0."""
        if items is None:
            items = torch.arange(self.n_items + 1, device=self.item_tower.text.device)
            vectors = self.item_tower(items)
            return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])
        return self.item_tower(items, mask)

    def parameter_groups(self, lr: float) -> list[dict]:
        """AdamW groups: a fine-tuned text encoder learns at `config.text_lr`, the rest at `lr`."""
        encoder = self.item_tower.text_encoder
        if encoder is None:
            return [{"params": list(self.parameters()), "lr": lr}]
        own = {id(p) for p in encoder.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in own], "lr": lr},
                {"params": list(encoder.parameters()), "lr": self.config.text_lr}]

    def user_vectors(self, history: torch.Tensor,
                     users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) item indices left-padded with 0, users (batch,) -> (batch, dim)."""
        history = history[:, -self.max_len:]
        present = history > 0
        unique, where = torch.unique(history, return_inverse=True)
        vectors = self.item_tower(unique)[where]  # (batch, L, dim): each distinct item once
        return self.user_tower(vectors * present[..., None], present, users)

    def score(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> scores (batch, n_items + 1); column 0 (padding) is meaningless."""
        return self.user_vectors(history, users) @ self.item_vectors().T
