"""`fit(config)`: the one training loop, for every model.

A run lives in `runs/<run_id>/` where run_id is the MLflow run id. After every epoch the loop
writes `checkpoint/last` (weights, optimizer, RNG, early-stopping state), so `fit(..., resume=dir)`
continues a killed run and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from recsys.config import Config, config_from_dict, config_to_dict, read_yaml
from recsys.data.ctr import CtrSplit
from recsys.data.split import Split
from recsys.recipes import (
    check_dataset,
    check_run_id,
    evaluate_model,
    load_data,
    new_model,
    run_artifacts,
    selection_metric,
    training_task,
)
from recsys.runtime import tracking
from recsys.runtime.atomic import write_json, write_text
from recsys.runtime.checkpoint import (
    has_checkpoint,
    load_weights,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)
from recsys.runtime.memory import keep_freed_memory
from recsys.runtime.plots import training_curve

log = logging.getLogger(__name__)


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]  # {"valid": {...}, "test": {...}, "epochs": n, ...}


def fit(config: Config | None, resume: str | Path | None = None) -> RunResult:
    """Train `config.model`, validate every `eval_every` epochs, stop early, test the best.

    The best epoch is the one with the highest validation `selection_metric(config)`: NDCG@10
    for retrieval models, AUC for the reranker.

    With `resume` (a run dir) the run's own config and last checkpoint are used instead.
    A non-finite loss stops the run with `Diverged` (or skips the step: `train.on_nan`).
    """
    if resume is not None:
        config = config_from_dict(read_yaml(Path(resume) / "config.yaml", "run config"))
    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory and not keep_freed_memory():
        log.warning("train.keep_freed_memory needs glibc's malloc: left as it was")
    torch.manual_seed(cfg.seed)
    dataset, split = load_data(config)
    model = new_model(config, dataset, split)
    trainable = (model.parameter_groups(cfg.lr) if hasattr(model, "parameter_groups")
                 else [p for p in model.parameters() if p.requires_grad])
    optimizer = (torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
                 if trainable else None)
    state = {"epoch": 0, "step": 0, "best_valid": -float("inf"), "best_epoch": 0,
             "bad_evals": 0, "selection": selection_metric(config), "history": [],
             "n_items": split.n_items, "done": False,
             "dataset_sha256": dataset.info.get("sha256")}

    run_id = _resumable(Path(resume), dataset) if resume is not None else None
    name = config.tracking.run_name or config.model.name
    with tracking.start_run(config.tracking, run_id=run_id, name=name) as run:
        if resume is None:
            run_dir = _new_run_dir(config, run.info.run_id)
            tracking.log_params({**config_to_dict(config),
                                 "dataset_sha256": state["dataset_sha256"]})
            tracking.log_file(run_dir / "config.yaml")
        else:
            run_dir = Path(resume)
            if has_checkpoint(run_dir / "checkpoint" / "last"):
                state = restore_training(run_dir / "checkpoint" / "last", model, optimizer)
                if "best_ndcg" in state:  # written before the selection metric was named
                    state["best_valid"] = state.pop("best_ndcg")
                    state["selection"] = "ndcg@10"
                log.info("resumed %s at epoch %d", run_dir, state["epoch"])
        state["run_id"] = run.info.run_id
        if optimizer is not None and not state["done"]:
            task = training_task(config, dataset, split, model)
            state = _train_epochs(model, optimizer, task, split, config, run_dir, state)
        return _finish(model, split, config, run_dir, state)


def _resumable(run_dir: Path, dataset) -> str:
    """The MLflow run id of `run_dir`, once its checkpoint shows the dir is the run's own (not a
    copy or a renamed dir) and its dataset is the one it was trained on."""
    last = run_dir / "checkpoint" / "last"
    if not has_checkpoint(last):
        return run_dir.name  # killed before its first epoch ended: the dir name is all there is
    state = read_checkpoint(last)["state"]
    check_run_id(state, run_dir)
    check_dataset(state.get("dataset_sha256"), dataset, run_dir)
    return run_dir.name


def _train_epochs(model, optimizer, task, split: Split | CtrSplit, config: Config,
                  run_dir: Path, state: dict):
    cfg = config.train
    select = state["selection"]
    epochs = tqdm(range(state["epoch"], cfg.epochs), initial=state["epoch"], total=cfg.epochs,
                  desc="train", unit="epoch", disable=None)
    for epoch in epochs:
        started = time.perf_counter()
        loss, skipped = _one_epoch(model, optimizer, task, epoch, state["step"], cfg.on_nan)
        record = {"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - started}
        if skipped:
            record["skipped_steps"] = skipped
        state["step"] += len(task)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            valid = evaluate_model(config, model, split, "valid")
            record.update({f"valid_{k}": v for k, v in valid.items()})
            if valid[select] > state["best_valid"]:
                state.update(best_valid=valid[select], best_epoch=epoch + 1, bad_evals=0)
                save_checkpoint(run_dir / "checkpoint" / "best", model, None, state, config)
            else:
                state["bad_evals"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["done"] = state["bad_evals"] >= cfg.patience or epoch + 1 == cfg.epochs
        tracking.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        save_checkpoint(run_dir / "checkpoint" / "last", model, optimizer, state, config)
        epochs.set_postfix(loss=f"{loss:.4f}", **{f"best_{select}": f"{state['best_valid']:.4f}"})
        log.info("epoch %d loss %.4f valid %s %s", epoch + 1, loss, select,
                 record.get(f"valid_{select}", "-"))
        if state["done"]:
            break
    return state


def _one_epoch(model: nn.Module, optimizer, task, epoch: int, step: int,
               on_nan: str) -> tuple[float, int]:
    """One pass over the task's batches (in random order) after `step` earlier steps; returns
    the mean finite batch loss and the number of steps skipped for a non-finite loss."""
    task.train()  # the model inside it too
    total, skipped = 0.0, 0
    bar = tqdm(task.batches(), total=len(task), desc=f"epoch {epoch + 1}", leave=False,
               disable=None)
    for i, batch in enumerate(bar):
        loss = task(batch)
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        problem = None if math.isfinite(value) else f"training loss is {value}"
        if problem is None:
            loss.backward()
            if on_nan == "skip_step" and not _finite_gradients(optimizer):
                problem = "gradients are not finite"  # a step would poison the weights
        if problem is not None:
            where = f"epoch {epoch + 1}, step {step + i + 1} (batch {i + 1} of {len(task)})"
            if on_nan == "stop":
                raise Diverged(f"{problem} at {where}: the run diverged (lower train.lr, or "
                               "set train.on_nan=skip_step)")
            log.warning("%s at %s: step skipped", problem, where)
            skipped += 1
            continue
        optimizer.step()
        total += value
        bar.set_postfix(loss=f"{value:.4f}")
    if skipped and skipped == len(task):
        raise Diverged(f"training loss was not finite at any step of epoch {epoch + 1}: "
                       "the run diverged (lower train.lr)")
    return total / max(len(task) - skipped, 1), skipped


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _finish(model, split: Split | CtrSplit, config: Config, run_dir: Path,
            state: dict) -> RunResult:
    """Test the best checkpoint, write metrics.json and the curve, log both to MLflow."""
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
        "valid": evaluate_model(config, model, split, "valid"),
        "test": evaluate_model(config, model, split, "test"),
    }
    write_json(run_dir / "metrics.json", metrics)
    tracking.log_metrics(metrics["test"], prefix="test_")
    tracking.log_metrics({"best_epoch": state["best_epoch"], "epochs": state["epoch"]})
    tracking.log_file(run_dir / "metrics.json")
    if state["history"]:
        tracking.log_file(training_curve(state["history"], run_dir / "training_curve.png",
                                         state["selection"]))
    for path in run_artifacts(config, model, split, run_dir):
        tracking.log_file(path)
    return RunResult(run_id=run_dir.name, run_dir=run_dir, metrics=metrics)


def _new_run_dir(config: Config, run_id: str) -> Path:
    run_dir = Path(config.train.runs_dir) / run_id
    run_dir.mkdir(parents=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    write_text(run_dir / "config.yaml", text)
    return run_dir


