"""torch.distributed for jobs launched by torchrun: who am I, set up, wait for all, tear down.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each worker's
environment. Without them (a plain `python -m recsys.cli ...`) everything here is a no-op and the
job runs as rank 0 of 1. The backend is nccl when CUDA is available, gloo otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Worker:
    rank: int  # this process, 0 .. world - 1 (across all nodes)
    world: int  # processes in the job
    local_rank: int  # this process on its node; picks the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The GPU of this local rank when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def worker_from_env() -> Worker:
    """Rank, world size and local rank from torchrun's environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return Worker(rank, world, local)


@contextmanager
def process_group() -> Iterator[Worker]:
    """Join torchrun's process group for the block (when WORLD_SIZE > 1) and leave it after."""
    worker = worker_from_env()
    if worker.world == 1 or dist.is_initialized():  # single process, or the caller owns the group
        yield worker
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(worker.device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=worker.rank,
                            world_size=worker.world, device_id=worker.device if cuda else None)
    try:
        yield worker
        dist.barrier()  # gloo's threads free the last collectives' tensors (taking the GIL)
    finally:  # now, not at interpreter exit, where that aborts the process
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process of the group gets here (nothing to wait for when alone)."""
    if dist.is_initialized():
        dist.barrier()


def share(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects; returned as is when alone)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
