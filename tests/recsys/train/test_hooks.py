"""fit with hooks, an LR schedule, gradient accumulation, bf16 and a device: a run stopped and
resumed ends exactly as an uninterrupted one, hook state included."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from recsys.config import ConfigError
from recsys.recipes import evaluate_run
from recsys.tasks.hooks import Hook
from recsys.train.loop import fit


class Stop(Exception):
    pass


class WeightAverage(Hook):
    """Keeps the running mean of the output layer's weights over optimizer steps (a tensor),
    counts steps, logs each epoch's step and LR, and damps every other step's gradients by a
    factor its state decides (so a lost count would change the weights); can stop the run."""

    name = "weight_average"

    def __init__(self, stop_at_epoch: int | None = None):
        self.mean, self.steps, self.log, self.stop_at = None, 0, [], stop_at_epoch

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.stop_at:
            raise Stop(f"stopped before epoch {ctx.epoch + 1}")

    def after_backward(self, ctx):
        if self.steps % 2:
            for p in ctx.model.parameters():
                p.grad.mul_(0.5)

    def after_step(self, ctx):
        weight = next(ctx.model.parameters()).detach()
        self.steps += 1
        if self.mean is None:
            self.mean = weight.clone()
        else:
            self.mean += (weight - self.mean) / self.steps
        assert self.steps == ctx.step  # the hook's count follows the loop's optimizer steps

    def on_epoch_end(self, ctx):
        self.log.append({"epoch": ctx.epoch, "step": ctx.step,
                         "lr": ctx.scheduler.get_last_lr()[0]})

    def state_dict(self):
        return {"steps": self.steps, "log": self.log, "tensors": {"mean": self.mean}}

    def load_state_dict(self, state):
        self.steps, self.log, self.mean = state["steps"], state["log"], state["tensors"]["mean"]


def _with(config, **train):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def test_a_stopped_run_resumes_to_the_same_metrics_weights_and_hook_state(config):
    config = _with(config, epochs=4, grad_accum=2, schedule="cosine", warmup_steps=3,
                   lr=0.003)
    with pytest.raises(Stop, match="before epoch 3"):
        fit(config, hooks=[WeightAverage(stop_at_epoch=2)])
    (run_dir,) = Path(config.train.runs_dir).iterdir()
    assert _state(run_dir)["epoch"] == 2  # the checkpoint of the last finished epoch

    resumed_hook, straight_hook = WeightAverage(), WeightAverage()
    resumed = fit(None, resume=run_dir, hooks=[resumed_hook])
    straight = fit(config, hooks=[straight_hook])
    assert resumed.metrics["test"] == straight.metrics["test"]
    assert resumed.metrics["valid"] == straight.metrics["valid"]
    assert resumed.metrics["epochs"] == straight.metrics["epochs"] == 4
    for a, b in zip(_weights(resumed.run_dir), _weights(straight.run_dir), strict=True):
        assert torch.equal(a, b)
    assert resumed_hook.steps == straight_hook.steps == 4 * 4  # 8 batches an epoch, 2 a step
    assert _state(resumed.run_dir)["step"] == _state(straight.run_dir)["step"] == 16
    assert resumed_hook.log == straight_hook.log
    assert torch.equal(resumed_hook.mean, straight_hook.mean)
    lrs = [entry["lr"] for entry in straight_hook.log]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[0] > lrs[1] > lrs[2]


def _weights(run_dir):
    from safetensors.torch import load_file

    return list(load_file(run_dir / "checkpoint" / "last" / "model.safetensors").values())


def test_bf16_learns(config):
    result = fit(_with(config, epochs=4, precision="bf16"))
    history = [r["loss"] for r in _state(result.run_dir)["history"]]
    assert history[-1] < 0.8 * history[0]
    assert result.metrics["test"]["ndcg@10"] > 0.5


def _state(run_dir):
    return json.loads((run_dir / "checkpoint/last/state.json").read_text())["state"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cuda_without_a_gpu_is_a_config_error_naming_the_key(config):
    with pytest.raises(ConfigError, match=r"'train\.device': cuda, but .* no CUDA GPU"):
        fit(_with(config, device="cuda"))
    assert not Path(config.train.runs_dir).exists()  # refused before any run dir


@pytest.mark.gpu
def test_a_run_on_cuda_learns_and_its_checkpoint_evaluates_on_the_cpu(config):
    result = fit(_with(config, epochs=4, device="cuda", precision="bf16"))
    assert result.metrics["test"]["ndcg@10"] > 0.5
    assert evaluate_run(result.run_dir, "test") == result.metrics["test"]
