"""The `distributed` section: training under torchrun with torchrec's sharded embedding tables
(`recsys.train.cluster`).

With `enabled`, `fit` wraps the training task in torchrec's DistributedModelParallel at whatever
world size torchrun gives it (1 included, so a 1-process run and a resume on fewer processes
take the same path): the planner places every embedding table from its size and
`memory_per_rank_gb`, the tables train with torchrec's fused `embedding_optimizer`, the dense
parts with AdamW under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Gt

from recsys.config.ranges import Count

ShardingType = Literal["table_wise", "column_wise", "table_column_wise", "row_wise",
                       "table_row_wise", "data_parallel"]


@dataclass(frozen=True)
class DistributedConfig:
    enabled: bool = False  # train through torchrec's DistributedModelParallel (any world size)
    memory_per_rank_gb: Annotated[float, Gt(0)] = 8.0  # what the planner may place on one rank
    # ^ (host memory on CPU, GPU memory under CUDA): tables plus their optimizer state
    sharding_types: tuple[ShardingType, ...] = ()  # what the planner may choose; () = table_wise
    # ^ and column_wise, plus row_wise under nccl (gloo has no reduce_scatter, torchrec#1252)
    embedding_optimizer: Literal["adagrad", "rowwise_adagrad", "sgd", "adam"] = "adagrad"
    # ^ fused into the tables' backward (fbgemm); on CPU only adagrad, rowwise_adagrad and sgd.
    # rowwise_adagrad keeps one accumulator per row shard: column-wise shards change it
    timeout_s: Count = 300  # a collective waits this long for a peer (a dead or hung rank)
