"""The `sparse` section: dynamic sparse training (DSL, Wang et al. WSDM'24; RigL, Evci et al.
2020) of any model's parameters, by `recsys.train.sparsity.DynamicSparsity`.

The parameters whose names match `params` (fnmatch patterns over the model's
`named_parameters()`, e.g. `item_emb.weight`, `*.in_proj_weight`) keep only `density` of their
weights active. Every `update_every` optimizer steps the smallest-magnitude share of each
tensor's active weights is pruned and as many inactive ones regrown; the share decays by cosine
from `prune_start` to `prune_end`, and the masks stay fixed after `stop_at` of training.
`relative_density` makes some tensors denser than others under the same total, for a model
whose groups differ in what sparsity costs them (the two-tower loses little with sparse tables
and much with sparse layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Interval

from recsys.config.ranges import Count, Positive, Share, _Invalid

Density = Annotated[float, Interval(gt=0, le=1)]


@dataclass(frozen=True)
class SparseConfig:
    params: tuple[str, ...] = ()  # fnmatch patterns of parameter names; () = dense training
    density: Density = 1.0  # share of the covered weights kept active
    distribution: Literal["uniform", "erk"] = "uniform"  # every tensor at `density` (times
    # ^ its relative_density factor), or Erdos-Renyi-Kernel: density per tensor ~ (rows + cols)
    # ^ / (rows * cols), same total
    relative_density: dict[str, Positive] = field(default_factory=dict)  # pattern -> factor:
    # ^ the covered tensors a pattern matches (the first that does) are that many times denser
    # ^ than the others, the scale still chosen so the active total is `density` (so one
    # ^ density d maps to every group; the two-tower's tables at 0.2: d 0.2 -> 0.086 and 0.432)
    mode: Literal["dynamic", "static"] = "dynamic"  # prune and regrow, or keep the first masks
    growth: Literal["gradient", "accumulated", "random"] = "gradient"  # regrow by |gradient|
    # ^ of the step (RigL, DSL), by |sum of the gradients since the last update| or uniformly
    # ^ at random (SET)
    protect_regrown: bool = False  # weights regrown at one update cannot be pruned at the
    # ^ next: they start at zero, so magnitude pruning would take them back before they grew
    init: Literal["random", "magnitude"] = "random"  # first masks: uniformly at random, or the
    # ^ largest-magnitude weights of the start (with `init_from`: pruning a trained model)
    init_from: str | None = None  # run dir whose best weights the model starts from
    update_every: Count = 100  # optimizer steps between prune / regrow updates (Delta T)
    prune_start: Share = 0.5  # share of a tensor's active weights replaced at the first update
    prune_end: Share = 0.005  # ... and at `stop_at` (cosine in between)
    stop_at: Annotated[float, Interval(gt=0, le=1)] = 0.75  # share of training steps after
    # ^ which the masks stay fixed
    seed: int = 0  # random masks and random regrowth
    dense_baseline: tuple[str, ...] = ()  # KEY=VALUE overrides of the dense model this config
    # ^ is measured against (benchmarks/sparse.py's dense runs), where the sparse model is tuned
    # ^ apart from it (e.g. less dropout): the comparison keeps the dense model at its own best

    def __post_init__(self):
        if self.prune_end > self.prune_start:
            raise _Invalid("prune_end", f"{self.prune_end} must not exceed prune_start "
                                        f"{self.prune_start}")
        bad = [item for item in self.dense_baseline if "=" not in item]
        if bad:
            raise _Invalid("dense_baseline", f"{bad[0]!r} is not KEY=VALUE")
        if self.init_from is not None and self.init != "magnitude":
            raise _Invalid("init_from", "starting from trained weights needs init: magnitude "
                                        "(random masks would throw the training away)")

    @property
    def enabled(self) -> bool:
        return bool(self.params)
