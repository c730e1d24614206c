"""Recformer (Li et al., KDD'23): one bidirectional transformer reads a user as [CLS] plus the
`key value` tokens of their items, newest first, and an item as the same thing with one item.

    model = Recformer(RecformerConfig(layers=2))                # bundled all-MiniLM-L6-v2
    users = model.encode(*batch)                                 # (B, dim)
    items = model.encode(*item_batch)                            # (N, dim)
    cosines = model.score(users, items)                          # (B, N) in [-1, 1]

Inputs (built by recsys.inputs.recformer), each (B, T) int64, right-padded:
    tokens          the backbone tokenizer's ids
    token_types     CLS / KEY / VALUE / PAD (constants below)
    item_positions  0 for [CLS], i for a token of the i-th item newest first (0 on padding)
    attention_mask  1 on real tokens, 0 on padding

Embeddings, as the paper sums them: word + token position + token type + item position, then
the backbone's LayerNorm and dropout. The model looks up the word embedding itself, adds its two
new tables (4 token types, `max_item_positions` item positions) and hands the sum to the
backbone as `inputs_embeds`; the backbone then adds its own token-position embedding (BERT:
0..T-1; Longformer: pad_token_id + 1 onwards, RoBERTa style) and its own token-type embedding of
type 0, and normalises. That type-0 row is a constant vector every token of the backbone's own
pre-training carried, so it is kept (token_type_ids of zeros, passed explicitly) rather than
removed: the pre-trained LayerNorm sees the inputs it was trained on, and the new 4-row table is
the only thing that tells CLS, key, value and padding apart. The new tables start as the
reference implementation's do, normal(0, initializer_range) (a Longformer has no 4-row table to
copy from), or as zeros (`new_tables: zeros`): the sum is then the backbone's own input, so
an untrained model starts as the backbone's sentence encoder (the whole MiniLM scores valid
NDCG@10 0.0821 zero-shot on Scientific that way, 0.0802 with random tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel

from recsys.config.recformer import RecformerConfig
from recsys.models.text_encoder import bundled_model_path, mean_pool

CLS, KEY, VALUE, PAD = 0, 1, 2, 3  # token types (rows of Recformer.token_types)
TOKEN_TYPES = 4


class RecformerInputs(NamedTuple):
    """One batch of sequences (or of single items), each tensor (B, T) int64."""

    tokens: torch.Tensor
    token_types: torch.Tensor
    item_positions: torch.Tensor
    attention_mask: torch.Tensor


@dataclass(frozen=True)
class _Backbone:
    position_offset: bool  # positions start at pad_token_id + 1 (RoBERTa style), not 0
    global_cls: bool  # [CLS] attends to, and is attended by, every token (Longformer's
    # local attention sees only a window)
    window_padding: bool  # the backbone pads a sequence to a multiple of attention_window


# What differs per backbone family (config.json "model_type"), read once.
BACKBONES = {
    "bert": _Backbone(position_offset=False, global_cls=False, window_padding=False),
    "longformer": _Backbone(position_offset=True, global_cls=True, window_padding=True),
}


def backbone_path(backbone: str | None) -> Path:
    """The local model folder `recformer.backbone` names (None: the bundled MiniLM)."""
    path = Path(backbone).expanduser() if backbone else bundled_model_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"recformer.backbone {path}: not a Hugging Face model folder "
                                "(no config.json)")
    return path


def _backbone_config(path: Path, layers: int):
    """The backbone's config, checked: a supported family with at least `layers` layers."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in BACKBONES:
        raise ValueError(f"recformer.backbone {path}: model type {config.model_type!r} is not "
                         f"one of {', '.join(BACKBONES)}")
    if layers > config.num_hidden_layers:
        raise ValueError(f"recformer.layers {layers}: the backbone {path} has only "
                         f"{config.num_hidden_layers}")
    return config


def _truncate(backbone: nn.Module, layers: int) -> None:
    """Keep the first `layers` transformer layers (0 = all) and drop the pooler, in place.

    The whole checkpoint is loaded first (a silent, exact load), then cut; the pooler goes
    because the sequence vector is pooled by Recformer, and an unused layer would hold
    parameters that never get a gradient.
    """
    backbone.pooler = None
    if not layers:
        return
    backbone.encoder.layer = backbone.encoder.layer[:layers]
    backbone.config.num_hidden_layers = layers  # a saved config describes the cut model
    if isinstance(getattr(backbone.config, "attention_window", None), list):  # one per layer
        backbone.config.attention_window = backbone.config.attention_window[:layers]


def position_limit(config) -> int:
    """Most tokens a sequence may have for the backbone's position table (a Longformer first
    pads a sequence up to a multiple of its attention window)."""
    family = BACKBONES[config.model_type]
    limit = config.max_position_embeddings
    if family.position_offset:
        limit -= config.pad_token_id + 1
    if family.window_padding:
        window = config.attention_window
        window = max(window) if isinstance(window, list) else window
        limit = limit // window * window
    return limit


