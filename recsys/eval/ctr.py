"""CTR evaluation of a reranker on one part of a `CtrSplit`: AUC, grouped AUC, log loss,
calibration by decile. Model selection on CTR runs uses the validation AUC (`SELECT`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.data.ctr import CtrSplit
from recsys.inputs.reranker import part_tensors
from recsys.metrics import auc, calibration_table, grouped_auc, impression_metrics, log_loss
from recsys.runtime.atomic import write_json
from recsys.runtime.plots import calibration_plot

SELECT = "auc"  # the validation metric that picks the best epoch of a CTR run


@torch.inference_mode()
def predict(model: nn.Module, split: CtrSplit, which: str, batch_size: int = 4096) -> np.ndarray:
    """(n,) float64 probabilities for the rows of `split.part(which)`, in their order."""
    model.eval()
    users, items, history, stats, _ = part_tensors(split.part(which))
    out = [torch.sigmoid(model(users[s:s + batch_size], items[s:s + batch_size],
                               history[s:s + batch_size], stats[s:s + batch_size]).float())
           for s in range(0, len(users), batch_size)]
    return torch.cat(out).double().numpy()


def ctr_metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                impressions: np.ndarray | None = None) -> dict[str, float]:
    """AUC, grouped AUC (per `groups`, e.g. users), log loss, decile calibration error, rates;
    with `impressions` (n,) also MIND's per-impression metrics, prefixed `impression_`."""
    if not np.isfinite(probs).all():
        raise ValueError("the model predicted NaN or infinite probabilities")
    per_impression = ({} if impressions is None else
                      {f"impression_{k}": v
                       for k, v in impression_metrics(labels, probs, impressions).items()})
    return {
        "auc": auc(labels, probs),
        "gauc": grouped_auc(labels, probs, groups),
        "logloss": log_loss(labels, probs),
        "calibration_ece": calibration_table(labels, probs, min(10, len(labels)))["ece"],
        "positive_rate": float(np.mean(labels)),
        "predicted_rate": float(np.mean(probs)),
        "rows": float(len(labels)),
        **per_impression,
    }


def evaluate_ctr(model: nn.Module, split: CtrSplit, which: str) -> dict[str, float]:
    """CTR metrics of `model` on `which` ("valid" or "test"); GAUC groups rows by user."""
    part = split.part(which)
    return ctr_metrics(part.labels, predict(model, split, which), part.users, part.impressions)


def write_calibration(model: nn.Module, split: CtrSplit, which: str, folder: Path) -> list[Path]:
    """`calibration_<which>.json` (the decile table) and `.png` (its plot) in `folder`."""
    part = split.part(which)
    table = calibration_table(part.labels, predict(model, split, which), 10)
    doc = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in table.items()}
    path = write_json(folder / f"calibration_{which}.json", doc)
    return [path, calibration_plot(table, folder / f"calibration_{which}.png", which)]
