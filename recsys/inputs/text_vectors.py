"""Text vectors of a catalogue: `encode_texts` runs a `TextEncoder` over many texts, fast and
cached.

    vectors = encode_texts(encoder, sentences, normalize=True)   # (n, 384) float32

All texts are tokenised in one call, sorted by token length and cut into batches with little or
no padding (a batch without padding lets SDPA skip the mask), run under `torch.inference_mode`
(bf16 autocast where the CPU has native bf16), and cached per (model weights, text) so an
unchanged catalogue is not encoded again. `text_vectors` / `text_tokens` give the per-item,
per-attribute tables the two-tower and the reranker read (row 0 = the padding item).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.text import item_sentences
from recsys.config import RerankerConfig, TwoTowerConfig
from recsys.inputs.text_cache import EncodingCache, text_keys
from recsys.models.text_encoder import TextEncoder, bf16_supported

log = logging.getLogger(__name__)

PAD_SLACK = 0.1  # a batch only takes rows at least 90% as long as its first: <= 10% padding


def _batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of <= batch_size rows, longest first.

    A batch is closed early where lengths drop by more than PAD_SLACK: fixed-size batches over
    sorted lengths still pad ~10% on a catalogue (a sparse tail of long texts); this keeps it ~3%.
    """
    order = np.argsort(-lengths, kind="stable")
    ascending = -lengths[order]  # sorted ascending, for searchsorted
    batches, start = [], 0
    while start < len(order):
        shortest = lengths[order[start]] * (1 - PAD_SLACK)
        end = min(start + batch_size, int(np.searchsorted(ascending, -shortest, side="right")))
        batches.append(order[start:end])
        start = end
    return batches


def _run(encoder: TextEncoder, ids: list[list[int]], batch_size: int, bf16: bool,
         progress: bool) -> np.ndarray:
    """Forward all token lists in length-sorted batches -> (n, dim) float32 in input order."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    out = np.empty((len(ids), encoder.dim), dtype=np.float32)
    pad = encoder.tokenizer.pad_token_id or 0
    batches = _batches(lengths, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="encode", unit="batch")
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext())
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()  # dropout off
    try:
        with torch.inference_mode(), autocast:
            for rows in batches:
                width = int(lengths[rows[0]])  # rows are sorted longest first
                batch = np.full((len(rows), width), pad, dtype=np.int64)
                for r, row in enumerate(rows):
                    batch[r, : lengths[row]] = ids[row]
                input_ids = torch.from_numpy(batch).to(device)  # (b, width)
                mask = torch.from_numpy(  # (b, width)
                    np.arange(width)[None, :] < lengths[rows][:, None]).to(device, torch.int64)
                out[rows] = encoder(input_ids, mask).float().cpu().numpy()  # (b, dim)
    finally:
        encoder.train(was_training)
    return out


def encode_texts(encoder: TextEncoder, texts: Sequence[str], *, batch_size: int | None = None,
                 max_length: int | None = None, normalize: bool = False, use_cache: bool = True,
                 bf16: bool | None = None, progress: bool = False) -> np.ndarray:
    """Encode a catalogue of texts -> (n, dim) float32, row i for texts[i].

    batch_size, bf16 and the cache folder default to `encoder.config`; bf16 autocast is used only
    where the CPU supports it natively. Equal texts are encoded once. With a cache (config
    cache_dir set and use_cache), only texts not cached for these exact weights run through the
    model; turn it off while the encoder is being fine-tuned (each step would be a new key).
    """
    config = encoder.config
    batch_size = batch_size or config.batch_size
    max_length = max_length or encoder.max_length
    use_bf16 = (config.bf16 if bf16 is None else bf16) and bf16_supported()
    if (config.bf16 if bf16 is None else bf16) and not use_bf16:
        log.info("bf16 requested but this CPU has no native bf16: encoding in float32")
    texts = [str(t) for t in texts]
    unique = list(dict.fromkeys(texts))  # first-seen order; duplicates share one row
    position = {t: i for i, t in enumerate(unique)}
    vectors = np.empty((len(unique), encoder.dim), dtype=np.float32)
    todo = np.arange(len(unique))
    cache = None
    if use_cache and config.cache_dir and unique:
        fingerprint = encoder.fingerprint(f"max_length={max_length}", f"bf16={use_bf16}")
        cache = EncodingCache(Path(config.cache_dir), fingerprint, encoder.dim)
        keys = text_keys(unique)
        found, hit = cache.lookup(keys)
        vectors[hit] = found[hit]
        todo = np.flatnonzero(~hit)
        log.info("text cache %s: %d of %d texts cached", cache.folder, int(hit.sum()), len(unique))
    if len(todo):
        ids = encoder.tokenize([unique[i] for i in todo], max_length)
        vectors[todo] = _run(encoder, ids, batch_size, use_bf16, progress)
        if cache is not None:
            cache.add(keys[todo], vectors[todo])
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    if len(unique) == len(texts):
        return vectors
    return vectors[[position[t] for t in texts]]


# --- one vector (or token list) per item and text attribute, for the models that read them ---


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
