"""Dynamic sparse training: masks, schedule, regrowth, optimizer state, resume, bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from features.sparse import load_arrays
from recsys.config import ConfigError, SparseConfig, config_from_dict, config_to_dict
from recsys.export.embeddings import export_embeddings
from recsys.tasks.hooks import LoopContext
from recsys.train.loop import fit
from recsys.train.sparsity import DynamicSparsity, densities, parameter_bytes
from tests.recsys.tasks.test_recformer import Stop, StopAt

SASREC_SPARSE = ("item_emb.weight", "encoder.layers.*.linear*.weight")


def _sparse(config, **section):
    raw = config_to_dict(config)
    raw["sparse"] = {"params": list(SASREC_SPARSE), "density": 0.2, "update_every": 3,
                     **section}
    return config_from_dict(raw)


def _masks(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(run_dir / "checkpoint" / "last" / "optimizer.safetensors")
    prefix = "hook.dynamic_sparsity.masks."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _weights(run_dir: Path, which: str = "best") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / which / "model.safetensors")


def test_uniform_and_erk_densities_keep_the_budget():
    shapes = {"emb": torch.Size([1000, 64]), "proj": torch.Size([64, 64]),
              "bias": torch.Size([64])}
    assert densities(shapes, 0.2, "uniform") == pytest.approx(dict.fromkeys(shapes, 0.2))
    erk = densities(shapes, 0.2, "erk")
    sizes = {n: s.numel() for n, s in shapes.items()}
    active = sum(erk[n] * sizes[n] for n in shapes)
    assert active == pytest.approx(0.2 * sum(sizes.values()))
    assert erk["bias"] == 1.0  # (n) / (n): kept dense
    assert erk["emb"] < erk["proj"] < 1.0  # the larger tensor is the sparser
    assert densities(shapes, 1.0, "erk") == dict.fromkeys(shapes, 1.0)


def test_relative_densities_keep_the_budget_and_the_ratio():
    shapes = {"table": torch.Size([900, 10]), "layer": torch.Size([10, 10])}
    shares = densities(shapes, 0.2, "uniform", {"layer": 5.0})
    assert shares["layer"] == pytest.approx(5 * shares["table"])
    assert 9000 * shares["table"] + 100 * shares["layer"] == pytest.approx(0.2 * 9100)
    capped = densities(shapes, 0.5, "uniform", {"layer": 5.0})  # 5x would pass 1: kept dense
    assert capped["layer"] == 1.0
    assert 9000 * capped["table"] + 100 == pytest.approx(0.5 * 9100)


def test_relative_density_sets_the_first_masks():
    model = Toy()
    model.other = nn.Linear(10, 10, bias=False)
    cfg = SparseConfig(params=("layer.weight", "other.weight"), density=0.3,
                       relative_density={"other.*": 2.0})
    hook = DynamicSparsity(cfg, model, 10)
    assert int(hook.masks["layer.weight"].sum()) == 20  # 20 + 40 = 30% of 200
    assert int(hook.masks["other.weight"].sum()) == 40
    with pytest.raises(ConfigError, match=r"sparse\.relative_density.*'frozen'"):
        DynamicSparsity(dataclasses.replace(cfg, relative_density={"frozen": 2.0}), model, 10)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(10, 10, bias=False)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _toy_context(hook_config: SparseConfig, total_steps: int = 100):
    model = Toy()
    hook = DynamicSparsity(hook_config, model, total_steps)
    optimizer = torch.optim.AdamW([model.layer.weight], lr=0.1)
    config = config_from_dict({})
    ctx = LoopContext(model, model, optimizer, None, config, torch.device("cpu"))
    return model, hook, ctx


def _step(model, hook, ctx, grad: torch.Tensor) -> None:
    model.layer.weight.grad = grad.clone()
    hook.after_backward(ctx)
    ctx.optimizer.step()
    ctx.step += 1
    hook.after_step(ctx)
    ctx.optimizer.zero_grad()


def test_inactive_weights_and_their_adam_state_stay_zero():
    model, hook, ctx = _toy_context(SparseConfig(params=("layer.weight",), density=0.3,
                                                 mode="static"))
    mask = hook.masks["layer.weight"].clone()
    assert int(mask.sum()) == 30
    for _ in range(5):
        _step(model, hook, ctx, torch.randn(10, 10))
    weight = model.layer.weight.detach()
    state = ctx.optimizer.state[model.layer.weight]
    assert torch.equal(hook.masks["layer.weight"], mask)  # static: never updated
    assert not weight[~mask].any() and weight[mask].all()
    assert not state["exp_avg"][~mask].any() and not state["exp_avg_sq"][~mask].any()


def test_an_update_prunes_the_smallest_and_regrows_the_largest_gradients():
    cfg = SparseConfig(params=("layer.weight",), density=0.5, update_every=4,
                       prune_start=0.2, prune_end=0.2)
    model, hook, ctx = _toy_context(cfg)
    for _ in range(3):  # no update yet: steps 1-3
        _step(model, hook, ctx, torch.randn(10, 10))
    before = hook.masks["layer.weight"].clone()
    weight = model.layer.weight.detach().clone()
    smallest = weight.abs().masked_fill(~before, float("inf")).flatten().topk(10, largest=False)
    grad = torch.zeros(10, 10)
    inactive = (~before).flatten().nonzero().squeeze(1)
    wanted = inactive[torch.randperm(len(inactive))[:10]]
    grad.view(-1)[wanted] = 5.0 + torch.arange(10.0)
    _step(model, hook, ctx, grad)  # step 4 updates: 20% of the 50 active = 10 swapped
    after = hook.masks["layer.weight"]
    assert int(after.sum()) == 50
    assert not after.flatten()[smallest.indices].any()
    assert after.flatten()[wanted].all()


@pytest.mark.parametrize("protect", [False, True])
def test_protected_regrown_weights_survive_the_next_update(protect):
    cfg = SparseConfig(params=("layer.weight",), density=0.5, update_every=2,
                       prune_start=0.2, prune_end=0.2, protect_regrown=protect)
    model, hook, ctx = _toy_context(cfg)
    ctx.optimizer.param_groups[0]["lr"] = 0.0  # regrown weights stay at 0: the smallest active

    def inactive_gradient():  # so a weight pruned at an update is not regrown at once
        return torch.randn(10, 10) * ~hook.masks["layer.weight"]

    _step(model, hook, ctx, inactive_gradient())
    before = hook.masks["layer.weight"].clone()
    _step(model, hook, ctx, inactive_gradient())  # step 2: 10 of the 50 active swapped
    regrown = hook.masks["layer.weight"] & ~before
    assert int(regrown.sum()) == 10 and not model.layer.weight.detach()[regrown].any()
    _step(model, hook, ctx, inactive_gradient())
    _step(model, hook, ctx, inactive_gradient())  # step 4: the next update
    after = hook.masks["layer.weight"]
    assert int(after.sum()) == 50
    kept = int((after & regrown).sum())
    assert kept == (10 if protect else 0)  # unprotected, the zeros are the first to go


@pytest.mark.parametrize("growth", ["gradient", "accumulated"])
def test_accumulated_growth_follows_the_window_not_the_last_step(growth):
    cfg = SparseConfig(params=("layer.weight",), density=0.5, update_every=4,
                       prune_start=0.2, prune_end=0.2, growth=growth)
    model, hook, ctx = _toy_context(cfg)
    inactive = (~hook.masks["layer.weight"]).flatten().nonzero().squeeze(1)
    steady, last = inactive[:10], inactive[10:20]
    for _ in range(3):  # steps 1-3: a large gradient on `steady`
        grad = torch.zeros(10, 10)
        grad.view(-1)[steady] = 5.0 + torch.arange(10.0)
        _step(model, hook, ctx, grad)
    grad = torch.zeros(10, 10)
    grad.view(-1)[last] = 8.0  # step 4 (the update): a moderate one on `last` alone
    _step(model, hook, ctx, grad)
    grown = hook.masks["layer.weight"].flatten()
    expected, other = (steady, last) if growth == "accumulated" else (last, steady)
    assert grown[expected].all() and not grown[other].any()
    assert not any(total.any() for total in hook.accumulated.values())  # a new window


def test_prune_share_decays_by_cosine_until_stop_at():
    cfg = SparseConfig(params=("layer.weight",), density=0.5, prune_start=0.5, prune_end=0.1,
                       stop_at=0.5, update_every=10)
    _, hook, _ = _toy_context(cfg, total_steps=200)
    assert hook.prune_share(0) == pytest.approx(0.5)
    assert hook.prune_share(50) == pytest.approx(0.3)
    assert hook.prune_share(100) == pytest.approx(0.1)
    assert hook._updates_at(100) and not hook._updates_at(110)


@pytest.mark.parametrize("pattern, message", [
    ("nothing.*", r"sparse.params\[0\].*matches no parameter"),
    ("frozen", r"sparse.params\[0\].*does not train"),
])
def test_bad_patterns_are_refused_naming_the_key(pattern, message):
    with pytest.raises(ConfigError, match=message):
        DynamicSparsity(SparseConfig(params=(pattern,), density=0.5), Toy(), 10)


@pytest.mark.parametrize("override, key", [
    ({"density": 0}, "sparse.density"), ({"density": 1.5}, "sparse.density"),
    ({"update_every": 0}, "sparse.update_every"), ({"prune_end": 0.9}, "sparse.prune_end"),
    ({"relative_density": {"x": 0}}, "sparse.relative_density.x"),
    ({"dense_baseline": ["train.lr"]}, "sparse.dense_baseline"),
])
def test_bad_sparse_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"sparse": {"params": ["x"], **override}})


def test_sasrec_trains_at_density_0_2_with_masks_that_move(config):
    sparse = _sparse(config)
    result = fit(sparse)
    masks = _masks(result.run_dir)
    assert set(masks) == {"item_emb.weight", "encoder.layers.0.linear1.weight",
                          "encoder.layers.0.linear2.weight"}
    weights = _weights(result.run_dir, "last")
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.2 * mask.numel())
        assert not weights[name][~mask].any()
    first = DynamicSparsity(sparse.sparse, _model(sparse), 1).masks  # the seed's first masks
    assert any(not torch.equal(first[n], masks[n]) for n in masks)  # dynamic: they moved
    bytes_ = result.metrics["param_bytes"]
    covered = sum(mask.numel() * 4 for mask in masks.values())  # fp32
    assert bytes_["dense"] - bytes_["sparse"] > 0.5 * covered  # CSR at 20%: ~1.6 of 4 bytes
    assert result.metrics["test"]["ndcg@10"] > 0.2  # still learns the successor pattern

    exported = load_arrays(result.run_dir / "model.sparse.safetensors")  # numpy, no torch
    best = _weights(result.run_dir)
    assert exported.keys() == best.keys()
    assert all(np.array_equal(exported[n], best[n].numpy()) for n in best)
    embeddings = export_embeddings(result.run_dir)
    items = json.loads((Path(embeddings["items_path"]) / "meta.json").read_text())
    users = json.loads((Path(embeddings["users_path"]) / "meta.json").read_text())
    assert (items["layout"], users["layout"]) == ("csr", "dense")  # the table's rows are sparse


def _model(config):
    from recsys.recipes import load_data, new_model
    dataset, split = load_data(config)
    return new_model(config, dataset, split)


@pytest.mark.parametrize("section", [{"growth": "gradient"}, {"growth": "accumulated"},
                                     {"protect_regrown": True}])
def test_a_resumed_sparse_run_continues_identically(config, section):
    sparse = _sparse(dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                           epochs=5)),
                     **section)
    with pytest.raises(Stop):
        fit(sparse, hooks=[StopAt(2)])
    (run_dir,) = Path(sparse.train.runs_dir).iterdir()
    resumed = fit(None, resume=run_dir, hooks=[StopAt(99)])
    straight = fit(sparse, hooks=[StopAt(99)])
    assert resumed.metrics["test"] == straight.metrics["test"]
    mine, theirs = _masks(resumed.run_dir), _masks(straight.run_dir)
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)


def test_magnitude_pruning_of_a_trained_run_keeps_its_largest_weights(config):
    dense = fit(config)
    pruned = _sparse(config, init="magnitude", init_from=str(dense.run_dir), mode="static")
    model = _model(pruned)
    hook = DynamicSparsity(pruned.sparse, model, 1)
    trained = _weights(dense.run_dir)["item_emb.weight"]
    kept = trained.abs()[hook.masks["item_emb.weight"]]
    dropped = trained.abs()[~hook.masks["item_emb.weight"]]
    assert kept.min() >= dropped.max()
    assert torch.equal(model.item_emb.weight[hook.masks["item_emb.weight"]],
                       trained[hook.masks["item_emb.weight"]])


def test_parameter_bytes_count_csr_only_where_smaller():
    layer = nn.Linear(100, 100, bias=False)
    dense = parameter_bytes(layer)
    assert dense == {"dense": 40_000, "sparse": 40_000}
    with torch.no_grad():
        layer.weight[10:] = 0  # 1,000 non-zeros: fp32 values, uint8 columns (< 100), and
    # 101 uint16 row pointers (up to 1,000)
    assert parameter_bytes(layer) == {"dense": 40_000, "sparse": 1_000 * 5 + 101 * 2}


def test_the_two_tower_trains_sparse_torchrec_tables(config, tiny_model_dir, tmp_path):
    raw = config_to_dict(config)
    raw["model"] = {"name": "two_tower", "two_tower": {
        "dim": 16, "hidden": 32, "max_len": 12, "text": ["title"],
        "encoder": {"path": str(tiny_model_dir), "cache_dir": str(tmp_path / "cache")}}}
    raw["train"].update(epochs=3, lr=0.01, batch_size=32)
    raw["sparse"] = {"params": ["*.embedding_bags.*.weight", "*.mlp.*.weight"], "density": 0.3,
                     "update_every": 2}
    result = fit(config_from_dict(raw))
    masks, weights = _masks(result.run_dir), _weights(result.run_dir, "last")
    table = "model.item_tower.bags.collection.embedding_bags.t_item_id.weight"
    assert table in masks and any(".mlp." in n for n in masks)
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.3 * mask.numel())
        assert not weights[name][~mask].any()
