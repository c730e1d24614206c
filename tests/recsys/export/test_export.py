import dataclasses
import math

import numpy as np
import pytest
import torch

from features.sequences import pad_left
from recsys.cli import main
from recsys.export.embeddings import export_embeddings, full_histories, user_vectors
from recsys.recipes import load_run
from recsys.train.loop import fit
from serving.store import read_store


def _short(config, epochs=2, **model):
    train = dataclasses.replace(config.train, epochs=epochs)
    model = dataclasses.replace(config.model, **model)
    return dataclasses.replace(config, train=train, model=model)


def test_exported_stores_hold_the_models_item_and_user_vectors(config, tmp_path):
    run = fit(_short(config)).run_dir
    summary = export_embeddings(run, tmp_path / "emb")
    model, _, split = load_run(run / "checkpoint" / "best")

    items = read_store(tmp_path / "emb" / "items")
    assert len(items.ids) == split.n_items == summary["items"] == 30
    assert list(items.ids) == list(split.items.ids)
    np.testing.assert_array_equal(items.vectors, model.item_vectors()[1:].detach().numpy())
    assert items.meta["model"] == "sasrec" and items.meta["run_id"] == run.name
    assert items.meta["dim"] == summary["dim"] == 32
    assert items.meta["normalized"] is False

    users = read_store(tmp_path / "emb" / "users")
    assert len(users.ids) == len(split.users) == summary["users"] == 120
    assert list(users.ids) == list(split.users.ids)
    assert summary["users_path"] == str(users.path)

    # one evaluated user: the vector comes from the whole sequence, test target last
    row = int(split.eval_users("test")[0])
    history = full_histories(split)[row]
    assert len(history) == len(split.train[row]) + 2
    assert history[-1] == split.test_target[row] and history[-2] == split.valid_target[row]
    with torch.inference_mode():
        inputs = torch.as_tensor(pad_left([history], model.max_len))
        expected = model.user_vectors(inputs, torch.tensor([row]))[0].numpy()
        prefix = torch.as_tensor(pad_left(split.history("test", [row]), model.max_len))
        without_test = model.user_vectors(prefix)[0].numpy()
    np.testing.assert_allclose(users.vectors[row], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(users.vectors[row], without_test, atol=1e-3)
    # batching (uneven last batch, different pad widths) does not change any vector
    np.testing.assert_allclose(user_vectors(model, split, batch_size=7), users.vectors,
                               rtol=1e-5, atol=1e-5)


def test_export_defaults_to_the_run_dir_and_the_cli_prints_a_summary(config, capsys):
    run = fit(_short(config, epochs=1)).run_dir
    assert main(["export", "--run", str(run), "--what", "embeddings"]) == 0
    out = capsys.readouterr().out
    assert "items" in out and "users" in out and "120" in out
    for name, count in (("items", 30), ("users", 120)):
        data = read_store(run / "embeddings" / name)
        assert data.vectors.shape == (count, 32)
        assert np.isfinite(data.vectors).all()
        assert not math.isclose(float(np.linalg.norm(data.vectors[0])), 0.0)


def test_popularity_has_no_embeddings_to_export(config, capsys):
    run = fit(_short(config, name="popularity")).run_dir
    with pytest.raises(ValueError, match="model 'popularity' has no vectors to export"):
        export_embeddings(run)
    assert not (run / "embeddings").exists()
    assert main(["export", "--run", str(run), "--what", "embeddings"]) == 2
    assert "no vectors to export" in capsys.readouterr().err
