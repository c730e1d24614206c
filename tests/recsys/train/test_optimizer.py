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


def test_lr_groups_give_named_parameters_their_own_rate_and_none_without_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    cfg = TrainConfig(lr=0.1, weight_decay=0.01, lr_groups={"1": 0.01, "1.1": 0.001})
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01, 0.001]
    members = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
    assert members == [{id(p) for p in m.parameters()} for m in (model[0], model[1][0],
                                                                  model[1][1])]  # longest wins
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    plain = build_optimizer(model, TrainConfig(lr=0.1))
    assert [g["lr"] for g in plain.param_groups] == [0.1]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert build_optimizer(frozen, cfg) is None


def test_an_lr_group_that_names_no_parameter_is_refused_naming_the_key():
    cfg = TrainConfig(lr_groups={"model.item_tower.text_encoder": 5e-5})
    with pytest.raises(ValueError, match=r"train.lr_groups.*'model.item_tower.text_encoder' "
                                         r"names no trainable parameter.*start with 0, 1"):
        build_optimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), cfg)


def test_an_epochs_last_partial_group_is_one_more_step():
    assert steps_per_epoch(8, 1) == 8
    assert steps_per_epoch(8, 2) == 4
    assert steps_per_epoch(9, 2) == 5
