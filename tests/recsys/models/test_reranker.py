"""Reranker (DCN-v2 CTR model): its parts by hand, its features against the tabular ones, and a
seeded tiny run end to end through the one training loop."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.config import RerankerConfig, config_from_dict
from recsys.data.ctr import ctr_split
from recsys.inputs.reranker import RerankerInputs, RerankerScorer, flat_features
from recsys.models.reranker import CrossNet, Reranker
from recsys.recipes import evaluate_run
from recsys.train.loop import fit

N_ITEMS, N_USERS = 6, 4


def _inputs() -> RerankerInputs:
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(N_ITEMS + 1, 1, 8, generator=gen)
    text[0] = 0
    genres = torch.tensor([[-1, -1], [0, 1], [1, -1], [2, -1], [0, 2], [-1, -1], [1, 2]])
    team = torch.tensor([[0], [1], [0], [-1]])
    return RerankerInputs(text, {"genres": genres}, {"genres": 3}, {"team": team}, {"team": 2},
                          item_known=torch.tensor([False, True, True, True, True, True, False]),
                          user_known=torch.tensor([True, True, True, False]))


def _model(**overrides) -> RerankerScorer:
    settings = {"dim": 4, "categorical": ("genres",), "user_categorical": ("team",),
                "dense_hidden": (8,), "over_hidden": (8,), "dropout": 0.0, "max_len": 3}
    config = RerankerConfig(**{**settings, **overrides})
    inputs = dataclasses.replace(_inputs(), user_ids=config.user_ids, item_ids=config.item_ids)
    torch.manual_seed(0)
    return RerankerScorer(Reranker(config, inputs.sizes), inputs).eval()


def _lists(model: RerankerScorer, users, items, history, stats, dropout=(0.0, 0.0)):
    """The model's features of pairs as lists of one."""
    return model.inputs.lists(users, items[:, None], history, stats[:, None], *dropout)


def _batch():
    users = torch.tensor([0, 1, 3])
    items = torch.tensor([1, 6, 2])
    history = torch.tensor([[0, 2, 3], [0, 0, 0], [1, 1, 4]])
    stats = torch.tensor([[0.5, 0.7], [0.0, 0.75], [1.0, 0.2]])
    return users, items, history, stats


def test_forward_gives_one_logit_per_pair_and_ignores_left_padding():
    model = _model()
    users, items, history, stats = _batch()
    logits = model(users, items, history, stats)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    padded = torch.cat([torch.zeros(3, 4, dtype=torch.long), history], dim=1)  # cut to max_len
    torch.testing.assert_close(model(users, items, padded, stats), logits)
    longer = _model(max_len=5)  # a longer window pads more zeros: same mean, same logits
    longer.load_state_dict(model.state_dict())
    torch.testing.assert_close(longer(users, items, padded[:, -5:], stats), logits)


def test_recent_popularity_is_one_more_listwise_input_and_refused_for_ctr():
    model = _model(task="listwise", history_stats=False, recent_popularity_days=7)
    assert model.model.dense.stats.in_features == 1  # no history stats, no retrieval features
    with pytest.raises(ValueError, match="recent_popularity_days is a listwise input"):
        _model(recent_popularity_days=7)


