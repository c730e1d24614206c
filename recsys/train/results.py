"""The end of a run: test the best checkpoint, write metrics.json and the training curve, log
them and the model's artifacts to MLflow (`recsys.train.loop.fit` calls it on rank 0)."""

from __future__ import annotations

from pathlib import Path

from recsys.config import Config
from recsys.data.ctr import CtrSplit
from recsys.data.split import Split
from recsys.recipes import evaluate_model, run_artifacts
from recsys.runtime import tracking
from recsys.runtime.atomic import write_json
from recsys.runtime.checkpoint import has_checkpoint, load_weights, save_checkpoint
from recsys.runtime.plots import training_curve
from recsys.train.sparsity import export_sparse_weights, parameter_bytes


def finish_run(model, split: Split | CtrSplit, config: Config, run_dir: Path,
               state: dict, extra: dict | None = None) -> dict:
    """Test the best checkpoint (its valid metrics are the ones measured when it was saved),
    write metrics.json (with `extra`) and the curve, log both to MLflow."""
    best = run_dir / "checkpoint" / "best"
    if has_checkpoint(best):
        load_weights(best, model)
    else:  # nothing to train (popularity): the model as built is the final one
        save_checkpoint(best, model, None, state, config)
    metrics = {
        "model": config.model.name,
        "exclude_seen": config.eval.exclude_seen,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_seconds": sum(r["seconds"] for r in state["history"]),
        "selection": f"valid {state['selection']}",
        "param_bytes": parameter_bytes(model),
        "valid": best_valid(state) or evaluate_model(config, model, split, "valid"),
        "test": evaluate_model(config, model, split, "test"),
        **(extra or {}),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracking.log_metrics(metrics["test"], prefix="test_")
    tracking.log_metrics({"best_epoch": state["best_epoch"], "epochs": state["epoch"]})
    tracking.log_metrics(metrics["param_bytes"], prefix="param_bytes_")
    if config.sparse.enabled:
        tracking.log_file(export_sparse_weights(model, run_dir / "model.sparse.safetensors"))
    tracking.log_file(run_dir / "metrics.json")
    if state["history"]:
        tracking.log_file(training_curve(state["history"], run_dir / "training_curve.png",
                                         state["selection"]))
    for path in run_artifacts(config, model, split, run_dir):
        tracking.log_file(path)
    return metrics


def best_valid(state: dict) -> dict[str, float] | None:
    """The validation metrics the loop measured at the best epoch (the weights the best
    checkpoint holds), or None when it measured none (nothing trained)."""
    for record in state["history"]:
        if record["epoch"] == state["best_epoch"] and f"valid_{state['selection']}" in record:
            return {k.removeprefix("valid_"): v for k, v in record.items()
                    if k.startswith("valid_")}
    return None
