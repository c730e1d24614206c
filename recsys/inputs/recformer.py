"""Recformer inputs: a catalogue's items as `key value` token lists, and batches of sequences.

    tokenizer = load_tokenizer(config)
    catalogue = build_item_tokens(config, items, tokenizer)   # once per catalogue
    batch = catalogue.sequences(histories)                     # RecformerInputs, each (B, T)
    vectors = encode_items(model, catalogue, np.arange(1, catalogue.n_items + 1))

Item index i is row i - 1 of `items` (items.parquet order); index 0 is padding and has no
tokens. An item's tokens are, per attribute of `config.attributes` in order, the key's tokens
(typed KEY: the column name, `_` read as a space) then the value's (typed VALUE: the value as
`features.text.clean_text` renders it). Budgets: a value keeps at most `max_attr_tokens`
tokens, an item at most `max_item_tokens`; a cut falls between words (the tokenizer's
pre-tokenised words) unless one word is longer than the whole budget, and an attribute whose
value no longer fits is cut to the room left or, with no room for one value token, dropped
with its key (a key never stands alone). An item with no text reads as one unknown token.

A sequence is [CLS] then the history's items newest first; the oldest are dropped, whole, while
there are more than `max_items` or [CLS] plus the tokens go over `max_tokens`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

from features.text import clean_text
from recsys.config.recformer import RecformerConfig
from recsys.models.recformer import (
    CLS,
    KEY,
    PAD,
    VALUE,
    Recformer,
    RecformerInputs,
    backbone_path,
)
from recsys.ranking import with_repeat_bias

log = logging.getLogger(__name__)


def load_tokenizer(config: RecformerConfig):
    """The backbone's fast tokenizer, from its local folder (no download)."""
    path = backbone_path(config.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.is_fast:  # word boundaries come from a fast tokenizer's word_ids
        raise ValueError(f"recformer.backbone {path}: no fast tokenizer (tokenizer.json)")
    return tokenizer


@dataclass(frozen=True)
class ItemTokens:
    """The token lists of every item of a catalogue (ragged arrays) and the sequence budgets."""

    ids: np.ndarray  # (total,) int64 token ids, item 1's then item 2's ...
    types: np.ndarray  # (total,) int64 KEY / VALUE of each token
    offsets: np.ndarray  # (n_items + 2,) int64: item i owns ids[offsets[i]:offsets[i + 1]]
    cls_id: int  # the tokenizer's [CLS] (or <s>) id
    pad_id: int
    max_tokens: int  # per sequence, [CLS] included
    max_items: int  # newest items a sequence keeps
    empty: int  # items with no text, each read as the fallback token

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 2

    @property
    def lengths(self) -> np.ndarray:
        """(n_items + 1,) tokens per item index; 0 for the padding index."""
        return np.diff(self.offsets)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and types of one item index."""
        span = slice(self.offsets[index], self.offsets[index + 1])
        return self.ids[span], self.types[span]

    def sequences(self, histories: np.ndarray) -> RecformerInputs:
        """Histories (B, L) of item indices, time order, left-padded with 0 -> inputs (B, T)."""
        histories = self._check(np.asarray(histories, dtype=np.int64), "histories", ndim=2)
        newest_first = histories[:, ::-1]
        # any stray 0 goes last, the order of real items is kept
        order = np.argsort(newest_first == 0, axis=1, kind="stable")
        return self._assemble(np.take_along_axis(newest_first, order, axis=1))

    def single_items(self, indices: Sequence[int] | np.ndarray) -> RecformerInputs:
        """Item indices (N,) -> inputs (N, T) of one-item sequences: the item vectors' input."""
        indices = self._check(np.asarray(indices, dtype=np.int64), "indices", ndim=1)
        if (indices == 0).any():
            raise ValueError("indices: 0 is the padding index, not an item")
        return self._assemble(indices[:, None])

    def _check(self, values: np.ndarray, name: str, ndim: int) -> np.ndarray:
        if values.ndim != ndim:
            raise ValueError(f"{name}: expected {ndim} dimensions, got shape {values.shape}")
        if values.size and (values.min() < 0 or values.max() > self.n_items):
            raise IndexError(f"{name}: item index outside 0..{self.n_items}")
        return values

    def _assemble(self, items: np.ndarray) -> RecformerInputs:
        """Items (B, L) newest first, 0s last -> inputs (B, T), all at once (no per-row loop)."""
        batch, width = items.shape
        lengths = self.lengths[items]  # (B, L), 0 for padding
        ends = np.cumsum(lengths, axis=1)  # (B, L) tokens after [CLS] through item j
        keep = (items > 0) & (ends < self.max_tokens) & (np.arange(width) < self.max_items)
        kept = np.where(keep, lengths, 0)  # real items have >= 1 token, so keep is a prefix
        size = 1 + kept.sum(1)  # (B,) tokens per sequence
        seq_len = int(size.max()) if batch else 1
        tokens = np.full((batch, seq_len), self.pad_id, np.int64)
        types = np.full((batch, seq_len), PAD, np.int64)
        positions = np.zeros((batch, seq_len), np.int64)
        mask = (np.arange(seq_len) < size[:, None]).astype(np.int64)
        tokens[:, 0], types[:, 0] = self.cls_id, CLS
        rows, cols = np.nonzero(kept)  # row by row, newest item first
        counts = kept[rows, cols]
        segment = np.repeat(np.arange(len(counts)), counts)  # kept item of each output token
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        source = self.offsets[items[rows, cols]][segment] + within
        out_rows = rows[segment]
        out_cols = (1 + ends[rows, cols] - counts)[segment] + within
        tokens[out_rows, out_cols] = self.ids[source]
        types[out_rows, out_cols] = self.types[source]
        positions[out_rows, out_cols] = cols[segment] + 1  # the i-th item newest first
        return RecformerInputs(*map(torch.from_numpy, (tokens, types, positions, mask)))


# --- building the token lists ------------------------------------------------------------


def build_item_tokens(config: RecformerConfig, items: pd.DataFrame, tokenizer) -> ItemTokens:
    """Token lists of every row of `items` (index = row + 1) under the budgets of `config`.

    Attributes of `config.attributes` absent from `items` are skipped (datasets differ); none
    present at all is an error.
    """
    columns = [a for a in dict.fromkeys(config.attributes) if a in items.columns]
    if not columns:
        known = ", ".join(c for c in items.columns if c != "item_id")
        raise ValueError(f"recformer.attributes {list(config.attributes)}: none is a column of "
                         f"the items table (columns: {known})")
    missing = [a for a in config.attributes if a not in items.columns]
    if missing:
        log.info("recformer: items table has no %s; items read %s", missing, columns)
    keys = [_tokenize(tokenizer, [c.replace("_", " ").strip()])[0][0] for c in columns]
    values = [_value_tokens(tokenizer, items[c], config.max_attr_tokens) for c in columns]
    per_item, empty = [], 0
    for row in range(len(items)):
        ids, types = _item(keys, [v[row] for v in values], config.max_item_tokens)
        if not ids:
            ids, types, empty = [tokenizer.unk_token_id], [VALUE], empty + 1
        per_item.append((ids, types))
    if empty:
        log.warning("recformer: %d of %d items have no text in %s; each reads as one %s token",
                    empty, len(items), columns, tokenizer.unk_token)
    lengths = np.fromiter((len(ids) for ids, _ in per_item), np.int64, len(per_item))
    offsets = np.concatenate([[0, 0], np.cumsum(lengths)])  # index 0 (padding): no tokens
    flat = [i for ids, _ in per_item for i in ids]
    flat_types = [t for _, types in per_item for t in types]
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else \
        tokenizer.bos_token_id
    return ItemTokens(ids=np.asarray(flat, np.int64), types=np.asarray(flat_types, np.int64),
                      offsets=offsets.astype(np.int64), cls_id=int(cls_id),
                      pad_id=int(tokenizer.pad_token_id or 0), max_tokens=config.max_tokens,
                      max_items=config.max_items, empty=empty)


def _tokenize(tokenizer, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """(token ids, word number of each token) per text, no special tokens."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)
    return [(ids, encoded.word_ids(i)) for i, ids in enumerate(encoded["input_ids"])]


def _value_tokens(tokenizer, column: pd.Series, budget: int) -> list[tuple[list, list]]:
    """Each value of one attribute, cleaned, as (ids, word numbers) cut to `budget` tokens."""
    texts = [clean_text(v) for v in column.tolist()]
    # a word is at least one token: words past budget + 1 can never be kept (long descriptions)
    texts = [" ".join(t.split(" ", budget + 1)[: budget + 1]) for t in texts]
    filled = [i for i, t in enumerate(texts) if t]
    out: list[tuple[list, list]] = [([], [])] * len(texts)
    for i, (ids, words) in zip(filled, _tokenize(tokenizer, [texts[i] for i in filled]),
                               strict=True):
        keep = _word_cut(words, budget)
        out[i] = (ids[:keep], words[:keep])
    return out


def _word_cut(words: list[int], budget: int) -> int:
    """How many leading tokens to keep within `budget` without splitting a word (a single word
    longer than the budget is cut at the budget)."""
    if len(words) <= budget:
        return len(words)
    keep = budget
    while keep > 0 and words[keep] == words[keep - 1]:
        keep -= 1
    return keep or budget


def _item(keys: list[list[int]], values: list[tuple[list, list]],
          budget: int) -> tuple[list[int], list[int]]:
    """One item's (ids, types): key + value per filled attribute while within `budget`."""
    ids: list[int] = []
    types: list[int] = []
    for key, (value, words) in zip(keys, values, strict=True):
        if not value:
            continue
        room = budget - len(ids) - len(key)
        if room < 1:
            break
        keep = _word_cut(words, room)
        ids += key + value[:keep]
        types += [KEY] * len(key) + [VALUE] * keep
        if keep < len(value):
            break
    return ids, types


# --- encoding the catalogue --------------------------------------------------------------


def encode_items(model: Recformer, catalogue: ItemTokens, indices: Sequence[int] | np.ndarray,
                 batch_size: int = 256) -> torch.Tensor:
    """Item vectors (N, dim) float32 of `indices`, each item encoded alone, in eval mode.

    Items run in length-sorted batches (little padding). The result is computed under
    no_grad, not inference_mode, so it can stand as a frozen item table in a graph that
    trains the sequence side.
    """
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(-catalogue.lengths[indices], kind="stable")
    device = next(model.parameters()).device
    out = torch.empty(len(indices), model.dim)
    was_training = model.training
    model.eval()  # dropout off: an item's vector does not depend on the batch
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = catalogue.single_items(indices[rows])
                vectors = model.encode(*(t.to(device) for t in batch))  # (b, dim)
                out[torch.from_numpy(rows)] = vectors.float().cpu()
    finally:
        model.train(was_training)
    return out


# --- the model bound to its catalogue ----------------------------------------------------


class RecformerRetriever(nn.Module):
    """A Recformer over its catalogue's token lists: `score(history, users)` = cosine of the
    sequence vector and the item table.

    The item table (n_items + 1, dim) is the catalogue encoded by the model itself, each item
    alone (`refresh_items`); it is a buffer, saved with the weights, so a checkpoint scores as
    it did when it was saved. Fine-tuning re-encodes it at epoch starts (stage 1), then keeps it
    (stage 2); gradients reach the sequence side only. `mlm_head` is set for pre-training;
    `repeat_bias` adds one learned offset (`repeat`, in cosine units) to the history's items.
    """

    def __init__(self, model: Recformer, catalogue: ItemTokens,
                 mlm_head: nn.Module | None = None, encode_batch: int = 64,
                 repeat_bias: bool = False):
        super().__init__()
        self.model = model
        self.catalogue = catalogue
        self.mlm_head = mlm_head
        self.repeat = nn.Parameter(torch.zeros(())) if repeat_bias else None
        self.encode_batch = encode_batch
        self.max_len = model.config.max_items
        self.n_items = catalogue.n_items
        self.register_buffer("item_table", torch.zeros(self.n_items + 1, model.dim))

    def refresh_items(self) -> None:
        """Encode every catalogue item into `item_table` (row 0, padding, stays 0)."""
        vectors = encode_items(self.model, self.catalogue, np.arange(1, self.n_items + 1),
                               self.encode_batch)
        self.item_table[1:] = vectors.to(self.item_table.device)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n, dim) unit vectors of `items` (n,), by default the whole table (row 0 = 0)."""
        table = F.normalize(self.item_table, dim=-1)
        return table if items is None else table[items]

    def sequence_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """history (batch, L) item indices left-padded with 0 -> (batch, dim), with gradients;
        encoded `encode_batch` sequences at a time (attention memory grows with the square of
        the tokens)."""
        history = history.cpu().numpy()
        device = self.item_table.device
        tokens = self.catalogue.lengths[history].sum(1)  # before the budget: an upper bound
        order = np.argsort(-tokens, kind="stable")  # similar lengths together: little padding
        parts = []
        for start in range(0, len(history), self.encode_batch):
            inputs = self.catalogue.sequences(history[order[start : start + self.encode_batch]])
            parts.append(self.model.encode(*(t.to(device) for t in inputs)))
        return torch.cat(parts)[torch.from_numpy(np.argsort(order)).to(device)]  # input order

    def user_vectors(self, history: torch.Tensor,
                     users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> (batch, dim) unit vectors; `users` are not read."""
        return F.normalize(self.sequence_vectors(history).float(), dim=-1)

    def score(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """history (batch, L) -> (batch, n_items + 1) scores; column 0 (padding) is meaningless.
        The repeat bias, if any, applies to every item of `history`."""
        scores = self.model.score(self.sequence_vectors(history), self.item_table)
        return scores if self.repeat is None else with_repeat_bias(scores, history, self.repeat)
