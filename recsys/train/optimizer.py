"""The optimizer and its learning-rate schedule, built from the `train` section in one place.

AdamW over the model's trainable parameters; `train.lr_groups` gives the parameters under a name
prefix their own rate (a fine-tuned text encoder beside freshly initialised towers).
The schedule (torch's `LambdaLR`) scales every group's rate by a factor
of the optimizer step: a linear warmup over `train.warmup_steps` steps, then constant, or a linear
or cosine decay that reaches 0 once the last optimizer step of `train.epochs` epochs is taken.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from recsys.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW | None:
    """AdamW for `model`, or None when it has nothing to train (the popularity baseline)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return None
    return torch.optim.AdamW(parameter_groups(named, cfg.lr, cfg.lr_groups), lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


def parameter_groups(named: list[tuple[str, nn.Parameter]], lr: float,
                     rates: dict[str, float]) -> list[dict]:
    """AdamW groups: first the parameters no prefix of `rates` names, at `lr`, then one group
    per prefix in `rates` order (a parameter under two prefixes goes to the longer one)."""
    def prefix_of(name: str) -> str | None:
        matching = [p for p in rates if name == p or name.startswith(p + ".")]
        return max(matching, key=len, default=None)

    groups: dict[str | None, list] = {None: [], **{prefix: [] for prefix in rates}}
    for name, parameter in named:
        groups[prefix_of(name)].append(parameter)
    for prefix, members in groups.items():
        if prefix is not None and not members:
            tops = sorted({name.split(".")[0] for name, _ in named})
            raise ValueError(f"config key 'train.lr_groups': {prefix!r} names no trainable "
                             f"parameter of the model (its names start with {', '.join(tops)})")
    return [{"params": members, "lr": lr if prefix is None else rates[prefix]}
            for prefix, members in groups.items() if prefix is not None or members]


def steps_per_epoch(batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of `batches` batches: one per `grad_accum` batches, and one
    for the last, partial group."""
    return -(-batches // grad_accum)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   epoch_steps: int) -> LambdaLR:
    """The LR schedule over `cfg.epochs * epoch_steps` optimizer steps; step it after each."""
    total, warmup, decay = cfg.epochs * epoch_steps, cfg.warmup_steps, cfg.schedule

    def factor(step: int) -> float:  # `step`: optimizer steps taken before the one it scales
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)  # a plain function: its state_dict is JSON-able
