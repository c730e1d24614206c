"""Where the loop's processes stand: one process (`Local`), or torchrun's ranks with torchrec's
sharded tables (`Sharded`, when the config's `distributed.enabled`).

The loop (`recsys.train.loop.fit`) is the same for both; it asks its cluster to build the task's
optimizer, to keep every rank on one random stream, to average a number over ranks, to hand it
the full model to evaluate (rank 0 only), and to write and read `checkpoint/last`. Under
`Sharded`, rank 0 alone writes the run dir's files and MLflow; `checkpoint/last` is a
`torch.distributed.checkpoint` of every rank's shards (it loads at another world size) plus rank
0's `state.json`, and `checkpoint/best` is the gathered model in the usual single-file form, so
everything downstream (export, serving) reads it unchanged.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recsys.config import Config, ConfigError
from recsys.runtime import distributed as ranks
from recsys.runtime.checkpoint import (
    CheckpointError,
    fresh_dir,
    read_checkpoint,
    restore_state,
    restore_training,
    save_checkpoint,
    swap_in,
    write_state,
)
from recsys.runtime.memory import peak_rss_bytes
from recsys.runtime.sharding import (
    Sharding,
    gather_into,
    load_sharded,
    local_table_bytes,
    plan_summary,
    save_sharded,
    shard,
)
from recsys.tasks.hooks import LoopContext
from recsys.train.optimizer import build_optimizer, parameter_groups

log = logging.getLogger(__name__)
SHARDS = "shards"  # the DCP folder inside a sharded checkpoint


class PeerLost(RuntimeError):
    """A collective failed: another rank died, hung past `distributed.timeout_s`, or raised."""


class Local:
    """One process, the plain model: every call does what a single run needs."""

    is_main = True
    world = 1

    def prepare(self, task: nn.Module, model: nn.Module, config: Config):
        """(what the loop calls for a batch's loss, the optimizer); None: nothing to train."""
        return task, build_optimizer(model, config.train)

    def main_first(self, load: Callable[[], Any]) -> Any:
        return load()

    def start_epoch(self) -> None:
        pass

    def mean(self, value: float) -> float:
        return value

    def share(self, value: Any) -> Any:
        return value

    def full_model(self, ctx: LoopContext) -> nn.Module:
        return ctx.model

    def report(self) -> dict:
        return {}

    def save_last(self, path: Path, ctx: LoopContext, state: dict, hooks: dict) -> None:
        save_checkpoint(path, ctx.model, ctx.optimizer, state, ctx.config, ctx.scheduler, hooks)

    def restore_last(self, path: Path, ctx: LoopContext, hooks: dict) -> dict:
        return restore_training(path, ctx.model, ctx.optimizer, ctx.scheduler, hooks)


class ShardedTask:
    """The task as the loop drives it, its forward through DistributedModelParallel."""

    def __init__(self, wrapped: nn.Module, task: nn.Module):
        self.wrapped, self.task = wrapped, task

    def __len__(self) -> int:
        return len(self.task)

    def batches(self):
        return self.task.batches()

    def train(self) -> None:
        self.wrapped.train()

    def __call__(self, batch):
        return self.wrapped(batch)


class Sharded:
    """torchrun's ranks (any number, 1 included) training one task whose tables torchrec shards.

    `replica` builds a plain model like the one trained: rank 0 loads the gathered weights into
    it to evaluate and to write `checkpoint/best`.
    """

    def __init__(self, worker: ranks.Worker, replica: Callable[[], nn.Module]):
        self.worker, self.replica = worker, replica
        self.is_main, self.world = worker.is_main, worker.world
        self.wrapped, self.plan = None, {}
        self._replica = None

    def prepare(self, task: nn.Module, model: nn.Module, config: Config):
        if not hasattr(task, "shard_rows"):
            raise ConfigError(f"config key 'distributed.enabled': the {config.model.name} task "
                              "cannot split its batches over ranks (two_tower's can)")
        if config.sparse.enabled:
            raise ConfigError("config key 'distributed.enabled': dynamic sparse training "
                              "(sparse.params) does not run on sharded tables yet")
        task.shard_rows(self.worker.rank, self.world)
        cfg = config.distributed
        how = Sharding(memory_per_rank=int(cfg.memory_per_rank_gb * 2**30),
                       sharding_types=cfg.sharding_types, optimizer=cfg.embedding_optimizer,
                       lr=config.train.lr, device=_device(config, self.worker))
        train = config.train

        def dense(params: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
            named = [(name.removeprefix("model."), p) for name, p in params.items()]
            return torch.optim.AdamW(parameter_groups(named, train.lr, train.lr_groups),
                                     lr=train.lr, weight_decay=train.weight_decay)

        self.wrapped, optimizer, plan = shard(task, how, dense)
        self.plan = plan_summary(plan)
        if self.is_main:
            log.info("torchrec plan on %d rank(s): %s", self.world, self.plan)
        return ShardedTask(self.wrapped, task), optimizer

    def main_first(self, load: Callable[[], Any]) -> Any:
        """`load()` on rank 0, then on the others (which then find what rank 0 wrote, such as
        a prepared dataset, instead of writing it at the same time)."""
        if self.is_main:
            value = load()
            ranks.barrier()
            return value
        ranks.barrier()
        return load()

    def start_epoch(self) -> None:
        """Every rank continues from rank 0's random stream: the same batch order and
        negatives everywhere, whatever each rank's dropout drew."""
        torch.set_rng_state(ranks.share(torch.get_rng_state()))

    def mean(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total) / self.world

    def share(self, value: Any) -> Any:
        return ranks.share(value)

    def full_model(self, ctx: LoopContext) -> nn.Module | None:
        """Rank 0: a plain model holding the gathered weights; None elsewhere. A collective."""
        if self.is_main and self._replica is None:
            with torch.random.fork_rng(devices=[]):  # building it must not move the stream:
                self._replica = self.replica()  # a resumed run builds it at another epoch
        target = self._replica.state_dict() if self.is_main else None
        gather_into(self.wrapped, target, strip="model.")  # the task holds the model as `model`
        return self._replica

    def report(self) -> dict:
        """{"distributed": world size, plan, per-rank table bytes and peak RSS} (a collective;
        rank 0's peak includes the gathered model it evaluates)."""
        mine = (local_table_bytes(self.wrapped) if self.wrapped is not None else 0,
                peak_rss_bytes())
        everyone = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return {"distributed": {"world": self.world, "plan": self.plan,
                                "table_bytes": [t for t, _ in everyone],
                                "peak_rss_bytes": [r for _, r in everyone]}}

    def save_last(self, path: Path, ctx: LoopContext, state: dict, hooks: dict) -> None:
        tmp = fresh_dir(path) if self.is_main else path.with_name(path.name + ".tmp")
        ranks.barrier()  # the empty folder exists before anyone writes into it
        save_sharded(tmp / SHARDS, self.wrapped, ctx.optimizer)
        ranks.barrier()
        if self.is_main:
            write_state(tmp, state, ctx.config, None, ctx.scheduler, hooks)
            swap_in(tmp, path)
        ranks.barrier()

    def restore_last(self, path: Path, ctx: LoopContext, hooks: dict) -> dict:
        if not (path / SHARDS).is_dir():
            raise CheckpointError(f"{path}: a single-process checkpoint; distributed.enabled "
                                  "resumes only sharded ones (resume with it off)")
        load_sharded(path / SHARDS, self.wrapped, ctx.optimizer)
        state = restore_state(path, None, None, hooks)
        _resume_schedule(ctx.scheduler, read_checkpoint(path)["scheduler"]["last_epoch"])
        return state


@contextmanager
def cluster_for(config: Config, replica: Callable[[], nn.Module]) -> Iterator[Local | Sharded]:
    """`Local` unless `distributed.enabled`; then torchrun's process group (a 1-process one
    without torchrun), joined for the block, with collectives timing out after
    `distributed.timeout_s` and their failures raised as `PeerLost`."""
    worker = ranks.worker_from_env()
    if not config.distributed.enabled:
        if worker.world > 1:
            raise ConfigError(f"started as rank {worker.rank} of {worker.world} (torchrun), but "
                              "distributed.enabled is false: set it, or run one process")
        yield Local()
        return
    _quiet(worker)
    timeout = datetime.timedelta(seconds=config.distributed.timeout_s)
    joined = not dist.is_initialized()
    if joined:
        cuda = config.train.device == "cuda"
        if cuda:
            torch.cuda.set_device(_device(config, worker))
        backend = "nccl" if cuda else "gloo"
        if worker.world == 1:  # no torchrun: a group of one, no rendezvous needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            dist.init_process_group(backend, rank=worker.rank, world_size=worker.world,
                                    timeout=timeout)
    try:
        yield Sharded(worker, replica)
        if joined:  # as in `runtime.distributed.process_group`: no gloo work left for exit
            dist.barrier()
    except RuntimeError as err:
        if isinstance(err, PeerLost) or not _collective_failure(err):
            raise
        raise PeerLost(f"rank {worker.rank} of {worker.world}: a collective failed, so another "
                       f"rank died, hung for over distributed.timeout_s "
                       f"({config.distributed.timeout_s} s) or raised (see its log): "
                       f"{' '.join(str(err).split())[:300]}") from err
    finally:
        if joined:
            dist.destroy_process_group()


def _resume_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> None:
    """Put the LR schedule at `steps` optimizer steps. Its saved state is not loaded: it holds
    one entry per parameter group, and the fused optimizer has a group per table shard this rank
    holds, so their number changes with the world size."""
    scheduler.last_epoch = steps
    rates = [base * factor(steps) for base, factor in zip(scheduler.base_lrs,
                                                          scheduler.lr_lambdas, strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates


def _quiet(worker: ranks.Worker) -> None:
    """torchrec's planner logs its statistics tables at INFO, and warns about its own
    heuristics on every plan; ranks other than 0 repeat rank 0's progress lines."""
    logging.getLogger("torchrec").setLevel(logging.WARNING)
    # it warns that a Topology built directly (as its docs show) may not match the hardware
    logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchrec")
    if not worker.is_main:
        logging.getLogger("recsys").setLevel(logging.WARNING)


def _device(config: Config, worker: ranks.Worker) -> torch.device:
    """This rank's GPU (by local rank) under `train.device: cuda`, else the CPU."""
    return worker.device if config.train.device == "cuda" else torch.device("cpu")


def _collective_failure(err: RuntimeError) -> bool:
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout"))
