"""SASRec: a causal transformer over item-ID sequences (Kang & McAuley 2018).

Trained here with full softmax over the catalogue at every position ("SASRec+" recipe); the
output embedding is tied to the input item embedding, so scores are dot products. With
`repeat_bias`, one learned scalar is added to the score of every item already in the history:
the model learns from the training data how likely users are to consume an item again (on
MovieLens, never), as repeat-aware recommenders do (RepeatNet, Ren et al. 2019).
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.config import SASRecConfig
from recsys.ranking import with_repeat_bias


class SASRec(nn.Module):
    """Sequence encoder: item indices (batch, L) -> hidden states (batch, L, dim)."""

    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__()
        self.config = config
        self.max_len = config.max_len
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)  # row 0 = padding
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(
            d_model=config.dim,
            nhead=config.heads,
            dim_feedforward=config.ffn_mult * config.dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.repeat = nn.Parameter(torch.zeros(())) if config.repeat_bias else None
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (batch, L) left-padded with 0, L <= max_len -> hidden (batch, L, dim)."""
        batch, length = items.shape
        positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
        x = self.item_emb(items) * self.config.dim**0.5 + self.pos_emb(positions)  # (batch, L, dim)
        x = self.dropout(x)
        x = self.encoder(x, mask=self._attention_mask(items))
        return self.norm(x)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., dim) -> scores over all item indices (..., n_items + 1); column 0 = pad."""
        return hidden @ self.item_vectors().T

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim) the vector of every item index; row 0 = padding."""
        return self.item_emb.weight

    def user_vectors(self, history: torch.Tensor,
                     users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> (batch, dim) from the last position; `users` is not used.

        Only the most recent `max_len` items are read.
        """
        return self(history[:, -self.max_len :])[:, -1]

    def score(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item scores: history (batch, L) -> (batch, n_items + 1).

        The repeat bias, if any, applies to every item of `history`, however long.
        """
        scores = self.item_scores(self.user_vectors(history))
        return scores if self.repeat is None else with_repeat_bias(scores, history, self.repeat)

    def position_scores(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scores after the chosen positions of a training batch (all positions at once).

        items (batch, L) left-padded, positions (batch, L) bool -> (n_chosen, n_items + 1);
        the repeat bias counts the items up to and including each position.
        """
        scores = self.item_scores(self(items)[positions])
        if self.repeat is not None:
            onehot = torch.zeros(*items.shape, scores.shape[-1], dtype=torch.int16,
                                 device=items.device).scatter_(2, items[..., None], 1)
            seen = onehot.cumsum(1, dtype=torch.int16)[positions] > 0  # (n_chosen, n_items + 1)
            scores = scores + self.repeat * seen
        return scores

    def _attention_mask(self, items: torch.Tensor) -> torch.Tensor:
        """(batch * heads, L, L) bool, True = blocked: future positions and padding keys.

        Each position may always attend to itself, so rows of pure padding stay finite.
        """
        length = items.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        blocked = future.unsqueeze(0) | (items == 0).unsqueeze(1)  # (batch, L, L)
        blocked &= ~torch.eye(length, dtype=torch.bool, device=items.device)
        return blocked.repeat_interleave(self.config.heads, dim=0)
