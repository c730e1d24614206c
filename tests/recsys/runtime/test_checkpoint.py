import os

import torch

from recsys.config import config_from_dict
from recsys.runtime.checkpoint import (
    has_checkpoint,
    load_weights,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)

CONFIG = config_from_dict({"model": {"sasrec": {"max_len": 6, "dim": 8, "layers": 1}}})


def _trained_pair():
    from recsys.models import SASRec

    torch.manual_seed(0)
    model = SASRec(CONFIG.model.sasrec, 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loss = model.score(torch.randint(1, 21, (4, 6))).square().mean()
    loss.backward()
    optimizer.step()
    return model, optimizer


def _step(model, optimizer):
    optimizer.zero_grad()
    model.score(torch.randint(1, 21, (4, 6))).square().mean().backward()
    optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_restored_training_continues_bit_for_bit(tmp_path):
    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "last", model, optimizer, {"epoch": 3, "n_items": 20}, CONFIG)
    expected = _step(model, optimizer)  # the step an uninterrupted run takes next

    fresh, fresh_opt = _trained_pair()  # same architecture, then overwritten from disk
    _step(fresh, fresh_opt)  # diverge on purpose, and move the RNG
    state = restore_training(tmp_path / "last", fresh, fresh_opt)
    assert state["epoch"] == 3
    for got, want in zip(_step(fresh, fresh_opt), expected, strict=True):
        assert torch.equal(got, want)


def test_a_checkpoint_carries_its_config_and_weights(tmp_path):
    from recsys.models import SASRec

    model, _ = _trained_pair()
    save_checkpoint(tmp_path / "best", model, None, {"n_items": 20}, CONFIG)
    doc = read_checkpoint(tmp_path / "best")
    config = config_from_dict(doc["config"])
    assert config == CONFIG
    rebuilt = SASRec(config.model.sasrec, doc["state"]["n_items"])
    load_weights(tmp_path / "best", rebuilt)
    rebuilt.eval()
    history = torch.tensor([[1, 2, 3]])
    assert torch.equal(rebuilt.score(history), model.eval().score(history))


def test_a_crash_between_the_two_renames_keeps_the_previous_checkpoint(tmp_path):
    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "last", model, optimizer, {"epoch": 1, "n_items": 20}, CONFIG)
    os.replace(tmp_path / "last", tmp_path / "last.old")  # as if killed mid-swap
    assert has_checkpoint(tmp_path / "last")
    assert read_checkpoint(tmp_path / "last")["state"]["epoch"] == 1
    assert not has_checkpoint(tmp_path / "missing")


def test_a_diverged_damaged_or_misfitting_checkpoint_is_refused_naming_the_file(tmp_path):
    import pytest

    from recsys.models import SASRec
    from recsys.runtime.checkpoint import CheckpointError

    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "ok", model, optimizer, {"epoch": 1}, CONFIG)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    save_checkpoint(tmp_path / "nan", model, optimizer, {"epoch": 1}, CONFIG)
    with pytest.raises(CheckpointError, match=r"nan/model\.safetensors.*NaN or infinite"):
        load_weights(tmp_path / "nan", model)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        restore_training(tmp_path / "nan", model, optimizer)

    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=r"ok/model\.safetensors: damaged checkpoint"):
        load_weights(tmp_path / "ok", model)
    (tmp_path / "ok" / "state.json").write_text('{"state": ')
    with pytest.raises(CheckpointError, match=r"state\.json: damaged checkpoint state"):
        read_checkpoint(tmp_path / "ok")

    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "small", model, optimizer, {"epoch": 1}, CONFIG)
    other = SASRec(CONFIG.model.sasrec, 30)  # a catalogue of another size
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_weights(tmp_path / "small", other)


class _Stateful:
    """A hook's checkpoint side: anything with state_dict / load_state_dict."""

    def __init__(self, state=None):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def test_hook_states_round_trip_by_name_json_in_state_and_tensors_by_prefix(tmp_path):
    from safetensors.torch import load_file

    model, optimizer = _trained_pair()
    masks = {"layer.0.weight": torch.tensor([[True, False]]), "bias": torch.tensor([0.5, 1.0])}
    sparsity = _Stateful({"updates": 3, "history": [0.5, 0.25], "masks": masks, "empty": {}})
    table = _Stateful({"refreshed_at": None, "vectors": torch.arange(6.0).view(2, 3)})
    save_checkpoint(tmp_path / "last", model, optimizer, {"epoch": 1}, CONFIG,
                    hooks={"sparsity": sparsity, "item_table": table})
    doc = read_checkpoint(tmp_path / "last")
    assert doc["hooks"]["sparsity"]["state"] == {"updates": 3, "history": [0.5, 0.25],
                                                 "masks": {}, "empty": {}}
    tensors = load_file(tmp_path / "last" / "optimizer.safetensors")
    assert {"hook.sparsity.masks.layer.0.weight", "hook.sparsity.masks.bias",
            "hook.item_table.vectors"} <= set(tensors)

    fresh = {"sparsity": _Stateful(), "item_table": _Stateful()}
    restore_training(tmp_path / "last", model, optimizer, hooks=fresh)
    got = fresh["sparsity"].state
    assert got["updates"] == 3 and got["history"] == [0.5, 0.25] and got["empty"] == {}
    assert set(got["masks"]) == {"layer.0.weight", "bias"}  # a dotted key stays one key
    assert torch.equal(got["masks"]["layer.0.weight"], masks["layer.0.weight"])
    assert got["masks"]["layer.0.weight"].dtype == torch.bool
    assert torch.equal(got["masks"]["bias"], masks["bias"])
    assert fresh["item_table"].state["refreshed_at"] is None
    assert torch.equal(fresh["item_table"].state["vectors"], table.state["vectors"])


def test_a_resume_with_other_hooks_or_unstorable_hook_state_is_refused(tmp_path):
    import pytest

    from recsys.runtime.checkpoint import CheckpointError

    model, optimizer = _trained_pair()
    save_checkpoint(tmp_path / "last", model, optimizer, {"epoch": 1}, CONFIG,
                    hooks={"sparsity": _Stateful({"step": 1})})
    with pytest.raises(CheckpointError, match=r"hooks \['sparsity'\], but the run resumes with "
                                              r"hooks \[\]"):
        restore_training(tmp_path / "last", model, optimizer)
    with pytest.raises(TypeError, match="training hook 'odd'.*neither a tensor nor JSON"):
        save_checkpoint(tmp_path / "odd", model, optimizer, {}, CONFIG,
                        hooks={"odd": _Stateful({"when": object()})})
    with pytest.raises(ValueError, match="'hook.nan.mask' holds NaN or inf"):  # never resumable
        save_checkpoint(tmp_path / "nan", model, optimizer, {}, CONFIG,
                        hooks={"nan": _Stateful({"mask": torch.tensor([1.0, float("nan")])})})


def test_the_lr_schedule_resumes_where_it_stopped(tmp_path):
    model, optimizer = _trained_pair()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(3):
        optimizer.step()
        schedule.step()
    save_checkpoint(tmp_path / "last", model, optimizer, {}, CONFIG, scheduler=schedule)
    schedule.step()
    expected = schedule.get_last_lr()

    fresh, fresh_opt = _trained_pair()
    fresh_schedule = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 1 / (step + 1))
    restore_training(tmp_path / "last", fresh, fresh_opt, fresh_schedule)
    assert fresh_schedule.last_epoch == 3 and fresh_opt.param_groups[0]["lr"] == 0.01 / 4
    fresh_schedule.step()
    assert fresh_schedule.get_last_lr() == expected
