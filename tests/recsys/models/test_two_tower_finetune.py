"""Fine-tuning the text encoder inside the two-tower item tower (`finetune_text`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recsys.inputs.two_tower import TwoTowerRetriever, build_tower_inputs
from recsys.recipes import evaluate_run, load_data, load_run
from recsys.train.loop import fit
from recsys.train.optimizer import build_optimizer
from tests.recsys.models.test_two_tower import _retriever, _two_tower_config

ENCODER = "model.item_tower.text_encoder"


def _tuned_model(cfg, items, split) -> TwoTowerRetriever:
    config = dataclasses.replace(cfg.model.two_tower, finetune_text=True)
    inputs = build_tower_inputs(config, items, None, split.users.ids, split.train_item_counts)
    return _retriever(config, inputs)


def test_tuned_encoder_starts_from_the_frozen_vectors_and_skips_missing_text(
        config, tiny_model_dir, tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path)
    dataset, split = load_data(cfg)
    items = dataset.items.copy()
    items.loc[2, "title"] = None  # item index 3
    frozen = build_tower_inputs(cfg.model.two_tower, items, None, split.users.ids,
                                split.train_item_counts).text  # (n_items + 1, 1, text_dim)
    model = _tuned_model(cfg, items, split)
    rows = torch.arange(1, split.n_items + 1)
    with torch.no_grad():
        tuned = model.model.item_tower.encode_text(model.inputs.items(rows))  # (n_items, 1, dim)
    torch.testing.assert_close(tuned, frozen[1:], atol=1e-5, rtol=1e-4)
    assert torch.all(tuned[2] == 0)


def test_lr_groups_give_the_encoder_its_own_learning_rate(config, tiny_model_dir, tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path, lr_groups={ENCODER: 1e-4})
    dataset, split = load_data(cfg)
    model = _tuned_model(cfg, dataset.items, split)
    rest, encoder = build_optimizer(model, cfg.train).param_groups
    assert (rest["lr"], encoder["lr"]) == (0.01, 1e-4)
    assert len(rest["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    encoder_ids = {id(p) for p in model.model.item_tower.text_encoder.parameters()}
    assert {id(p) for p in encoder["params"]} == encoder_ids
    assert not encoder_ids & {id(p) for p in rest["params"]}


def test_fit_updates_the_encoder_and_the_checkpoint_restores_it(config, tiny_model_dir,
                                                                tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path, finetune_text=True,
                            lr_groups={ENCODER: 1e-3})
    dataset, split = load_data(cfg)
    before = _tuned_model(cfg, dataset.items, split).model.item_tower.text_encoder.state_dict()
    result = fit(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2)))
    model, _, _ = load_run(result.run_dir / "checkpoint" / "best")
    after = model.model.item_tower.text_encoder.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("encoder.layer" in name for name in changed)  # the backbone itself learned
    reloaded = evaluate_run(result.run_dir)  # a frozen encoder here would score differently
    assert abs(reloaded["ndcg@10"] - result.metrics["test"]["ndcg@10"]) < 1e-6


def test_fine_tuning_the_encoder_without_its_own_rate_is_refused(config, tiny_model_dir,
                                                                 tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path, finetune_text=True)
    with pytest.raises(ValueError, match=r"'train.lr_groups'.*finetune_text"):
        fit(cfg)
