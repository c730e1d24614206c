import math

import pytest
import torch
from torch import nn

from recsys.config import TrainConfig
from recsys.train.optimizer import build_optimizer, build_schedule, steps_per_epoch


def _rates(schedule: str, warmup: int, epochs: int = 2, epoch_steps: int = 5, lr: float = 0.1):
    """The LR each optimizer step of the run uses, and the LR left after the last one."""
    cfg = TrainConfig(lr=lr, epochs=epochs, schedule=schedule, warmup_steps=warmup)
    optimizer = build_optimizer(nn.Linear(2, 1), cfg)
    scheduler = build_schedule(optimizer, cfg, epoch_steps)
    used = []
    for _ in range(epochs * epoch_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used, optimizer.param_groups[0]["lr"]


def test_warmup_then_linear_decay_reaches_zero_after_the_last_step():
    used, after = _rates("linear", warmup=3)  # 10 steps: 3 of warmup, 7 of decay
    assert used[:4] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    assert used[3:] == pytest.approx([0.1 * (7 - k) / 7 for k in range(7)])
    assert used[-1] == pytest.approx(0.1 / 7)  # the last step still moves the weights
    assert after == 0.0


def test_cosine_decay_halves_at_mid_run_and_ends_at_zero():
    used, after = _rates("cosine", warmup=0, epochs=4, epoch_steps=5)  # 20 steps
    assert used[0] == pytest.approx(0.1)
    assert used[10] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(used, used[1:], strict=False))
    assert used[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 19 / 20)))
    assert used[-1] < 0.001 and after == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_keeps_the_configured_rate_exactly():
    used, after = _rates("constant", warmup=0, lr=3e-4)
    assert set(used) == {3e-4} and after == 3e-4  # fp32 runs as before schedules existed
    used, _ = _rates("constant", warmup=4, lr=3e-4)
    assert used[:5] == pytest.approx([0.75e-4, 1.5e-4, 2.25e-4, 3e-4, 3e-4]) and used[-1] == 3e-4


def test_the_optimizer_takes_a_models_own_parameter_groups_and_none_without_parameters():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def parameter_groups(self, lr):
            return [{"params": self.a.parameters(), "lr": lr},
                    {"params": self.b.parameters(), "lr": lr / 10}]

    cfg = TrainConfig(lr=0.1, weight_decay=0.01)
    optimizer = build_optimizer(Grouped(), cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert build_optimizer(frozen, cfg) is None


def test_an_epochs_last_partial_group_is_one_more_step():
    assert steps_per_epoch(8, 1) == 8
    assert steps_per_epoch(8, 2) == 4
    assert steps_per_epoch(9, 2) == 5
