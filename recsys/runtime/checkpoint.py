"""Checkpoints: safetensors tensors + one JSON state file, written atomically.

A checkpoint dir holds `model.safetensors` (the weights), `optimizer.safetensors` (every other
tensor of the training state, by prefix: `opt.` the optimizer's, `rng.` the torch CPU and CUDA RNG
states, `hook.<name>.` the training hooks') and `state.json`: the loop's state (epoch, optimizer
step, early stopping), the JSON parts of the optimizer, LR schedule and each hook's state, and the
resolved config, so a model can be rebuilt from the checkpoint alone.

A hook's state (a dict whose leaves are JSON values or tensors, nested dicts allowed) is stored as
`"hooks": {name: {"state": <the dict less its tensors>, "tensors": {file key: [path of keys]}}}`,
its tensors under `hook.<name>.<dotted path>` in `optimizer.safetensors`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from recsys.config import Config, config_to_dict


class CheckpointError(ValueError):
    """A checkpoint that is damaged, diverged or does not fit the model it should load into."""


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
    config: Config, scheduler: LRScheduler | None = None, hooks: Mapping[str, Any] | None = None,
) -> None:
    """Write a complete checkpoint at `path`, replacing any old one only once the new is whole.
    `hooks` maps each training hook's name to the hook (anything with `state_dict()`)."""
    tmp = fresh_dir(path)
    save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()},
              tmp / "model.safetensors")
    write_state(tmp, state, config, optimizer, scheduler, hooks)
    swap_in(tmp, path)


def fresh_dir(path: Path) -> Path:
    """An empty `<path>.tmp` to write a checkpoint into before `swap_in`."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_state(
    folder: Path, state: dict[str, Any], config: Config, optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None = None, hooks: Mapping[str, Any] | None = None,
) -> None:
    """Everything of a checkpoint but the weights: `optimizer.safetensors` (the optimizer's,
    RNG and hook tensors) and `state.json`, written last."""
    tensors, opt_meta = _split_optimizer(optimizer)
    tensors.update(_rng_states())
    hook_meta = _split_hooks(hooks or {}, tensors)
    save_file(tensors, folder / "optimizer.safetensors")
    doc = {"state": state, "optimizer": opt_meta, "config": config_to_dict(config),
           "scheduler": scheduler.state_dict() if scheduler is not None else None,
           "hooks": hook_meta}
    (folder / "state.json").write_text(json.dumps(doc, indent=1))  # inside tmp: atomic via rename


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (state, optimizer hyper-parameters, config)."""
    file = _existing(path) / "state.json"
    try:
        return json.loads(file.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: damaged checkpoint state ({err})") from None


def restore_training(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None = None, hooks: Mapping[str, Any] | None = None,
) -> dict:
    """Load weights, optimizer, LR schedule, RNG and hook states in place; returns the training
    state dict. `hooks` must be the hooks the checkpoint was written with, by name."""
    load_weights(path, model)
    return restore_state(path, optimizer, scheduler, hooks)


def restore_state(
    path: Path, optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None = None, hooks: Mapping[str, Any] | None = None,
) -> dict:
    """What `write_state` wrote, loaded in place (the RNG too); returns the training state."""
    path = _existing(path)
    doc = read_checkpoint(path)
    tensors = _read_tensors(path / "optimizer.safetensors")
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if optimizer is not None:
        optimizer.load_state_dict(_join_optimizer(tensors, doc["optimizer"]))
    if scheduler is not None and doc.get("scheduler") is not None:  # none before schedules
        scheduler.load_state_dict(doc["scheduler"])
    _load_hooks(hooks or {}, doc.get("hooks", {}), tensors, path)
    return doc["state"]


def load_weights(path: Path, model: nn.Module, prefix: str = "") -> None:
    """Load only the model weights of a checkpoint into `model`; refuse damaged or diverged
    (NaN / inf) weights and weights of another shape, naming the file. With `prefix`, only the
    checkpoint's weights under it (the prefix cut off) are loaded: a part of the saved model."""
    file = _existing(path) / "model.safetensors"
    tensors = _read_tensors(file)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    bound = {f"model.{name}": tensor for name, tensor in tensors.items()}
    if set(bound) == set(model.state_dict()):  # saved before the model was bound to its
        tensors = bound  # catalogue (recsys.inputs), which holds it as `model`
    try:
        model.load_state_dict(tensors)
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
                tensors[f"opt.{pid}.{name}"] = value.cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"state": scalars, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["state"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> dict[str, torch.Tensor]:
    """The torch RNG states: CPU (shuffling, CPU dropout) and, once used, CUDA (GPU dropout)."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def _split_hooks(hooks: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    """Each hook's state_dict -> its JSON entry; its tensors go into `tensors`."""
    meta = {}
    for name, hook in hooks.items():
        paths: dict[str, list[str]] = {}
        rest = _pull_tensors(hook.state_dict(), ("hook", name), tensors, paths)
        try:
            json.dumps(rest)
        except (TypeError, ValueError) as err:
            raise TypeError(f"training hook {name!r}: its state_dict() holds a value that is "
                            f"neither a tensor nor JSON ({err})") from None
        meta[name] = {"state": rest, "tensors": paths}
    return meta


def _pull_tensors(tree: dict, path: tuple[str, ...], tensors: dict[str, torch.Tensor],
                  paths: dict[str, list[str]]) -> dict:
    """`tree` less its tensor leaves, which go to `tensors` under their dotted path (the path's
    keys to `paths`: a dotted key alone is ambiguous when the keys hold dots themselves)."""
    rest = {}
    for key, value in tree.items():
        where = (*path, str(key))
        if torch.is_tensor(value):
            name = ".".join(where)
            if name in tensors:
                raise ValueError(f"training hook state: two tensors map to the key {name!r}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"training hook state {name!r} holds NaN or inf: a checkpoint "
                                 "with it could never be resumed")
            tensors[name] = value.detach().cpu().contiguous()
            paths[name] = list(where[2:])  # less ("hook", hook name)
        elif isinstance(value, dict):
            rest[key] = _pull_tensors(value, where, tensors, paths)
        else:
            rest[key] = value
    return rest


def _load_hooks(hooks: Mapping[str, Any], saved: dict, tensors: dict[str, torch.Tensor],
                path: Path) -> None:
    """Hand every hook its saved state, its tensors put back where `_split_hooks` took them."""
    if set(hooks) != set(saved):
        raise CheckpointError(f"{path}: holds the state of training hooks {sorted(saved)}, but "
                              f"the run resumes with hooks {sorted(hooks)}: resume it with the "
                              "hooks it was trained with")
    for name, hook in hooks.items():
        state = saved[name]["state"]
        for key, keys in saved[name]["tensors"].items():
            node = state
            for part in keys[:-1]:
                node = node.setdefault(part, {})
            node[keys[-1]] = tensors[key]
        hook.load_state_dict(state)


def swap_in(tmp: Path, path: Path) -> None:
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
