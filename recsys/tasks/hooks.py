"""Hooks: code that runs inside the one training loop at its step and epoch boundaries.

A hook subclasses `Hook` and overrides the events it needs (the others do nothing):

    on_epoch_start(ctx)   before the epoch's first batch
    after_backward(ctx)   the step's gradients are complete (all its `train.grad_accum`
                          batches went backward, and found finite under `on_nan: skip_step`),
                          just before `optimizer.step()`: the place to mask or read gradients
    after_step(ctx)       after `optimizer.step()` and the LR schedule's step; `ctx.step` counts
                          it already
    on_epoch_end(ctx)     after the epoch's last step, before validation and the checkpoint

`ctx` is the `LoopContext`: the live model, task, optimizer and schedule and where the loop
stands. What a hook must carry over a resume it returns from `state_dict()` (a dict whose leaves
are JSON values or tensors, nested dicts with string keys allowed; tensors must be finite, as a
checkpoint with NaN / inf tensors is refused); `checkpoint/last` stores it under the hook's `name`
after every epoch and hands it back to `load_state_dict` when the run resumes, so a resumed run
goes on exactly as an uninterrupted one; its tensors come back on the CPU (move them to
`ctx.device` where they meet the model's). Raising from a hook stops the run (the last epoch's
checkpoint stays, ready to resume).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recsys.config import Config


@dataclass
class LoopContext:
    """What a hook sees; the loop updates `epoch` and `step` as it goes."""

    model: nn.Module
    task: nn.Module  # holds the model; `task(batch)` is the loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: Config
    device: torch.device
    epoch: int = 0  # 0-based index of the epoch running (at on_epoch_end: just trained)
    step: int = 0  # optimizer steps taken in the run so far


class Hook:
    """Base class: every event is a no-op; `name` keys the hook's state in checkpoints."""

    name: str = ""  # stable across runs of the code; "" -> the class name

    def on_epoch_start(self, ctx: LoopContext) -> None:
        pass

    def after_backward(self, ctx: LoopContext) -> None:
        pass

    def after_step(self, ctx: LoopContext) -> None:
        pass

    def on_epoch_end(self, ctx: LoopContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def by_name(hooks: Iterable[Hook]) -> dict[str, Hook]:
    """The hooks keyed by their checkpoint name, in calling order; two with one name are refused
    (their states would overwrite each other)."""
    named: dict[str, Hook] = {}
    for hook in hooks:
        if not isinstance(hook, Hook):
            raise TypeError(f"{hook!r} is not a recsys.tasks.hooks.Hook")
        name = hook.name or type(hook).__name__
        if name in named:
            raise ValueError(f"two training hooks are named {name!r}: give each its own `name` "
                             "(it keys the hook's state in checkpoints)")
        named[name] = hook
    return named