def test_unknown_users_and_items_read_no_id_row():
    model = _model()
    batch = _batch()  # user 3 and item 6 have no trained ID row
    lists = _lists(model, *batch)
    sparse = model.model.sparse(lists.users, lists.items)  # (B, S, dim): user_id, team, item_id,
    assert sparse.shape == (3, 4, 4)  # genres
    assert torch.all(sparse[2, 0] == 0) and torch.all(sparse[1, 2] == 0)
    assert sparse[0, 0].abs().sum() > 0 and sparse[0, 2].abs().sum() > 0
    dropped = _lists(model, *batch, dropout=(1.0, 0.0))  # what training with dropout 1 reads
    dropped = model.model.sparse(dropped.users, dropped.items)
    assert torch.all(dropped[:, 0] == 0) and torch.equal(dropped[:, 1:], sparse[:, 1:])
    assert _model(user_ids=False, item_ids=False).model.sparse.count == 2  # attribute bags only
    training = _model(user_id_dropout=1.0).train()  # dropout 0 elsewhere: only the ID draw
    unknown = dataclasses.replace(training.inputs, user_known=torch.zeros(N_USERS, dtype=bool))
    no_user_ids = RerankerScorer(_model().model, unknown).eval()  # same weights, no user known
    torch.testing.assert_close(training(*batch), no_user_ids(*batch))  # the scorer's own path
    assert not torch.allclose(training.eval()(*batch), no_user_ids(*batch))


def test_history_projection_equals_projecting_the_mean_text():
    model = _model()
    users, items, history, stats = _batch()
    dense, text = model.model.dense, model.inputs.text.flatten(1)  # (n_items + 1, text_width)
    pooled = _mean_text(text, history)  # (B, text_width)
    hidden = dense.item_text(text[items]) + dense.history_text(pooled) + dense.stats(stats)
    got = dense(text[items], dense.history_hidden(_lists(model, *_batch())), stats)
    torch.testing.assert_close(got, dense.mlp(torch.relu(hidden)))
    np.testing.assert_allclose(pooled[2].numpy(), text[[1, 1, 4]].mean(0).numpy(), rtol=1e-6)


def _mean_text(text: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(B, text_width) mean text of the present (non-zero) history items, 0 for none."""
    present = (history > 0).float()[..., None]
    return (text[history] * present).sum(1) / present.sum(1).clamp(min=1.0)


def test_cross_layer_by_hand():
    net = CrossNet(2, layers=1)
    with torch.no_grad():
        net.weights[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net.weights[0].bias.copy_(torch.tensor([0.5, -1.0]))
    x0 = torch.tensor([[1.0, 3.0]])
    # W x0 + b = [7.5, 2]; x0 * that + x0 = [8.5, 9]
    torch.testing.assert_close(net(x0), torch.tensor([[8.5, 9.0]]))
    low = CrossNet(6, layers=2, rank=2)
    assert low(torch.randn(3, 6)).shape == (3, 6)


def test_tabular_features_are_the_model_features():
    rows = [(f"u{u}", f"i{(u + k) % N_ITEMS}", 10 * k + u, 5 if (u + k) % 2 else 1)
            for u in range(N_USERS) for k in range(8)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    split = ctr_split(df, pd.Series([f"i{i}" for i in range(N_ITEMS)]), max_len=3,
                      valid_from=0.5, test_from=0.75)
    model = _model()
    part = split.test
    flat = flat_features(model.config, _inputs(), part)
    names = flat.names
    pooled = _mean_text(_inputs().text.flatten(1), torch.as_tensor(part.history)).numpy()
    cols = [i for i, n in enumerate(names) if n.startswith("history_text_")]
    np.testing.assert_allclose(flat.matrix[:, cols], pooled, rtol=1e-5, atol=1e-6)
    assert names[:2] == ["user_id", "team"] and flat.categorical[:2] == [0, 1]
    assert {"genres=0", "genres=1", "genres=2"} <= set(names)
    genre = flat.matrix[:, [names.index(f"genres={g}") for g in range(3)]]
    np.testing.assert_array_equal(genre.sum(1), [(_inputs().categorical["genres"][i] >= 0).sum()
                                                 for i in part.items])
    unknown = ~_inputs().user_known.numpy()[part.users]
    assert np.isnan(flat.matrix[unknown, 0]).all() and not np.isnan(flat.matrix[~unknown, 0]).any()
    np.testing.assert_array_equal(flat.matrix[:, -2:], part.stats)


def write_ctr_csv(folder, users: int = 48, items: int = 16, per_user: int = 12, seed: int = 0):
    """Users of team A like 'red' items, team B 'steel' items (rating 5, else 1), plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        team = user % 2
        for step, item in enumerate(rng.choice(items, per_user, replace=False)):
            liked = (item % 2 == team) != (rng.random() < 0.1)
            rows.append((f"u{user}", f"i{item}", 1_000 + 10 * step + user % 10, 5 if liked else 1))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user", "item", "ts", "stars"]).to_csv(folder / "events.csv",
                                                                     index=False)
    pd.DataFrame({"id": [f"i{i}" for i in range(items)],
                  "name": [f"{'red' if i % 2 == 0 else 'steel'} item {i}" for i in range(items)],
                  "kind": ["red" if i % 2 == 0 else "steel" for i in range(items)]}
                 ).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"uid": [f"u{u}" for u in range(users)],
                  "team": ["a" if u % 2 == 0 else "b" for u in range(users)]}
                 ).to_csv(folder / "users.csv", index=False)