class Recformer(nn.Module):
    """Backbone (truncated to `layers`) + token-type and item-position tables + pooling.

    Holds parameters only: the catalogue's token lists live in recsys.inputs.recformer.
    """

    def __init__(self, config: RecformerConfig):
        super().__init__()
        self.config = config
        self.path = backbone_path(config.backbone)
        backbone_config = _backbone_config(self.path, config.layers)
        limit = position_limit(backbone_config)
        if config.max_tokens > limit:
            raise ValueError(f"recformer.max_tokens {config.max_tokens}: the backbone "
                             f"{self.path} has positions for {limit} tokens")
        self.backbone = AutoModel.from_pretrained(self.path, local_files_only=True)
        _truncate(self.backbone, config.layers)
        self._global_cls = BACKBONES[backbone_config.model_type].global_cls
        self.dim = backbone_config.hidden_size
        self.token_types = nn.Embedding(TOKEN_TYPES, self.dim)  # (4, dim)
        self.item_positions = nn.Embedding(config.max_item_positions, self.dim)  # (P, dim)
        std = getattr(backbone_config, "initializer_range", 0.02)
        for table in (self.token_types, self.item_positions):
            if config.new_tables == "zeros":
                nn.init.zeros_(table.weight)
            else:
                nn.init.normal_(table.weight, std=std)

    def embed(self, tokens: torch.Tensor, token_types: torch.Tensor,
              item_positions: torch.Tensor) -> torch.Tensor:
        """word + token type + item position (B, T, dim), before the backbone adds its token
        positions (and its constant type-0 row) and normalises."""
        words = self.backbone.get_input_embeddings()(tokens)  # (B, T, dim)
        return words + self.token_types(token_types) + self.item_positions(item_positions)

    def hidden_states(self, tokens: torch.Tensor, token_types: torch.Tensor,
                      item_positions: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states (B, T, dim) of every token (pre-training's MLM head reads these)."""
        extra = {}
        if self._global_cls:
            global_mask = torch.zeros_like(attention_mask)  # (B, T)
            global_mask[:, 0] = 1
            extra["global_attention_mask"] = global_mask
        out = self.backbone(inputs_embeds=self.embed(tokens, token_types, item_positions),
                            attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(tokens), **extra)
        return out.last_hidden_state  # (B, T, dim)

    def encode(self, tokens: torch.Tensor, token_types: torch.Tensor,
               item_positions: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sequences (each input (B, T) int64) -> vectors (B, dim): the [CLS] state, or the
        mean over attention_mask == 1 (config.pooling). A single item is a one-item sequence."""
        states = self.hidden_states(tokens, token_types, item_positions, attention_mask)
        return self.pool(states, attention_mask)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, dim) -> sequence vectors (B, dim) as config.pooling says (for a
        caller that needs the states too, e.g. pre-training's MLM head)."""
        if self.config.pooling == "cls":
            return states[:, 0]  # (B, dim)
        return mean_pool(states, attention_mask)  # (B, dim)

    def score(self, sequence_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """cosine(sequence (B, dim), item (N, dim)) -> (B, N) in [-1, 1]; the training losses
        divide it by `train.loss.temperature`."""
        sequences = F.normalize(sequence_vectors.float(), dim=-1)  # (B, dim)
        items = F.normalize(item_vectors.float(), dim=-1)  # (N, dim)
        return sequences @ items.T  # (B, N)

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return f"backbone={self.path.name}, dim={self.dim}, params={params:,}"


class MaskedLMHead(nn.Module):
    """BERT's MLM head for pre-training: dense + GELU + LayerNorm, then logits over the
    vocabulary through the backbone's input word embeddings (tied, as BERT ties them) plus an
    output bias. The bundled MiniLM ships no MLM head, so this one starts fresh.

        head = MaskedLMHead.matching(model)
        logits = head(states[masked], model.backbone.get_input_embeddings().weight)  # (N, V)
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-12, std: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # (V,)
        nn.init.normal_(self.dense.weight, std=std)  # as BERT initialises its heads
        nn.init.zeros_(self.dense.bias)

    @classmethod
    def matching(cls, model: Recformer) -> MaskedLMHead:
        """A head sized for `model`'s backbone (hidden size, vocabulary, LayerNorm eps)."""
        config = model.backbone.config
        return cls(model.dim, config.vocab_size, getattr(config, "layer_norm_eps", 1e-12),
                   getattr(config, "initializer_range", 0.02))

    def forward(self, states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """states (N, dim) of the masked positions, word_embeddings (V, dim) -> logits (N, V)."""
        hidden = self.norm(F.gelu(self.dense(states)))  # (N, dim)
        return hidden @ word_embeddings.T + self.bias  # (N, V)
