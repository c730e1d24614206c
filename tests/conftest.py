"""Shared fixtures: a tiny, learnable dataset and a seeded tiny config for it."""

from __future__ import annotations

import shutil
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.config import Config, config_from_dict
from recsys.data import ensure_dataset

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


def tiny_config(root: Path, data_root: Path | None = None, **train) -> Config:
    """A seeded SASRec config on the successor data under `data_root` (raw/ and dataset/;
    default `root`), with its runs and MLflow db under `root`."""
    data_root = root if data_root is None else data_root
    raw = {
        "data": {
            "source": "tabular",
            "raw": str(data_root / "raw"),
            "dir": str(data_root / "dataset"),
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


def _write_prepared(root: Path) -> None:
    """The successor raw files under root/raw and their prepared dataset under root/dataset."""
    write_successor_csv(root / "raw")
    data = tiny_config(root).data
    ensure_dataset(data.source, data.raw, data.dir, data.mapping)


def _file_stats(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under `root`: what `ensure_dataset` compares, and more."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def successor_data(tmp_path_factory) -> Path:
    """raw/ and dataset/ of the successor data, prepared once per session; tests only read it."""
    root = tmp_path_factory.mktemp("successor")
    _write_prepared(root)
    return root


@contextmanager
def unchanged(root: Path, test: str) -> Iterator[None]:
    """Fails `test` if it changed a file under `root` (prepared data), making the data again
    first so that the tests after it still find it as the session made it."""
    before = _file_stats(root)
    try:
        yield
    finally:
        changed = _file_stats(root) != before
    if changed:
        shutil.rmtree(root)
        _write_prepared(root)
        pytest.fail(f"{test} changed the shared successor data under {root}: "
                    "mark it @pytest.mark.private_data")


@pytest.fixture
def config(request, successor_data, tmp_path) -> Iterator[Config]:
    """The tiny config with its runs and MLflow db under `tmp_path`, on the session's prepared
    successor data, or, for a test marked `private_data` (it edits the raw files or needs an
    unprepared dataset), on its own copy of the raw files under `tmp_path`, prepared on first
    use. A test that changes the shared data fails (see `unchanged`)."""
    if request.node.get_closest_marker("private_data"):
        shutil.copytree(successor_data / "raw", tmp_path / "raw")
        yield tiny_config(tmp_path)
        return
    with unchanged(successor_data, request.node.nodeid):
        yield tiny_config(tmp_path, successor_data)


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


@pytest.fixture
def run_server():
    """run(app) -> base URL of a real uvicorn server on a free loopback port, in a thread;
    every server started is stopped at teardown."""
    import socket
    import threading
    import time

    import uvicorn

    started = []

    def run(app):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", access_log=False,
                                               log_level="warning", log_config=None))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield run
    for server, thread, sock in started:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from threads; on a shared 2-core box they wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
