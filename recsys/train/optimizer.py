"""The optimizer and its learning-rate schedule, built from the `train` section in one place.

AdamW over the model's trainable parameters, or over the model's own `parameter_groups(lr)` where
it needs rates per group. The schedule (torch's `LambdaLR`) scales every group's rate by a factor
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
    trainable = (model.parameter_groups(cfg.lr) if hasattr(model, "parameter_groups")
                 else [p for p in model.parameters() if p.requires_grad])
    if not trainable:
        return None
    return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
