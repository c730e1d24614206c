"""The loop's step mechanics on a toy regression task: gradient accumulation, the step counter,
hook calls, a non-finite batch inside a group."""

import pytest
import torch
from torch import nn

from recsys.config import config_from_dict
from recsys.tasks.hooks import Hook, LoopContext, by_name
from recsys.train.loop import _one_epoch


class Regression(nn.Module):
    """Mean squared error of a linear model over fixed batches, in order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, nan_call: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Linear(x.shape[1], 1)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.calls, self.nan_call = 0, nan_call  # the loss of call `nan_call` (1-based) is NaN
        self.autocast = []  # (enabled, dtype) at each forward

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def batches(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]

    def forward(self, batch) -> torch.Tensor:
        x, y = batch
        self.calls += 1
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        loss = (self.model(x).squeeze(1) - y).square().mean()
        return loss * float("nan") if self.calls == self.nan_call else loss


class Counter(Hook):
    def __init__(self):
        self.events = []

    def after_backward(self, ctx):
        self.events.append(("backward", ctx.step, ctx.task.model.weight.grad.clone()))

    def after_step(self, ctx):
        self.events.append(("step", ctx.step, None))


def _context(task: Regression, grad_accum: int, on_nan: str = "stop",
             precision: str = "fp32") -> LoopContext:
    config = config_from_dict({"train": {"grad_accum": grad_accum, "on_nan": on_nan,
                                         "precision": precision}})
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return LoopContext(task.model, task, optimizer, scheduler, config, torch.device("cpu"))


def _data(rows: int = 10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, 3, generator=g), torch.randn(rows, generator=g)


def test_two_accumulated_batches_make_the_same_update_as_one_batch_twice_the_size():
    x, y = _data(10)  # batch 4 x 2: groups of rows 0-7 and 8-9; batch 8: the same two groups
    small, large = Regression(x, y, 4), Regression(x, y, 8)
    accumulated, single = _context(small, grad_accum=2), _context(large, grad_accum=1)
    hook = Counter()
    loss, skipped = _one_epoch(accumulated, [hook])
    _one_epoch(single, [])
    assert accumulated.step == single.step == 2  # the last, partial group steps too
    assert skipped == 0 and loss > 0
    assert [e[:2] for e in hook.events] == [("backward", 0), ("step", 1), ("backward", 1),
                                            ("step", 2)]
    for a, b in zip(small.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(small.model.weight, Regression(x, y, 4).model.weight)  # it moved


def test_accumulated_gradients_are_the_groups_mean_at_the_step():
    x, y = _data(8)
    task, hook = Regression(x, y, 4), Counter()
    _one_epoch(_context(task, grad_accum=2), [hook])
    (_, _, grad), _ = hook.events
    expected = Regression(x, y, 8)  # the same initial weights
    expected(next(expected.batches())).backward()
    torch.testing.assert_close(grad, expected.model.weight.grad, rtol=1e-6, atol=1e-7)


def test_a_non_finite_batch_in_a_group_is_left_out_and_the_group_still_steps():
    x, y = _data(16)  # 4 batches of 4, groups of 2: the second batch has a NaN loss
    task = Regression(x, y, 4, nan_call=2)
    ctx = _context(task, grad_accum=2, on_nan="skip_step")
    _, skipped = _one_epoch(ctx, [])
    assert skipped == 1 and ctx.step == 2
    assert all(torch.isfinite(p).all() for p in task.parameters())
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 1 \(batch 2 of"):
        _one_epoch(_context(Regression(x, y, 4, nan_call=2), grad_accum=2), [])


def test_bf16_runs_forward_and_loss_under_autocast_and_fp32_outside_it():
    x, y = _data(8)
    bf16, fp32 = Regression(x, y, 4), Regression(x, y, 4)
    _one_epoch(_context(bf16, grad_accum=1, precision="bf16"), [])
    _one_epoch(_context(fp32, grad_accum=1), [])
    assert set(bf16.autocast) == {(True, torch.bfloat16)}
    assert {enabled for enabled, _ in fp32.autocast} == {False}
    assert bf16.model.weight.dtype == torch.float32  # autocast leaves the weights in fp32


def test_hooks_are_keyed_by_a_unique_name():
    class Named(Hook):
        name = "masks"

    assert list(by_name([Counter(), Named()])) == ["Counter", "masks"]
    with pytest.raises(ValueError, match="two training hooks are named 'Counter'"):
        by_name([Counter(), Counter()])
    renamed = Counter()
    renamed.name = "second"
    assert list(by_name([Counter(), renamed])) == ["Counter", "second"]
    with pytest.raises(TypeError, match="is not a recsys.tasks.hooks.Hook"):
        by_name([object()])




@pytest.mark.parametrize("lie", [-1, 1])
def test_a_task_whose_len_is_not_its_batch_count_is_refused(lie, monkeypatch):
    x, y = _data(10)
    task = Regression(x, y, 4)  # 3 batches
    monkeypatch.setattr(Regression, "__len__", lambda self: 3 + lie)
    with pytest.raises(RuntimeError, match=r"len\(\)"):
        _one_epoch(_context(task, grad_accum=1), [])
