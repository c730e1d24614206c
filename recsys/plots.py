"""Training-curve figure for a run (loss and valid NDCG@10 per epoch)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from recsys.atomic import atomic_path  # noqa: E402


def training_curve(history: list[dict], path: Path) -> Path:
    """Plot train loss and valid NDCG@10 against epoch into a PNG at `path`."""
    epochs = [r["epoch"] for r in history]
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    loss_ax.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss", color="tab:blue")
    valid = [(r["epoch"], r["valid_ndcg@10"]) for r in history if "valid_ndcg@10" in r]
    if valid:
        ndcg_ax = loss_ax.twinx()
        ndcg_ax.plot(*zip(*valid, strict=True), color="tab:orange", marker=".")
        ndcg_ax.set_ylabel("valid NDCG@10", color="tab:orange")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
