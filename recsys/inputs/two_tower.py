"""Features for the two-tower model, built from the item (and user) tables of a dataset.

Text attributes go through the frozen text encoder (one vector per attribute, cached by text),
categorical attributes become padded integer codes for torchrec bags. Item row 0 is the padding
item, row i the item of index i (items.parquet order, as in `Split.items`); user row r is the
split's user row r.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from features.text import clean_text, item_sentences
from recsys.config import RerankerConfig, TwoTowerConfig
from recsys.inputs.text_vectors import encode_texts
from recsys.models.text_encoder import TextEncoder
from recsys.models.two_tower import TowerInputs

log = logging.getLogger(__name__)


def build_tower_inputs(config: TwoTowerConfig, items: pd.DataFrame, users: pd.DataFrame | None,
                       user_ids: Sequence[str], train_counts: np.ndarray) -> TowerInputs:
    """`TowerInputs` for every row of `items` and every id of `user_ids` (the split's order).

    `users` is the optional user table; train_counts (n_items + 1,) marks items with known IDs.
    """
    require_columns(items, config.text + config.categorical, "items.parquet", "model.two_tower")
    categorical = [categorical_codes(items[c], config.max_values) for c in config.categorical]
    user_categorical = user_attribute_codes(users, user_ids, config.user_categorical,
                                            config.max_values, "model.two_tower")
    tokens = lengths = None
    if config.finetune_text and config.text:  # the model encodes the text itself, as it learns
        tokens, lengths = map(torch.as_tensor, text_tokens(config, items))
        text = torch.zeros(len(items) + 1, len(config.text), 0)
    else:
        text = torch.as_tensor(text_vectors(config, items))
    return TowerInputs(
        text=text,
        categorical=tuple(torch.as_tensor(codes) for codes, _ in categorical),
        vocab_sizes=tuple(size for _, size in categorical),
        id_known=torch.as_tensor(train_counts > 0),
        n_users=len(user_ids),
        user_categorical=tuple(torch.as_tensor(codes) for codes, _ in user_categorical),
        user_vocab_sizes=tuple(size for _, size in user_categorical),
        tokens=tokens,
        token_lengths=lengths,
    )


def text_vectors(config: TwoTowerConfig | RerankerConfig, items: pd.DataFrame) -> np.ndarray:
    """(n_items + 1, n_text, text_dim) float32 unit vectors; zeros where an item lacks the text.
    Reads `config.text`, `.encoder` and `.text_max_tokens`, which both models' configs have."""
    if not config.text:
        return np.zeros((len(items) + 1, 0, 1), np.float32)
    encoder = TextEncoder(config.encoder)
    out = np.zeros((len(items) + 1, len(config.text), encoder.dim), np.float32)
    for slot, sentences in enumerate(_text_sentences(config, items, encoder.tokenizer)):
        rows = np.flatnonzero([bool(s) for s in sentences])
        if len(rows):
            texts = [sentences[r] for r in rows]
            out[rows + 1, slot] = encode_texts(encoder, texts, normalize=True, progress=True)
    return out


def text_tokens(config: TwoTowerConfig, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (n_items + 1, n_text, T) int64 (pad id after the end) and lengths
    (n_items + 1, n_text), 0 where an item lacks the text: what a fine-tuned encoder reads."""
    encoder = TextEncoder(config.encoder)
    per_slot = []  # (item rows with text, their token lists) per attribute
    for sentences in _text_sentences(config, items, encoder.tokenizer):
        rows = [r for r, s in enumerate(sentences) if s]
        per_slot.append((rows, encoder.tokenize([sentences[r] for r in rows])))
    width = max([1] + [len(ids) for _, lists in per_slot for ids in lists])
    tokens = np.full((len(items) + 1, len(per_slot), width), encoder.tokenizer.pad_token_id or 0,
                     np.int64)
    lengths = np.zeros((len(items) + 1, len(per_slot)), np.int64)
    for slot, (rows, lists) in enumerate(per_slot):
        for row, ids in zip(rows, lists, strict=True):
            tokens[row + 1, slot, : len(ids)] = ids
            lengths[row + 1, slot] = len(ids)
    return tokens, lengths


def _text_sentences(config: TwoTowerConfig | RerankerConfig, items: pd.DataFrame,
                    tokenizer) -> list[list[str]]:
    """Per text attribute, one sentence per item ("" where the item has none)."""
    out = []
    for column in config.text:
        sentences = item_sentences(items, (column,), max_tokens=config.text_max_tokens,
                                   max_length=None, tokenizer=tokenizer).sentences
        missing = sum(not s for s in sentences)
        if missing:
            log.info("text %r: %d of %d items have none (zero vector)", column, missing,
                     len(items))
        out.append(sentences)
    return out


def categorical_codes(values: pd.Series, max_values: int) -> tuple[np.ndarray, int]:
    """Attribute values (str | list[str] | missing) -> codes (n + 1, width) with -1 = none.

    Codes count distinct values in order of first appearance; an item keeps its first
    `max_values` values. Returns the codes and the number of distinct values.
    """
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(v, len(vocab)) for v in _values(x)[:max_values]] for x in values]
    width = max(1, max((len(r) for r in rows), default=0))
    codes = np.full((len(rows) + 1, width), -1, np.int64)
    for i, row in enumerate(rows, start=1):
        codes[i, : len(row)] = row
    return codes, len(vocab)


def _values(value) -> list[str]:
    """The distinct non-empty cleaned strings of one attribute value, in order."""
    if isinstance(value, list | tuple | np.ndarray):
        cleaned = (clean_text(v) for v in value)
    else:
        cleaned = (clean_text(value),)
    return list(dict.fromkeys(v for v in cleaned if v))


def user_attribute_codes(users: pd.DataFrame | None, user_ids: Sequence[str],
                         columns: Sequence[str], max_values: int,
                         section: str) -> list[tuple[np.ndarray, int]]:
    """Per user attribute: codes (len(user_ids), width) aligned to `user_ids` (-1 = none) and
    the number of distinct values; `section` names the config that asked for them."""
    if not columns:
        return []
    if users is None:
        raise ValueError(f"{section}.user_categorical is set but the dataset has no "
                         "users.parquet")
    require_columns(users, columns, "users.parquet", section)
    aligned = users.drop_duplicates("user_id").set_index("user_id").reindex(list(user_ids))
    coded = (categorical_codes(aligned[c], max_values) for c in columns)
    return [(codes[1:], size) for codes, size in coded]  # codes row 0 is the padding row


def require_columns(table: pd.DataFrame, columns: Sequence[str], name: str,
                    section: str) -> None:
    """A clear error naming the first of `columns` (asked for by config `section`) missing
    from `table` (the file `name`)."""
    missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
    if missing:
        known = ", ".join(c for c in table.columns if not c.endswith("_id"))
        raise ValueError(f"{name} has no attribute {missing[0]!r} named in {section} "
                         f"(attributes: {known})")
