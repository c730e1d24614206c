"""Checkpoints: safetensors tensors + one JSON state file, written atomically.

A checkpoint dir holds `model.safetensors`, `optimizer.safetensors` (tensor part of the optimizer
state and the torch RNG state) and `state.json` (epoch, step, early-stopping state, optimizer
hyper-parameters and the resolved config), so a model can be rebuilt from it alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from recsys.config import Config, config_to_dict


class CheckpointError(ValueError):
    """A checkpoint that is damaged, diverged or does not fit the model it should load into."""


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
    config: Config,
) -> None:
    """Write a complete checkpoint at `path`, replacing any old one only once the new is whole."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, opt_meta = _split_optimizer(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    doc = {"state": state, "optimizer": opt_meta, "config": config_to_dict(config)}
    (tmp / "state.json").write_text(json.dumps(doc, indent=1))  # inside tmp: atomic via rename
    _swap_in(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (state, optimizer hyper-parameters, config)."""
    file = _existing(path) / "state.json"
    try:
        return json.loads(file.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: damaged checkpoint state ({err})") from None


def restore_training(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights, optimizer and RNG state in place; returns the training state dict."""
    path = _existing(path)
    doc = read_checkpoint(path)
    load_weights(path, model)
    tensors = _read_tensors(path / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng.torch"))
    if optimizer is not None:
        optimizer.load_state_dict(_join_optimizer(tensors, doc["optimizer"]))
    return doc["state"]


def load_weights(path: Path, model: nn.Module) -> None:
    """Load only the model weights of a checkpoint into `model`; refuse damaged or diverged
    (NaN / inf) weights and weights of another shape, naming the file."""
    file = _existing(path) / "model.safetensors"
    try:
        model.load_state_dict(_read_tensors(file))
    except RuntimeError as err:  # missing / unexpected keys, size mismatches
        raise CheckpointError(f"{file}: the weights do not fit the model its config builds "
                              f"({' '.join(str(err).split())[:300]})") from None


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, all finite (a diverged run must not score)."""
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: damaged checkpoint file ({err})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{file}: tensor '{name}' holds NaN or infinite values "
                                  "(a diverged run); refusing to load it")
    return tensors


def _split_optimizer(optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
    """Optimizer state_dict -> (flat tensors, JSON-able rest)."""
    if optimizer is None:
        return {}, {"state": {}, "param_groups": []}
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"state": scalars, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["state"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; the old copy survives as `path.old` until the rename is done."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(path: Path) -> bool:
    """Whether a complete checkpoint (or its pre-swap `.old` copy) exists at `path`."""
    try:
        _existing(path)
    except FileNotFoundError:
        return False
    return True


def _existing(path: Path) -> Path:
    """The checkpoint at `path`, or its `.old` copy if a crash hit between the two renames."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "state.json").is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path}")
