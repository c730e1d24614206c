"""Shared fixtures: a tiny, learnable dataset and a seeded tiny config for it."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_BERT_WORDS = ["hello", "world", "red", "drill", "steel", "staple", "kit", "title", "brand",
                   "category", "item", "name"]


def write_successor_csv(folder: Path, users: int = 120, items: int = 30, seed: int = 0) -> Path:
    """Each user walks the catalogue in order (i, i+1, i+2 ...), so the next item is learnable."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start, length = rng.integers(items), rng.integers(6, 14)
        for step in range(length):
            rows.append((f"u{user}", f"i{(start + step) % items}", 1_000 + step))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "events.csv", index=False)
    names = [f"i{i}" for i in range(items)]
    pd.DataFrame({"id": names, "name": [f"item {n}" for n in names]}).to_csv(
        folder / "items.csv", index=False
    )
    return folder


def tiny_config(root: Path, **train) -> Config:
    """A seeded SASRec config on the successor data under `root` (runs and MLflow there too)."""
    raw = {
        "data": {
            "source": "tabular",
            "raw": str(root / "raw"),
            "dir": str(root / "dataset"),
            "mapping": {
                "interactions": "events.csv",
                "items": "items.csv",
                "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"},
                "item_columns": {"item_id": "id", "title": "name"},
                "timestamp_format": "unix",
            },
        },
        "model": {"name": "sasrec", "sasrec": {"max_len": 12, "dim": 32, "layers": 1,
                                               "heads": 1, "dropout": 0.1}},
        "train": {"seed": 7, "epochs": 12, "batch_size": 16, "lr": 0.01, "eval_every": 1,
                  "patience": 100, "threads": 1, "runs_dir": str(root / "runs"), **train},
        "tracking": {"experiment": "tests", "uri": f"sqlite:///{root / 'mlruns.db'}"},
    }
    return config_from_dict(raw)


@pytest.fixture(scope="session")
def _successor_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("successor")
    write_successor_csv(root / "raw")
    return root


@pytest.fixture
def successor_root(_successor_root, tmp_path) -> Path:
    """A fresh copy of the raw files per test (the dataset is prepared on first use)."""
    (tmp_path / "raw").mkdir()
    for f in (_successor_root / "raw").iterdir():
        (tmp_path / "raw" / f.name).write_bytes(f.read_bytes())
    return tmp_path


@pytest.fixture
def config(successor_root) -> Config:
    return copy.deepcopy(tiny_config(successor_root))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-dim BERT with random weights and a WordPiece vocab (letters cover any word)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS, *letters,
             *(f"##{c}" for c in letters)]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path
