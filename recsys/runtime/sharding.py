"""torchrec sharding of a training task: plan, wrap, optimize, gather, checkpoint.

`shard` lets torchrec's planner place every `EmbeddingBagCollection` table of a module over the
process group's ranks (from the tables' sizes and a per-rank memory budget), wraps the module in
`DistributedModelParallel` (the dense parts under DDP) and gives back the sharded module and the
optimizer that trains it: the tables' fused fbgemm optimizer combined with a dense one.

Nothing here is home-made: placement, input distribution and the gradient exchange are
torchrec's; checkpoints are `torch.distributed.checkpoint` (DCP), which writes every rank's
shards and loads them back at another world size (DCP reshards on load).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import (
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

FUSED = {"adagrad": EmbOptimType.EXACT_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD,
         "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adam": EmbOptimType.ADAM}
CPU_FUSED = ("adagrad", "rowwise_adagrad", "sgd")  # fbgemm's CPU kernels
ROW_SHARDINGS = ("row_wise", "table_row_wise")  # need reduce_scatter, which gloo lacks
MIN_COLUMNS = 32  # narrowest column shard; torchrec's default (128) never splits a 64-wide table
DEFAULT_SHARDINGS = {"cpu": ("table_wise", "column_wise"),
                     "cuda": ("table_wise", "column_wise", "row_wise")}


class ShardingError(ValueError):
    """A sharding request this backend or the memory budget cannot meet."""


@dataclass(frozen=True)
class Sharding:
    """How the tables are placed and trained."""

    memory_per_rank: int  # bytes the planner may place on one rank
    sharding_types: tuple[str, ...]  # torchrec ShardingType values it may choose; () = default
    optimizer: str  # a key of FUSED
    lr: float
    device: torch.device


def shard(module: nn.Module, how: Sharding,
          dense_optimizer: Callable[[dict[str, nn.Parameter]], torch.optim.Optimizer]
          ) -> tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """`module` (with its initial weights) sharded over the default process group, its
    optimizer, and the plan. The tables keep the weights `module` was built with (torchrec
    initialises sharded tables anew, so they are copied in); `dense_optimizer` gets the
    parameters torchrec leaves to it, by name."""
    _check_backend(how)
    initial = _table_weights(module)
    sharder = EmbeddingBagCollectionSharder(fused_params={
        "optimizer": FUSED[how.optimizer], "learning_rate": how.lr, "eps": 1e-8})
    group = dist.GroupMember.WORLD
    world = dist.get_world_size(group)
    cpu = how.device.type == "cpu"
    topology = Topology(world_size=world, compute_device=how.device.type,
                        local_world_size=_local_world(world),
                        ddr_cap=how.memory_per_rank if cpu else None,
                        hbm_cap=None if cpu else how.memory_per_rank)
    types = list(how.sharding_types or DEFAULT_SHARDINGS[how.device.type])
    constraints = {config.name: ParameterConstraints(sharding_types=types,
                                                     min_partition=MIN_COLUMNS)
                   for config in _table_configs(module)}
    try:
        plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints
                                        ).collective_plan(module, [sharder], group)
    except Exception as err:  # torchrec's PlannerError and its kin
        raise ShardingError(f"torchrec's planner found no placement of the tables on {world} "
                            f"rank(s) with {how.memory_per_rank / 2**30:.2f} GiB each "
                            f"(distributed.memory_per_rank_gb): {_short(err)}") from None
    stream = torch.get_rng_state()  # torchrec draws fresh tables, as many as a rank holds:
    wrapped = DistributedModelParallel(
        module, env=ShardingEnv.from_process_group(group), device=how.device, plan=plan,
        sharders=[sharder],
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False,
                                                         find_unused_parameters=True))
    torch.set_rng_state(stream)  # ... the stream goes on as if unsharded, on every rank
    copy_into_shards(wrapped, initial)
    named = dict(in_backward_optimizer_filter(wrapped.named_parameters()))
    dense = KeyedOptimizerWrapper(named, lambda _: dense_optimizer(named))
    optimizer = CombinedOptimizer([("fused", wrapped.fused_optimizer), ("dense", dense)])
    return wrapped, optimizer, plan


def _check_backend(how: Sharding) -> None:
    if how.device.type == "cpu":
        if how.optimizer not in CPU_FUSED:
            raise ShardingError(f"distributed.embedding_optimizer {how.optimizer!r} has no CPU "
                                f"kernel in fbgemm: use one of {', '.join(CPU_FUSED)}")
        rows = sorted(set(how.sharding_types) & set(ROW_SHARDINGS))
        if rows:
            raise ShardingError(f"distributed.sharding_types {rows}: row-wise sharding needs "
                                "reduce_scatter, which gloo (CPU) lacks (pytorch/torchrec#1252)")


def _local_world(world: int) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def _table_configs(module: nn.Module) -> list:
    return [config for m in module.modules() if isinstance(m, EmbeddingBagCollection)
            for config in m.embedding_bag_configs()]


def _table_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tables' weights by state-dict name (the tensors themselves: sharding replaces the
    modules, and these references keep the initial values for `copy_into_shards`)."""
    return {f"{prefix}.{name}": tensor.detach()
            for prefix, m in module.named_modules() if isinstance(m, EmbeddingBagCollection)
            for name, tensor in m.state_dict().items()}


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:400]


