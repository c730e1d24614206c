"""`fit(config)`: the one training loop, for every model.

A run lives in `runs/<run_id>/` where run_id is the MLflow run id. After every epoch the loop
writes `checkpoint/last` (weights, optimizer, LR schedule, RNG, hook and early-stopping state), so
`fit(..., resume=dir)` continues a killed run and ends exactly where an uninterrupted run would.

One optimizer step takes `train.grad_accum` batches (each batch's loss divided by the size of its
group, so their gradients add up to the group's mean); the epoch's last, partial group steps too.
`state["step"]` counts optimizer steps, and the LR schedule (`recsys.train.optimizer`) steps with
it. `train.precision: bf16` runs forward and loss under bf16 autocast; `train.device: cuda` puts
the task (and so its model) and every batch on the GPU, while evaluation runs on the CPU.
Hooks (`recsys.tasks.hooks`) run at step and epoch boundaries. With `distributed.enabled` the
same loop runs on every torchrun rank, its task sharded by torchrec (`recsys.train.cluster`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from recsys.config import (
    Config,
    ConfigError,
    config_to_dict,
    read_yaml,
    stored_config,
)
from recsys.data.ctr import CtrSplit
from recsys.data.split import Split
from recsys.recipes import (
    check_dataset,
    check_run_id,
    evaluate_model,
    load_data,
    new_model,
    recipe_hooks,
    selection_metric,
    training_task,
)
from recsys.runtime import tracking
from recsys.runtime.atomic import write_text
from recsys.runtime.checkpoint import (
    has_checkpoint,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)
from recsys.runtime.memory import keep_freed_memory
from recsys.tasks.hooks import Hook, LoopContext, by_name
from recsys.train.cluster import Local, Sharded, cluster_for
from recsys.train.optimizer import build_schedule, steps_per_epoch
from recsys.train.results import finish_run
from recsys.train.sparsity import sparsity_hook
from recsys.train.starts import resolve_starts

log = logging.getLogger(__name__)


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]  # {"valid": {...}, "test": {...}, "epochs": n, ...}


def fit(config: Config | None, resume: str | Path | None = None,
        hooks: Iterable[Hook] = ()) -> RunResult:
    """Train `config.model`, validate every `eval_every` epochs, stop early, test the best.

    The best epoch is the one with the highest validation `selection_metric(config)`: NDCG@10
    for retrieval models, AUC for the reranker.

    With `resume` (a run dir) the run's own config and last checkpoint are used instead; pass
    the hooks the run was started with (their states are restored by name).
    A non-finite loss stops the run with `Diverged` (or skips the step: `train.on_nan`).
    """
    if config is None and resume is None:
        raise ValueError("fit needs a config, or a run dir to resume")
    if resume is not None:
        config = stored_config(read_yaml(Path(resume) / "config.yaml", "run config"))
    config = resolve_starts(config, lambda first: fit(first).run_dir)
    cfg = config.train
    named = by_name([*recipe_hooks(config), *hooks])
    device = _device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory and not keep_freed_memory():
        log.warning("train.keep_freed_memory needs glibc's malloc: left as it was")
    torch.manual_seed(cfg.seed)
    dataset = split = None
    with cluster_for(config, lambda: new_model(config, dataset, split)) as cluster:
        dataset, split = cluster.main_first(lambda: load_data(config))
        if resume is not None:
            _check_resumable(Path(resume), dataset)
        return _fit(config, resume, named, device, dataset, split, cluster)


def _fit(config: Config, resume: Path | None, named: dict[str, Hook], device: torch.device,
         dataset, split: Split | CtrSplit, cluster: Local | Sharded) -> RunResult:
    """`fit` once the data is loaded, on every rank of `cluster`."""
    model = cluster.main_first(lambda: new_model(config, dataset, split))  # rank 0 fills caches
    state = {"epoch": 0, "step": 0, "best_valid": -float("inf"), "best_epoch": 0,
             "bad_evals": 0, "selection": selection_metric(config), "history": [],
             "n_items": split.n_items, "done": False,
             "dataset_sha256": dataset.info.get("sha256")}
    with _tracked(config, resume, cluster) as run_id:
        if resume is None:
            run_dir = Path(config.train.runs_dir) / run_id
            if cluster.is_main:
                _new_run_dir(config, run_dir)
                tracking.log_params({**config_to_dict(config),
                                     "dataset_sha256": state["dataset_sha256"]})
                tracking.log_file(run_dir / "config.yaml")
        else:
            run_dir = Path(resume)
        ctx = _training(config, dataset, split, model, device, cluster)  # None: nothing to train
        if ctx is not None and config.sparse.enabled:
            named = by_name([*named.values(), sparsity_hook(ctx)])
        more_data = getattr(ctx.task, "data_sha256", {}) if ctx else {}  # a task's other sets
        last = run_dir / "checkpoint" / "last"
        if resume is not None and has_checkpoint(last):
            state = (cluster.restore_last(last, ctx, named) if ctx
                     else restore_training(last, model, None, None, named))
            if "best_ndcg" in state:  # written before the selection metric was named
                state["best_valid"] = state.pop("best_ndcg")
                state["selection"] = "ndcg@10"
            if "more_data_sha256" in state:  # not recorded before this check existed
                _check_more_data(state["more_data_sha256"], more_data, run_dir)
            log.info("resumed %s at epoch %d", run_dir, state["epoch"])
        elif more_data and cluster.is_main:
            tracking.log_params({f"data_sha256.{name}": sha for name, sha in more_data.items()})
        state["more_data_sha256"] = more_data
        state["run_id"] = run_id
        if ctx is not None and not state["done"]:
            state = _train_epochs(ctx, named, split, run_dir, state, cluster)
        final = cluster.full_model(ctx) if ctx else model
        report, metrics = cluster.report(), None
        if cluster.is_main:
            final.cpu()  # evaluation and artifacts run on the CPU
            metrics = finish_run(final, split, config, run_dir, state, report)
        return RunResult(run_id=run_id, run_dir=run_dir, metrics=cluster.share(metrics))


@contextmanager
def _tracked(config: Config, resume: Path | None, cluster: Local | Sharded) -> Iterator[str]:
    """The run's MLflow run (rank 0 opens it; a resumed run reopens its own) -> its id, which
    names the run dir, on every rank."""
    if not cluster.is_main:
        yield cluster.share(None)
        return
    run_id = None if resume is None else Path(resume).name  # the run dir is the run id
    name = config.tracking.run_name or config.model.name
    with tracking.start_run(config.tracking, run_id=run_id, name=name) as run:
        yield cluster.share(run.info.run_id)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device': cuda, but torch {torch.__version__} sees "
                          "no CUDA GPU here (set train.device=cpu)")
    return torch.device(name)


def _training(config: Config, dataset, split: Split | CtrSplit, model: nn.Module,
              device: torch.device, cluster: Local | Sharded) -> LoopContext | None:
    """The task, optimizer and LR schedule on `device`, or None when the model has nothing to
    train. Built before a checkpoint is restored, so nothing here draws from the restored RNG."""
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        return None
    task = training_task(config, dataset, split, model)
    if task is None:
        raise ValueError(f"model {config.model.name!r} has parameters to train but its recipe "
                         "has no training task")
    if {id(p) for p in task.parameters()} - {id(p) for p in model.parameters()}:
        raise ValueError("the training task has parameters of its own: only the model's are "
                         "optimized and checkpointed (make them part of the model)")
    task, optimizer = cluster.prepare(task.to(device), model, config)
    epoch_steps = steps_per_epoch(len(task), config.train.grad_accum)
    scheduler = build_schedule(optimizer, config.train, epoch_steps)
    return LoopContext(model, task, optimizer, scheduler, config, device)


def _check_resumable(run_dir: Path, dataset) -> None:
    """Refuse `run_dir` unless its checkpoint shows the dir is the run's own (not a copy or a
    renamed dir) and its dataset is the one it was trained on. A run killed before its first
    epoch ended has no checkpoint: nothing to check."""
    last = run_dir / "checkpoint" / "last"
    if has_checkpoint(last):
        state = read_checkpoint(last)["state"]
        check_run_id(state, run_dir)
        check_dataset(state.get("dataset_sha256"), dataset, run_dir)


def _check_more_data(saved: dict, now: dict, run_dir: Path) -> None:
    """Refuse to resume on other data than a task's extra datasets (a pre-training corpus) held
    when the run started."""
    for name in sorted(set(saved) | set(now)):
        if saved.get(name) != now.get(name):
            raise ValueError(f"cannot resume {run_dir}: dataset {name} has content hash "
                             f"{now.get(name)} now, {saved.get(name)} when the run started")


def _train_epochs(ctx: LoopContext, hooks: dict[str, Hook], split: Split | CtrSplit,
                  run_dir: Path, state: dict, cluster: Local | Sharded):
    config = ctx.config
    cfg = config.train
    select = state["selection"]
    epochs = tqdm(range(state["epoch"], cfg.epochs), initial=state["epoch"], total=cfg.epochs,
                  desc="train", unit="epoch", disable=None if cluster.is_main else True)
    ctx.step = state["step"]
    for epoch in epochs:
        ctx.epoch = epoch
        cluster.start_epoch()
        for hook in hooks.values():
            hook.on_epoch_start(ctx)
        started = time.perf_counter()
        loss, skipped = _one_epoch(ctx, hooks.values())
        for hook in hooks.values():
            hook.on_epoch_end(ctx)
        record = {"epoch": epoch + 1, "loss": cluster.mean(loss),
                  "seconds": time.perf_counter() - started}
        if skipped:
            record["skipped_steps"] = skipped
        state["step"] = ctx.step
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            model = cluster.full_model(ctx)  # None on ranks other than 0
            if model is not None:
                _validate(model, ctx, split, run_dir, state, record)
            state, record = cluster.share((state, record))
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["done"] = state["bad_evals"] >= cfg.patience or epoch + 1 == cfg.epochs
        if cluster.is_main:
            tracking.log_metrics({k: v for k, v in record.items() if k != "epoch"},
                                 step=epoch + 1)
        cluster.save_last(run_dir / "checkpoint" / "last", ctx, state, hooks)
        epochs.set_postfix(loss=f"{loss:.4f}", **{f"best_{select}": f"{state['best_valid']:.4f}"})
        log.info("epoch %d loss %.4f valid %s %s", epoch + 1, record["loss"], select,
                 record.get(f"valid_{select}", "-"))
        if state["done"]:
            break
    return state


def _validate(model: nn.Module, ctx: LoopContext, split: Split | CtrSplit, run_dir: Path,
              state: dict, record: dict) -> None:
    """Validate `model` into `record`; a new best updates `state` and `checkpoint/best`."""
    select = state["selection"]
    with _on_cpu(model, ctx.device):
        valid = evaluate_model(ctx.config, model, split, "valid")
    record.update({f"valid_{k}": v for k, v in valid.items()})
    if valid[select] > state["best_valid"]:
        state.update(best_valid=valid[select], best_epoch=ctx.epoch + 1, bad_evals=0)
        save_checkpoint(run_dir / "checkpoint" / "best", model, None, state, ctx.config)
    else:
        state["bad_evals"] += 1


@contextmanager
def _on_cpu(model: nn.Module, device: torch.device):
    """Evaluation code runs on the CPU: move the model there and back (the parameters stay the
    same objects, so the optimizer keeps them)."""
    model.cpu()
    try:
        yield
    finally:
        model.to(device)


def _one_epoch(ctx: LoopContext, hooks: Iterable[Hook]) -> tuple[float, int]:
    """One pass over the task's batches (in random order), one optimizer step per
    `train.grad_accum` batches; returns the mean loss of the batches that went into a step and
    the number of batches that did not (a non-finite loss, or non-finite gradients in their
    group, under `on_nan: skip_step`). A group with a skipped batch still divides each loss by
    the full group size: its step is that much smaller."""
    cfg, task = ctx.config.train, ctx.task
    task.train()  # the model inside it too
    n = len(task)
    total, used, skipped, group = 0.0, 0, 0, []  # group: finite losses since the last step
    bar = tqdm(task.batches(), total=n, desc=f"epoch {ctx.epoch + 1}", leave=False,
               disable=None)
    ctx.optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        first = i - i % cfg.grad_accum  # the group's first batch
        size = min(cfg.grad_accum, n - first)
        where = f"epoch {ctx.epoch + 1}, step {ctx.step + 1} (batch {i + 1} of {n})"
        value = _backward(ctx, batch, size, where)
        if value is None:
            skipped += 1
        else:
            group.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
        if i >= n:
            raise RuntimeError(f"the training task yielded more batches than its len(), {n}")
        if i + 1 < first + size or not group:
            continue  # the group goes on, or none of its batches had a finite loss
        if _step(ctx, hooks, where):
            total, used = total + sum(group), used + len(group)
        else:
            skipped += len(group)
        group = []
    if used + skipped != n:
        raise RuntimeError(f"the training task yielded {used + skipped} batches, not its "
                           f"len() of {n}: the schedule and the gradient groups count on it")
    if skipped and skipped == n:
        raise Diverged(f"training loss was not finite at any step of epoch {ctx.epoch + 1}: "
                       "the run diverged (lower train.lr)")
    return total / max(used, 1), skipped


def _backward(ctx: LoopContext, batch: tuple, size: int, where: str) -> float | None:
    """Forward one batch and add its gradients (of loss / `size`); its loss, or None for a
    non-finite loss skipped under `on_nan: skip_step` (`stop` raises `Diverged`)."""
    batch = tuple(t.to(ctx.device) for t in batch)
    bf16 = ctx.config.train.precision == "bf16"
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = ctx.task(batch)
    value = loss.item()
    if not math.isfinite(value):
        _non_finite(f"training loss is {value}", where, ctx.config.train.on_nan)
        return None
    (loss / size).backward()
    return value


def _step(ctx: LoopContext, hooks: Iterable[Hook], where: str) -> bool:
    """One optimizer and LR schedule step on the gradients gathered; False (no step) when they
    are not finite under `on_nan: skip_step`: a step would poison the weights."""
    optimizer = ctx.optimizer
    if ctx.config.train.on_nan == "skip_step" and not _finite_gradients(optimizer):
        _non_finite("gradients are not finite", where, "skip_step")
        optimizer.zero_grad(set_to_none=True)
        return False
    for hook in hooks:
        hook.after_backward(ctx)
    optimizer.step()
    ctx.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ctx.step += 1
    for hook in hooks:
        hook.after_step(ctx)
    return True


def _non_finite(problem: str, where: str, on_nan: str) -> None:
    if on_nan == "stop":
        raise Diverged(f"{problem} at {where}: the run diverged (lower train.lr, or "
                       "set train.on_nan=skip_step)")
    log.warning("%s at %s: skipped", problem, where)


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _new_run_dir(config: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    write_text(run_dir / "config.yaml", text)


