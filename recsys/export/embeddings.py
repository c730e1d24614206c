"""Export a finished run's item and user embeddings in the serving store format.

`export_embeddings(run_dir)` rebuilds the model from the run's best checkpoint (which carries its
config), rebuilds the data split from that config, and writes two stores (serving/store.py):
`<out>/items` (one vector per catalogue item) and `<out>/users` (one vector per user, from the
user's whole known history). The two go live together: every vector is computed and both new
versions are written before either CURRENT moves, then the two CURRENT files are switched back to
back (see `_write_pair` for the instant between them). It never imports the training loop.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from features.ids import PAD
from features.sequences import pad_left
from features.sparse import csr_nbytes
from recsys.data.split import Split
from recsys.recipes import load_run, require
from serving.store import CURRENT, StoreError, current_version_dir, switch_current, write_store

log = logging.getLogger(__name__)


def export_embeddings(
    run_dir: str | Path, out: str | Path | None = None, *, batch_size: int = 1024
) -> dict[str, Any]:
    """Write `out/items` and `out/users` (default out: `run_dir/embeddings`); return a summary.

    Items: ids = raw item ids, vectors = `model.item_vectors()[1:]` (row 0 is padding).
    Users: ids = raw user ids, vectors = `model.user_vectors(history, users)` where history is
    everything known of the user (train prefix + valid and test targets where present).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "embeddings"
    model, config, split = load_run(run_dir / "checkpoint" / "best")
    require(config, "vectors", "to export")

    with torch.inference_mode():
        items = model.eval().item_vectors()[1:].float().cpu().numpy()  # (n_items, dim)
    users = user_vectors(model, split, batch_size)  # (n_users, dim)
    stores = {"items": (split.items.ids, items), "users": (split.users.ids, users)}
    summary: dict[str, Any] = {"run_id": run_dir.name, "model": config.model.name,
                               "dim": int(items.shape[1])}
    written = _write_pair(out, stores, model=config.model.name, run_id=run_dir.name)
    for name, (ids, _) in stores.items():
        summary[name] = len(ids)
        summary[f"{name}_path"] = str(written[name])
    log.info("exported embeddings: %s", summary)
    return summary


def _write_pair(out: Path, stores: dict[str, tuple[np.ndarray, np.ndarray]], *, model: str,
               run_id: str) -> dict[str, Path]:
    """A new version of each store `out/<name>` from its (ids, vectors), made CURRENT together;
    returns the version dirs.

    Every version is written before any CURRENT moves, so a failed write leaves each store as it
    was (the versions already written are removed). The switches then follow back to back: a
    reader that opens the items in the instant between them and the users just after still gets
    this export's items with the previous users. Only one pointer shared by both stores would
    close that window.
    """
    written: dict[Path, Path] = {}  # store root: its new version dir, not yet CURRENT
    try:
        for name, (ids, vectors) in stores.items():
            root = out / name
            try:
                written[root] = write_store(root, ids, vectors, model=model, run_id=run_id,
                                            normalized=_unit_norm(vectors), make_current=False,
                                            layout=store_layout(vectors))
            except ValueError as err:  # say which store: both have the same checks
                raise ValueError(f"{root}: {err}; no store was changed") from err
    except BaseException:
        _remove(written.values())
        raise
    _switch_all(written)
    return {root.name: path for root, path in written.items()}


def store_layout(vectors: np.ndarray) -> str:
    """"csr" where it stores (count, dim) float32 vectors in fewer bytes than dense (the rows of
    a sparse-trained item table), else "dense"."""
    count, dim = vectors.shape
    csr = csr_nbytes(count, dim, int(np.count_nonzero(vectors)), np.dtype(np.float32).itemsize)
    return "csr" if csr < count * dim * np.dtype(np.float32).itemsize else "dense"


def _switch_all(written: dict[Path, Path]) -> None:
    """Make each new version CURRENT; if a switch fails, those switched go back and the new
    versions are removed."""
    previous = {root: _live_version(root) for root in written}
    switched = []
    try:
        for root, path in written.items():
            switch_current(root, path.name)
            switched.append(root)
    except BaseException:
        for root in switched:
            if previous[root] is None:
                (root / CURRENT).unlink(missing_ok=True)
            else:
                switch_current(root, previous[root])
        _remove(written.values())
        raise


def _live_version(root: Path) -> str | None:
    """The version `root/CURRENT` names, or None where there is no readable one."""
    try:
        return current_version_dir(root).name
    except StoreError:
        return None


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def full_histories(split: Split) -> list[np.ndarray]:
    """Per user (n_users,), every item index known in time order: train + valid + test target."""
    histories = []
    for row, prefix in enumerate(split.train):
        held_out = [t for t in (split.valid_target[row], split.test_target[row]) if t != PAD]
        histories.append(np.append(prefix, held_out).astype(np.int64))
    return histories


@torch.inference_mode()
def user_vectors(model: nn.Module, split: Split, batch_size: int = 1024) -> np.ndarray:
    """(n_users, dim) float32 user vectors from each user's full history, in user row order."""
    model.eval()
    histories = full_histories(split)
    parts = []
    for start in tqdm(range(0, len(histories), batch_size), desc="user vectors", unit="batch"):
        batch = histories[start : start + batch_size]
        parts.append(batch_user_vectors(model, batch, np.arange(start, start + len(batch))))
    return np.concatenate(parts)


@torch.inference_mode()
def batch_user_vectors(model: nn.Module, histories: list[np.ndarray],
                       rows: np.ndarray) -> np.ndarray:
    """(B, dim) float32 vectors of B users from their histories; rows (B,) are split rows."""
    device = next(model.parameters()).device
    inputs = torch.as_tensor(pad_left(histories, model.max_len), device=device)  # (B, L)
    return model.user_vectors(inputs, torch.as_tensor(rows, device=device)).float().cpu().numpy()


def _unit_norm(vectors: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether every row has L2 norm 1 (within `tol`), so dot product = cosine."""
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=tol))