def copy_into_shards(wrapped: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy each full tensor of `full` into this rank's shards of it (and dense ones whole)."""
    with torch.no_grad():
        for name, value in wrapped.state_dict().items():
            if name not in full:
                continue
            if hasattr(value, "local_shards"):
                for piece in value.local_shards():
                    (row, col), (rows, cols) = (piece.metadata.shard_offsets,
                                                piece.metadata.shard_sizes)
                    piece.tensor.copy_(full[name][row:row + rows, col:col + cols])
            else:
                value.copy_(full[name])


def gather_into(wrapped: nn.Module, target: dict[str, torch.Tensor] | None,
                strip: str = "") -> None:
    """Assemble every tensor of `wrapped`'s state, tables included, into `target` (rank 0: the
    state_dict of a plain model like it, keys less `strip`; None on the other ranks), in place,
    so no second full copy is made. Every rank must call it (the gather is a collective)."""
    with torch.no_grad():
        for name, value in wrapped.state_dict().items():
            out = None if target is None else target[name.removeprefix(strip)]
            if hasattr(value, "local_shards"):
                value.gather(dst=0, out=out)
            elif out is not None:
                out.copy_(value)


def local_table_bytes(wrapped: nn.Module) -> int:
    """Bytes of the table shards this rank holds (weights only, not optimizer state)."""
    total = 0
    for value in wrapped.state_dict().values():
        if hasattr(value, "local_shards"):
            total += sum(p.tensor.numel() * p.tensor.element_size() for p in value.local_shards())
    return total


def plan_summary(plan: ShardingPlan) -> dict[str, dict]:
    """{table: {"type", "ranks", "shards": [[rows, cols], ...]}}: what the planner chose."""
    summary = {}
    for module_plan in plan.plan.values():
        for table, option in module_plan.items():
            shards = option.sharding_spec.shards if option.sharding_spec else []
            summary[table] = {"type": option.sharding_type, "ranks": option.ranks,
                              "shards": [list(s.shard_sizes) for s in shards]}
    return summary


def save_sharded(folder: Path, wrapped: nn.Module, optimizer: CombinedOptimizer) -> None:
    """Every rank writes its shards of the weights and optimizer state under `folder` (DCP)."""
    dcp.save({"model": wrapped.state_dict(), "optim": optimizer.state_dict()},
             checkpoint_id=str(folder))


def load_sharded(folder: Path, wrapped: nn.Module, optimizer: CombinedOptimizer) -> None:
    """Load a `save_sharded` checkpoint, written at any world size, into this rank's shards.
    A checkpoint missing one of its files is refused before anything is read."""
    check_complete(folder)
    optimizer.init_state()  # the state tensors the checkpoint's values load into
    state = {"model": wrapped.state_dict(), "optim": optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(folder))
    wrapped.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])


def check_complete(folder: Path) -> None:
    """Raise ShardingError unless every file the DCP metadata names is there, whole."""
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except (OSError, ValueError, EOFError) as err:
        raise ShardingError(f"{folder}: not a readable sharded checkpoint ({_short(err)})"
                            ) from None
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0),
                                         info.offset + info.length)
    missing = sorted(f for f in needed if not (folder / f).is_file())
    short = sorted(f for f, size in needed.items()
                   if f not in missing and (folder / f).stat().st_size < size)
    if missing or short:
        raise ShardingError(f"{folder}: sharded checkpoint incomplete, refusing to resume "
                            f"(missing {missing or 'none'}, truncated {short or 'none'}; "
                            f"every rank's files must be on the shared run dir)")

