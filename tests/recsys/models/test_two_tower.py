"""Two-tower model, its losses and task, on hand cases and on the tiny successor dataset."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys.config import LossConfig, TwoTowerConfig, config_from_dict, config_to_dict
from recsys.export.embeddings import export_embeddings
from recsys.inputs.tables import categorical_codes
from recsys.inputs.two_tower import TowerInputs, TwoTowerRetriever, build_tower_inputs
from recsys.losses import info_nce, sampled_softmax
from recsys.models.two_tower import TwoTower
from recsys.recipes import load_data, load_run
from recsys.tasks.retrieval import TwoTowerTask, _log_inclusion
from recsys.train.loop import fit
from serving.store import read_store

N_ITEMS, N_USERS = 6, 4


def _inputs(config: TwoTowerConfig, known=None) -> TowerInputs:
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(N_ITEMS + 1, len(config.text), 8, generator=gen)
    genres = torch.tensor([[-1, -1], [0, 1], [1, -1], [2, -1], [0, 2], [-1, -1], [1, 2]])
    known = torch.ones(N_ITEMS + 1, dtype=torch.bool) if known is None else known
    genres = {"genres": genres} if config.categorical else {}
    return TowerInputs(text, genres, {name: 3 for name in genres}, known, N_USERS,
                       item_ids=config.item_ids, user_ids=config.user_ids)


def _retriever(config: TwoTowerConfig, inputs: TowerInputs) -> TwoTowerRetriever:
    torch.manual_seed(0)
    return TwoTowerRetriever(TwoTower(config, inputs.sizes), inputs).eval()


def _model(**overrides) -> TwoTowerRetriever:
    config = TwoTowerConfig(dim=8, hidden=16, dropout=0.0, text=("title",),
                            categorical=("genres",), **overrides)
    return _retriever(config, _inputs(config))


def test_towers_return_unit_vectors_and_score_is_their_dot_product():
    model = _model()
    history = torch.tensor([[0, 1, 2], [3, 4, 5]])
    users = torch.tensor([0, 3])
    items = model.item_vectors()  # (n_items + 1, dim)
    assert items.shape == (N_ITEMS + 1, 8) and torch.all(items[0] == 0)
    assert torch.allclose(items[1:].norm(dim=1), torch.ones(N_ITEMS), atol=1e-5)
    user = model.user_vectors(history, users)
    assert user.shape == (2, 8)
    torch.testing.assert_close(model.score(history, users), user @ items.T)


def test_the_evaluation_scorer_encodes_the_catalogue_once_and_scores_as_score(monkeypatch):
    model = _model()
    history, users = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([0, 3])
    want = model.score(history, users)
    calls = []
    tower = model.model.item_tower
    monkeypatch.setattr(tower, "forward", lambda *a, **k: calls.append(1) or
                        type(tower).forward(tower, *a, **k))
    score = model.scorer()
    encoded = len(calls)  # the catalogue, once
    for _ in range(3):
        torch.testing.assert_close(score(history, users), want)
    assert encoded == 1 and len(calls) == 1 + 3  # then only each batch's history items


def test_history_padding_and_duplicates_do_not_change_the_mean_user_vector():
    model = _model(user_ids=False)
    plain = model.user_vectors(torch.tensor([[1, 2]]))
    padded = model.user_vectors(torch.tensor([[0, 0, 1, 2]]))
    torch.testing.assert_close(plain, padded)
    assert not torch.allclose(plain, model.user_vectors(torch.tensor([[1, 1]])))


def test_transformer_history_pooling_handles_empty_histories():
    model = _model(history="transformer")
    out = model.user_vectors(torch.tensor([[0, 0, 0], [0, 1, 2]]), torch.tensor([0, 1]))
    assert torch.isfinite(out).all() and out.shape == (2, 8)


def test_masking_a_feature_removes_its_information():
    model = _model()
    items = torch.tensor([1, 2])
    n_features = len(model.feature_names)
    assert model.feature_names == ("item_id", "title", "genres")
    hide_text = torch.zeros(2, n_features, dtype=torch.bool)
    hide_text[:, 1] = True
    before = model.item_vectors(items, hide_text)
    model.inputs.text[1:3] += 5.0  # a different text must not matter once it is hidden
    torch.testing.assert_close(model.item_vectors(items, hide_text), before)
    assert not torch.allclose(model.item_vectors(items), model.item_vectors(items, hide_text))


def test_cold_items_get_vectors_from_their_features_alone():
    config = TwoTowerConfig(dim=8, hidden=16, dropout=0.0, text=("title",), categorical=())
    known = torch.tensor([False, True, True, True, True, True, False])  # item 6 never trained
    model = _retriever(config, _inputs(config, known))
    before = model.item_vectors()
    with torch.no_grad():
        model.model.item_tower.bags.collection.embedding_bags["t_item_id"].weight.add_(1.0)
    after = model.item_vectors()
    torch.testing.assert_close(after[6], before[6])  # no ID row is read for the cold item
    assert not torch.allclose(after[1], before[1])


def test_sampled_softmax_with_log_q_matches_a_hand_computation():
    users = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.tensor([math.log(0.5), math.log(0.1)])
    got = sampled_softmax(users, candidates, torch.tensor([0]), 1.0, log_q)
    logits = [1.0 - math.log(0.5), 0.0 - math.log(0.1)]
    want = -logits[0] + math.log(math.exp(logits[0]) + math.exp(logits[1]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    plain = sampled_softmax(users, candidates, torch.tensor([0]), 1.0)
    assert plain.item() == pytest.approx(-1 + math.log(math.e + 1), rel=1e-6)


def test_info_nce_is_low_for_matching_views_and_symmetric():
    view = torch.eye(3)
    assert info_nce(view, view, 0.05).item() < 1e-6
    shuffled = view[[1, 2, 0]]
    assert info_nce(view, shuffled, 0.05).item() > 10
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert info_nce(a, b, 0.5).item() == pytest.approx(info_nce(b, a, 0.5).item(), rel=1e-6)


def test_log_inclusion_probability_by_hand():
    counts = np.array([0, 3, 1, 0])  # item 3 is never a positive
    got = np.exp(_log_inclusion(counts, batch=2, uniform=1))
    p = np.array([0, 0.75, 0.25, 0])
    want = 1 - (1 - p) ** 2 * (1 - 1 / 3)
    np.testing.assert_allclose(got[1:], want[1:])


def test_categorical_codes_pad_lists_scalars_and_missing_values():
    values = pd.Series([["a", "b", "a"], "b", None, [], ["c", "a", "d"]], dtype=object)
    codes, size = categorical_codes(values, max_values=2)
    assert size == 3  # "d" is cut by max_values, so it is never coded
    np.testing.assert_array_equal(codes, [[-1, -1], [0, 1], [1, -1], [-1, -1], [-1, -1], [2, 0]])


def _two_tower_config(config, tiny_model_dir, tmp_path, loss=None, lr_groups=None,
                      **two_tower):
    raw = config_to_dict(config)
    raw["model"] = {"name": "two_tower", "two_tower": {
        "dim": 16, "hidden": 32, "max_len": 12, "text": ["title"],
        "encoder": {"path": str(tiny_model_dir), "cache_dir": str(tmp_path / "cache")},
        **two_tower}}
    raw["train"].update(epochs=6, lr=0.01, batch_size=32, loss={"temperature": 0.1, **(loss or {})},
                        lr_groups=lr_groups or {})
    return config_from_dict(raw)


def test_task_yields_every_training_transition_once_per_epoch(config, tiny_model_dir, tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path)
    _, split = load_data(cfg)
    task = TwoTowerTask(None, cfg.train.loss, split, cfg.model.two_tower.max_len, batch_size=16)
    seen = []
    for history, users, targets in task.batches():
        for h, u, t in zip(history.numpy(), users.numpy(), targets.numpy(), strict=True):
            train = split.train[u]
            prefix = h[h > 0]
            assert train[len(prefix)] == t and np.array_equal(train[: len(prefix)], prefix)
            seen.append((u, len(prefix)))
    expected = sum(max(len(s) - 1, 0) for s in split.train)
    assert len(seen) == len(set(seen)) == expected == len(task.rows)


@pytest.mark.parametrize("masking", ["none", "correlated"])
def test_fit_learns_the_successor_pattern_and_reloads(config, tiny_model_dir, tmp_path, masking,
                                                      monkeypatch):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path,
                            loss={"uniform_negatives": 8,
                                  "masking": {"kind": masking, "batch_size": 16}})
    result = fit(cfg)
    test = result.metrics["test"]
    assert test["ndcg@10"] > 0.3  # popularity is near 0.1 here; the next item is learnable
    model, _, split = load_run(result.run_dir / "checkpoint" / "best")
    history = torch.as_tensor(np.array([split.train[0][-3:]]))
    first = model.score(history, torch.tensor([0]))
    assert list(model.state_dict()) == [name for name, _ in model.named_parameters()]
    # ^ the checkpoint holds parameters only: the catalogue comes from the inputs layer, and a
    # rebuild takes its text vectors from the cache instead of running the encoder again
    monkeypatch.setattr("recsys.inputs.text_vectors._run", _no_encoding)
    assert torch.equal(first, load_run(result.run_dir / "checkpoint" / "best")[0].score(
        history, torch.tensor([0])))
    export_embeddings(result.run_dir, tmp_path / "emb")
    items = read_store(tmp_path / "emb" / "items")
    assert items.meta["model"] == "two_tower" and items.meta["normalized"] is True
    np.testing.assert_allclose(items.vectors, model.item_vectors()[1:].detach().numpy(), atol=1e-6)


def _no_encoding(*args, **kwargs):
    raise AssertionError("the text encoder ran: the cache was not used")


def test_missing_attribute_is_a_clear_error(config, tiny_model_dir, tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path, categorical=["brand"])
    dataset, split = load_data(cfg)
    with pytest.raises(ValueError, match="no attribute 'brand'"):
        build_tower_inputs(cfg.model.two_tower, dataset.items, None, split.users.ids,
                           split.train_item_counts)


def test_items_without_text_get_zero_text_vectors(config, tiny_model_dir, tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path)
    dataset, split = load_data(cfg)
    items = dataset.items.copy()
    items.loc[2, "title"] = None
    inputs = build_tower_inputs(cfg.model.two_tower, items, None, split.users.ids,
                                split.train_item_counts)
    assert torch.all(inputs.text[0] == 0) and torch.all(inputs.text[3] == 0)
    assert torch.allclose(inputs.text[1].norm(dim=-1), torch.ones(1))


def test_id_dropout_hides_ids_in_training_only():
    model = _model(id_dropout=1.0)
    items = torch.tensor([1, 2, 3])
    eval_vectors = model.item_vectors(items)
    with torch.no_grad():
        model.model.item_tower.bags.collection.embedding_bags["t_item_id"].weight.add_(1.0)
    assert not torch.allclose(model.item_vectors(items), eval_vectors)  # eval reads the ID
    model.train()
    hidden = model.item_vectors(items)
    with torch.no_grad():
        model.model.item_tower.bags.collection.embedding_bags["t_item_id"].weight.add_(1.0)
    torch.testing.assert_close(model.item_vectors(items), hidden)  # training never does


def test_user_attributes_are_aligned_to_split_rows_and_change_the_user_vector():
    config = TwoTowerConfig(dim=8, hidden=16, dropout=0.0, text=(), categorical=(),
                            user_ids=False, user_categorical=("gender",))
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red kit", "steel drill"]})
    users = pd.DataFrame({"user_id": ["u2", "u1"], "gender": ["F", "M"]})
    inputs = build_tower_inputs(config, items, users,
                                ["u1", "u2", "u3"], np.array([0, 1, 1]))
    assert inputs.user_categorical["gender"][:, 0].tolist() == [0, 1, -1]  # u1 M, u2 F, u3 none
    assert inputs.user_vocab_sizes == {"gender": 2}
    with pytest.raises(ValueError, match="no users.parquet"):
        build_tower_inputs(config, items, None, ["u1"], np.array([0, 1, 1]))
    model = _retriever(config, inputs)
    history = torch.tensor([[1, 2], [1, 2]])
    u1, u2 = model.user_vectors(history, torch.tensor([0, 1]))
    assert not torch.allclose(u1, u2)  # same history, different gender


def test_users_with_a_single_interaction_give_no_training_example():
    from recsys.data.split import leave_one_out

    rows = [("solo", "a", 1), *(("u", item, t) for t, item in enumerate("abcde", start=1))]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    split = leave_one_out(frame, pd.Series(list("abcde")))
    task = TwoTowerTask(None, LossConfig(), split, max_len=4, batch_size=8)  # batches only
    batches = list(task.batches())
    assert len(task) == 1 and len(batches) == 1
    history, users, targets = batches[0]
    assert users.tolist() == [1, 1] and targets.tolist() == list(split.items.index(["b", "c"]))


def test_a_run_saved_before_the_redesign_still_loads_and_scores_the_same(config, tiny_model_dir,
                                                                         tmp_path):
    cfg = _two_tower_config(config, tiny_model_dir, tmp_path)
    result = fit(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)))
    best = result.run_dir / "checkpoint" / "best"
    model, _, split = load_run(best)
    history = torch.as_tensor(np.array([split.train[0][-3:]]))
    want = model.score(history, torch.tensor([0]))
    # as the code before issue 16 wrote it: a bare model's weights, loss keys in the model
    weights = load_file(best / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in weights.items()},
              best / "model.safetensors")
    doc = json.loads((best / "state.json").read_text())
    loss = doc["config"]["train"].pop("loss")
    doc["config"]["model"]["two_tower"].update(temperature=loss["temperature"], text_lr=5e-5,
                                               masking=loss["masking"])
    (best / "state.json").write_text(json.dumps(doc))
    old, old_config, _ = load_run(best)
    assert old_config.train.loss.temperature == 0.1 and old_config.train.lr_groups == {}
    torch.testing.assert_close(old.score(history, torch.tensor([0])), want)
