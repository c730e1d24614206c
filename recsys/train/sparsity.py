"""Dynamic sparse training (DSL, Wang et al. WSDM'24; RigL, Evci et al. 2020; SET, Mocanu et al.
2018) as a hook of the one training loop, configured by the `sparse` section.

The covered parameters keep a boolean mask each. After every backward pass the gradients of
inactive weights are zeroed (so the optimizer's moments of inactive weights stay zero), and after
every optimizer step the inactive weights and their optimizer state are zeroed again (AdamW's
moments would otherwise keep moving a weight pruned a step ago). Every `update_every` steps,
until `stop_at` of training, each tensor drops the smallest-magnitude share of its active weights
and regrows as many inactive ones, by the magnitude of the step's dense gradient (RigL, DSL), of
the dense gradients summed since the last update, or at random (SET); regrown weights start at 0,
and with `protect_regrown` they are spared at the next update (the smallest weights of a tensor
are otherwise largely the ones just regrown, pruned again before they had an interval to grow).
The sum matters for embedding tables trained with in-batch negatives: one batch's gradient
touches only that batch's rows, so RigL's rule would regrow nearly all weights into them.

Why not torch's own tools: `torch.nn.utils.parametrize` recomputes `weight * mask` in every
forward and backward, and a table torchrec shards lives inside fused FBGEMM kernels that never
read a parametrized attribute; `torch.ao.pruning`'s sparsifiers prune a dense model on a schedule
but never regrow. The masks here act on the parameters in place, once a step outside autograd,
so they cover `nn.Linear`, attention projections, `nn.Embedding` and torchrec tables alike.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from features.sparse import csr_nbytes, save_arrays
from recsys.config import ConfigError, SparseConfig
from recsys.runtime.checkpoint import load_weights
from recsys.tasks.hooks import Hook, LoopContext
from recsys.train.optimizer import steps_per_epoch

log = logging.getLogger(__name__)


class DynamicSparsity(Hook):
    """Masks, prunes and regrows the parameters `config.params` names (see the module doc)."""

    name = "dynamic_sparsity"

    def __init__(self, config: SparseConfig, model: nn.Module, total_steps: int):
        self.config, self.total_steps = config, total_steps
        if config.init_from is not None:  # pruning a trained model: start from its weights
            load_weights(Path(config.init_from) / "checkpoint" / "best", model)
        self.params = covered_parameters(model, config.params)
        self.generator = torch.Generator().manual_seed(config.seed)
        shares = densities({n: p.shape for n, p in self.params.items()}, config.density,
                           config.distribution,
                           relative_factors(list(self.params), config.relative_density))
        self.masks = {n: self._first_mask(p, shares[n]) for n, p in self.params.items()}
        log.info("sparse: %d tensors, densities %s", len(shares),
                 ", ".join(f"{n} {shares[n]:.3f}" for n in shares))
        self.accumulated = ({n: torch.zeros_like(p) for n, p in self.params.items()}
                            if config.growth == "accumulated" else {})  # since the last update
        self.regrown: dict[str, torch.Tensor] = {}  # at the last update (protect_regrown)
        self._apply(optimizer=None)

    # -- loop events ------------------------------------------------------------------------

    def after_backward(self, ctx: LoopContext) -> None:
        step = ctx.step + 1  # the optimizer step about to be taken
        if step <= self._last_update_step():  # no update reads the sums after that
            self._track_gradients()
        if self.config.mode == "dynamic" and self._updates_at(step):
            self._update(ctx.optimizer, self.prune_share(step))
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is not None:
                    p.grad.mul_(self.masks[name])

    def after_step(self, ctx: LoopContext) -> None:
        self._apply(ctx.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": dict(self.masks), "accumulated": dict(self.accumulated),
                "regrown": dict(self.regrown), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["masks"]) != set(self.masks):
            raise ValueError(f"the checkpoint's sparse masks cover {sorted(state['masks'])}, "
                             f"the config's sparse.params {sorted(self.masks)}")
        self.masks = {n: m.to(self.params[n].device, torch.bool)
                      for n, m in state["masks"].items()}
        self.accumulated = {n: g.to(self.params[n].device)
                            for n, g in state.get("accumulated", {}).items()}
        self.regrown = {n: m.to(self.params[n].device, torch.bool)
                        for n, m in state.get("regrown", {}).items()}
        self.generator.set_state(state["generator"])
        self._apply(optimizer=None)

    # -- schedule ---------------------------------------------------------------------------

    def _updates_at(self, step: int) -> bool:
        return step % self.config.update_every == 0 and step <= self._last_update_step()

    def _last_update_step(self) -> int:
        return int(self.config.stop_at * self.total_steps)

    def prune_share(self, step: int) -> float:
        """The share of each tensor's active weights replaced at `step`: cosine from
        `prune_start` (step 0) to `prune_end` (`stop_at` of training)."""
        cfg = self.config
        progress = min(step / max(self._last_update_step(), 1), 1.0)
        return cfg.prune_end + 0.5 * (cfg.prune_start - cfg.prune_end) * (
            1 + math.cos(math.pi * progress))

    @torch.no_grad()
    def _track_gradients(self) -> None:
        """Add this step's dense gradients, before masking, to the sums growth reads."""
        for name, total in self.accumulated.items():
            grad = self.params[name].grad
            if grad is not None:
                total.add_(grad)

    # -- masks ------------------------------------------------------------------------------

    def _first_mask(self, p: nn.Parameter, density: float) -> torch.Tensor:
        keep = round(density * p.numel())
        if self.config.init == "magnitude":
            scores = p.detach().abs().flatten().float().cpu()
        else:
            scores = torch.rand(p.numel(), generator=self.generator)
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[scores.topk(keep).indices] = True
        return mask.view(p.shape).to(p.device)

    @torch.no_grad()
    def _update(self, optimizer: torch.optim.Optimizer, share: float) -> None:
        """Prune `share` of each tensor's active weights by magnitude, regrow as many."""
        for name, p in self.params.items():
            mask = self.masks[name].flatten().clone()
            n_swap = min(int(share * mask.sum()), int((~mask).sum()))
            if n_swap == 0:
                continue
            prunable = mask & ~self.regrown[name].flatten() if name in self.regrown else mask
            n_swap = min(n_swap, int(prunable.sum()))
            weight = p.detach().flatten().abs().float()
            drop = weight.masked_fill(~prunable, math.inf).topk(n_swap, largest=False).indices
            mask[drop] = False
            if self.config.growth == "accumulated":
                score = self.accumulated[name].flatten().abs().float()
            elif self.config.growth == "gradient" and p.grad is not None:
                score = p.grad.detach().flatten().abs().float()
            else:
                score = torch.rand(mask.numel(), generator=self.generator).to(mask.device)
            grow = score.masked_fill(mask, -math.inf).topk(n_swap).indices
            mask[grow] = True
            self.masks[name] = mask.view(p.shape)
            if self.config.protect_regrown:
                self.regrown[name] = torch.zeros_like(mask).index_fill_(0, grow, True).view(p.shape)
            p.view(-1)[grow] = 0.0  # regrown weights start at zero (RigL); their optimizer
            # state is zero already (inactive weights get no gradient)
        self._apply(optimizer)
        for total in self.accumulated.values():
            total.zero_()

    @torch.no_grad()
    def _apply(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the inactive weights and their optimizer state."""
        for name, p in self.params.items():
            p.mul_(self.masks[name])
            if optimizer is not None:
                for value in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(self.masks[name])


def sparsity_hook(ctx: LoopContext) -> DynamicSparsity:
    """The `sparse` section's hook for the run `ctx` trains (its schedule spans the run)."""
    cfg = ctx.config.train
    total = cfg.epochs * steps_per_epoch(len(ctx.task), cfg.grad_accum)
    return DynamicSparsity(ctx.config.sparse, ctx.model, total)


def covered_parameters(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The model's parameters whose names match one of the fnmatch `patterns`; a pattern that
    matches nothing, or matches a parameter the model does not train, is refused."""
    named = dict(model.named_parameters())
    covered: dict[str, nn.Parameter] = {}
    for i, pattern in enumerate(patterns):
        names = fnmatch.filter(named, pattern)
        if not names:
            some = ", ".join(list(named)[:6])
            raise ConfigError(f"config key 'sparse.params[{i}]': {pattern!r} matches no "
                              f"parameter of the model (its names: {some}, ...)")
        frozen = [n for n in names if not named[n].requires_grad]
        if frozen:
            raise ConfigError(f"config key 'sparse.params[{i}]': {pattern!r} matches "
                              f"{frozen[0]!r}, which the model does not train")
        covered.update({n: named[n] for n in names})
    return covered


def relative_factors(names: list[str], patterns: dict[str, float]) -> dict[str, float]:
    """Each covered tensor's `relative_density` factor: that of the first pattern matching its
    name, 1 where none does; a pattern matching no covered tensor is refused."""
    factors: dict[str, float] = {}
    for pattern, factor in patterns.items():
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(f"config key 'sparse.relative_density': {pattern!r} matches no "
                              "parameter that sparse.params covers")
        factors.update({n: factor for n in matched if n not in factors})
    return factors


def densities(shapes: dict[str, torch.Size], density: float, distribution: str,
              relative: dict[str, float] | None = None) -> dict[str, float]:
    """Each tensor's share of active weights, scaled so the active total is `density` of all
    covered weights: proportional to 1 ("uniform") or to the Erdos-Renyi-Kernel score
    sum(shape) / prod(shape) ("erk"), times the tensor's `relative` factor (default 1). A tensor
    the scale would push to 1 or past is kept dense and the rest rescaled."""
    relative = relative or {}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / sizes[n] if distribution == "erk" else 1.0) * relative.get(n, 1.0)
           for n, s in shapes.items()}
    dense: set[str] = set()
    while True:  # tensors the scale would push past 1 are kept dense, the rest rescaled
        rest = [n for n in shapes if n not in dense]
        if not rest:
            return dict.fromkeys(shapes, 1.0)
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        scale = budget / sum(raw[n] * sizes[n] for n in rest)
        over = {n for n in rest if raw[n] * scale >= 1}
        if not over:
            return {n: 1.0 if n in dense else raw[n] * scale for n in shapes}
        dense |= over


def parameter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters stored dense, and stored as the sparse export stores
    them: each tensor as CSR (`features.sparse`; a 1-D tensor as one row) where that is smaller."""
    dense = stored = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        rows = p.shape[0] if p.dim() >= 2 else 1
        csr = csr_nbytes(rows, p.numel() // max(rows, 1), int(torch.count_nonzero(p)),
                         p.element_size())
        dense += size
        stored += min(size, csr)
    return {"dense": dense, "sparse": stored}


def export_sparse_weights(model: nn.Module, path: Path) -> Path:
    """The model's weights (its state_dict, buffers included) with every tensor stored as CSR
    where that is smaller (`features.sparse.save_arrays`: numpy reads it back without torch)."""
    save_arrays(path, {n: t.detach().float().cpu().numpy() for n, t in model.state_dict().items()
                       if t.is_floating_point()})
    return path