def tiny_ctr_config(root, tiny_model_dir, **train):
    raw = {
        "data": {
            "source": "tabular", "raw": str(root / "raw"), "dir": str(root / "dataset"),
            "mapping": {
                "interactions": "events.csv", "items": "items.csv", "users": "users.csv",
                "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts",
                            "rating": "stars"},
                "item_columns": {"item_id": "id", "title": "name", "kind": "kind"},
                "user_columns": {"user_id": "uid", "team": "team"},
            },
            "ctr": {"valid_from": 0.6, "test_from": 0.8},
        },
        "model": {"name": "reranker", "reranker": {
            "dim": 8, "user_categorical": ["team"], "categorical": ["kind"], "text": ["title"],
            "max_len": 8, "dense_hidden": [16], "over_hidden": [16], "dropout": 0.0,
            "user_id_dropout": 0.2,
            "encoder": {"path": str(tiny_model_dir), "cache_dir": str(root / "cache")}}},
        "train": {"seed": 3, "epochs": 8, "batch_size": 32, "lr": 0.01, "patience": 100,
                  "threads": 1, "runs_dir": str(root / "runs"), **train},
        "tracking": {"experiment": "tests-ctr", "uri": f"sqlite:///{root / 'mlruns.db'}"},
    }
    return config_from_dict(raw)


@pytest.fixture
def ctr_config(tmp_path, tiny_model_dir):
    write_ctr_csv(tmp_path / "raw")
    return tiny_ctr_config(tmp_path, tiny_model_dir)


def test_tiny_reranker_learns_through_fit_and_selects_on_valid_auc(ctr_config):
    """Likes follow team x kind, so only an interaction of user and item features scores well."""
    result = fit(ctr_config)
    metrics, run = result.metrics, result.run_dir
    assert metrics["selection"] == "valid auc"
    assert metrics["test"]["auc"] > 0.8 and metrics["test"]["gauc"] > 0.8
    assert 0 < metrics["test"]["logloss"] < 0.6
    state = json.loads((run / "checkpoint" / "last" / "state.json").read_text())["state"]
    aucs = [r["valid_auc"] for r in state["history"]]
    assert state["best_epoch"] == int(np.argmax(aucs)) + 1
    assert metrics["valid"]["auc"] == pytest.approx(max(aucs))
    for name in ("calibration_test.png", "calibration_test.json", "training_curve.png"):
        assert (run / name).is_file(), name
    table = json.loads((run / "calibration_test.json").read_text())
    assert sum(table["count"]) == metrics["test"]["rows"]
    client = MlflowClient(ctr_config.tracking.uri)
    logged = client.get_run(result.run_id)
    assert logged.data.metrics["test_auc"] == pytest.approx(metrics["test"]["auc"])
    assert {"calibration_test.png", "metrics.json"} <= {a.path for a in
                                                        client.list_artifacts(result.run_id)}
    assert evaluate_run(run, "test") == metrics["test"]  # rebuilt from the run dir alone

