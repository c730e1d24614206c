"""Figures of a run: the training curve, and the calibration of a CTR model."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from recsys.runtime.atomic import atomic_path  # noqa: E402


def training_curve(history: list[dict], path: Path, metric: str = "ndcg@10") -> Path:
    """Plot train loss and the valid `metric` (the one that selects epochs) into a PNG."""
    epochs = [r["epoch"] for r in history]
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    loss_ax.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss", color="tab:blue")
    key = f"valid_{metric}"
    valid = [(r["epoch"], r[key]) for r in history if key in r]
    if valid:
        metric_ax = loss_ax.twinx()
        metric_ax.plot(*zip(*valid, strict=True), color="tab:orange", marker=".")
        metric_ax.set_ylabel(f"valid {metric}", color="tab:orange")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def calibration_plot(table: dict, path: Path, title: str = "") -> Path:
    """Predicted vs observed positive rate per bin (`recsys.metrics.calibration_table`) as a PNG."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.plot(table["predicted"], table["observed"], marker="o", color="tab:blue", label="model")
    ax.set_xlabel("mean predicted probability (per decile)")
    ax.set_ylabel("observed positive rate")
    ax.set_title(f"calibration {title} (ECE {table['ece']:.4f})".strip())
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
