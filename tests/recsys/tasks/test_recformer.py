"""Recformer fine-tuning through the one loop, and a tiny Recformer run down the whole path:
evaluation, faiss index, candidates, listwise reranker, reranked candidates, embeddings, serving."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from recsys.config import ConfigError, config_from_dict, config_to_dict, read_yaml
from recsys.export.embeddings import export_embeddings
from recsys.pipeline import run_pipeline
from recsys.recipes import evaluate_run, load_data, load_run, new_model, training_task
from recsys.tasks.hooks import Hook
from recsys.tasks.recformer import RecformerTask
from recsys.train.loop import fit
from recsys.train.starts import finished_run
from serving.app import Limits, create_app
from serving.candidates import CandidateLookup
from serving.lookup import EmbeddingStore
from tests.conftest import write_successor_csv
from tests.recsys.test_pipeline import _reranker


def _recformer_config(config, tiny_model_dir, epochs=2, **section):
    raw = config_to_dict(config)
    raw["model"] = {"name": "recformer", "recformer": {
        "backbone": str(tiny_model_dir), "layers": 1, "attributes": ["title"],
        "max_attr_tokens": 8, "max_item_tokens": 12, "max_tokens": 48, "max_items": 8,
        "max_item_positions": 9, "encode_batch": 16, **section}}
    raw["train"].update(epochs=epochs, batch_size=16, lr=0.005)
    return config_from_dict(raw)


class FixedScores(torch.nn.Module):
    """Scores every history the same way: row b of `scores` (B, n_items + 1)."""

    max_len = 4

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def score(self, history):
        return self.scores


@pytest.mark.parametrize("exclude_history", [False, True])
def test_the_loss_leaves_out_padding_and_with_exclude_history_the_historys_items(
        exclude_history):
    scores = torch.tensor([[9.0, 0.3, 0.9, 0.1, 0.5], [9.0, 0.2, 0.4, 0.8, 0.6]],
                          requires_grad=True)
    history = torch.tensor([[0, 0, 2, 3], [0, 4, 3, 1]])  # left-padded; row 2 holds its target
    targets = torch.tensor([1, 1])
    task = RecformerTask(FixedScores(scores), SimpleNamespace(train=[]), 2, temperature=0.1,
                         exclude_history=exclude_history)
    kept = ([[1, 2, 3, 4], [1, 2, 3, 4]] if not exclude_history
            else [[1, 4], [1, 2]])  # column 0 never; history items, but never the target
    expected = torch.stack([
        torch.logsumexp(scores[b, kept[b]] / 0.1, 0) - scores[b, 1] / 0.1 for b in range(2)])
    loss = task((history, targets))
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    loss.backward()
    reached = scores.grad != 0
    assert [row.nonzero().squeeze(1).tolist() for row in reached] == kept  # dropped: no gradient


def test_fine_tuning_refreshes_the_item_table_in_stage_1_only_and_the_run_reloads(
        config, tiny_model_dir, monkeypatch):
    from recsys.inputs.recformer import RecformerRetriever

    refreshed = []
    original = RecformerRetriever.refresh_items

    def counting(self):
        refreshed.append(self.item_table.clone())
        original(self)

    monkeypatch.setattr(RecformerRetriever, "refresh_items", counting)
    cfg = _recformer_config(config, tiny_model_dir, epochs=4, stage1_epochs=2)
    result = fit(cfg)
    assert len(refreshed) == 2  # epochs 0 and 1; stage 2 (epochs 2, 3) keeps the table
    assert torch.all(refreshed[0] == 0) and not torch.equal(refreshed[1], refreshed[0])
    test = result.metrics["test"]
    assert test["ndcg@10"] > 0.35 and result.metrics["epochs"] == 4  # popularity: 0.20 here
    model, _, _ = load_run(result.run_dir / "checkpoint" / "best")
    assert model.item_table[1:].abs().sum() > 0  # the table comes back with the weights
    assert evaluate_run(result.run_dir)["ndcg@10"] == pytest.approx(test["ndcg@10"], abs=1e-6)
    assert len(refreshed) == 2  # rebuilding a run never re-encodes its catalogue


def test_a_tiny_recformer_goes_down_the_whole_path(config, tiny_model_dir, tmp_path,
                                                   run_server):
    retriever = _recformer_config(config, tiny_model_dir)
    retriever = dataclasses.replace(retriever, export=dataclasses.replace(retriever.export,
                                                                          k=10))
    result = run_pipeline(retriever, _reranker(config, tiny_model_dir, tmp_path))
    ran = [s.name for s in result.stages]
    assert ran == ["prepare", "retriever", "evaluate", "index", "candidates", "reranker",
                   "reranked candidates"]
    assert result.rerank_test["retrieval_ndcg@10"] == result.test["ndcg@10"]

    export_embeddings(result.run_dir, tmp_path / "emb")
    store = EmbeddingStore(tmp_path / "emb" / "items", unknown="zeros")
    model, _, split = load_run(Path(result.run_dir) / "checkpoint" / "best")
    vectors, found = store.get(list(split.items.lookup(np.array([1]))))  # item index 1
    assert found.all()
    np.testing.assert_allclose(vectors[0], model.item_vectors()[1].numpy(), atol=1e-6)
    candidates = Path(next(s.output for s in result.stages if s.name == "candidates"))
    app = create_app(store, CandidateLookup(candidates), Limits())
    with httpx.Client(base_url=run_server(app), timeout=10) as client:
        user = split.users.ids[0]
        got = client.get(f"/candidates/{user}")
        assert got.status_code == 200, got.text
        assert len(got.json()["candidates"]) == 10


def test_a_repeat_bias_learns_to_offset_the_historys_items_alone_and_reloads(config,
                                                                            tiny_model_dir):
    cfg = _recformer_config(config, tiny_model_dir, epochs=1, repeat_bias=True)
    result = fit(cfg)
    model, _, split = load_run(result.run_dir / "checkpoint" / "best")
    bias = model.repeat.detach().clone()
    assert bias != 0  # it trained (from 0)
    history = torch.tensor([[0, 0, 3, 5], [0, 2, 7, 2]])  # left-padded, a repeat in row 2
    with torch.no_grad():
        scores = model.score(history)
        model.repeat.zero_()
        plain = model.score(history)
    offset = torch.zeros_like(plain)
    offset[0, [0, 3, 5]] = bias  # the padding column 0 too: it is never ranked
    offset[1, [0, 2, 7]] = bias  # once per item, however often it recurs
    torch.testing.assert_close(scores - plain, offset)


def test_a_repeat_bias_is_refused_where_it_cannot_learn(config, tiny_model_dir):
    with pytest.raises(ConfigError, match="repeat_bias"):
        _recformer_config(config, tiny_model_dir, task="pretrain", repeat_bias=True)
    raw = config_to_dict(_recformer_config(config, tiny_model_dir, repeat_bias=True))
    raw["train"]["loss"] = {**raw["train"].get("loss", {}), "exclude_history": True}
    cfg = config_from_dict(raw)
    dataset, split = load_data(cfg)
    with pytest.raises(ValueError, match="repeat_bias.*exclude_history"):
        training_task(cfg, dataset, split, new_model(cfg, dataset, split))


def test_pre_training_is_a_run_of_its_own_whose_encoder_starts_fine_tuning(config,
                                                                          tiny_model_dir):
    pretrain = _recformer_config(config, tiny_model_dir, epochs=1, task="pretrain",
                                 pooling="mean")
    result = fit(pretrain)
    assert set(result.metrics["test"]) >= {"ndcg@10", "recall@10"}  # zero-shot: pre-trained
    trained, _, _ = load_run(result.run_dir / "checkpoint" / "best")
    assert trained.mlm_head is not None and trained.item_table[1:].abs().sum() > 0

    finetune = _recformer_config(config, tiny_model_dir, pooling="mean",
                                 init_from=str(result.run_dir))
    dataset, split = load_data(finetune)
    torch.manual_seed(0)
    model = new_model(finetune, dataset, split)
    assert model.mlm_head is None
    assert not torch.equal(model.model.token_types.weight, trained.model.token_types.weight)
    training_task(finetune, dataset, split, model)  # a run that starts loads the encoder
    for name, weight in model.model.state_dict().items():
        assert torch.equal(weight, trained.model.state_dict()[name]), name


def test_the_target_itself_in_the_pre_training_corpus_is_refused(config, tiny_model_dir):
    own = {"source": config.data.source, "raw": config.data.raw, "dir": config.data.dir,
           "mapping": config.data.mapping}
    cfg = _recformer_config(config, tiny_model_dir, task="pretrain", pretrain_corpus=[own])
    dataset, split = load_data(cfg)
    model = new_model(cfg, dataset, split)
    with pytest.raises(ValueError, match=r"model.recformer.pretrain_corpus\[0\].*target"):
        training_task(cfg, dataset, split, model)


def test_a_fine_tuning_config_naming_a_pre_training_config_trains_it_once(
        config, tiny_model_dir, tmp_path):
    pretrain = _recformer_config(config, tiny_model_dir, epochs=1, task="pretrain")
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(pretrain)))
    finetune = _recformer_config(config, tiny_model_dir, epochs=1, init_from=str(path))
    first = fit(finetune)
    started = read_yaml(first.run_dir / "config.yaml", "run")["model"]["recformer"]["init_from"]
    assert finished_run(pretrain) == Path(started)  # trained first, recorded by its dir
    threads = dataclasses.replace(pretrain.train, threads=pretrain.train.threads + 3)
    assert finished_run(dataclasses.replace(pretrain, train=threads)) == Path(started)
    faster = dataclasses.replace(pretrain.train, lr=pretrain.train.lr * 2)
    assert finished_run(dataclasses.replace(pretrain, train=faster)) is None
    again = fit(finetune)
    assert read_yaml(again.run_dir / "config.yaml", "run") == read_yaml(
        first.run_dir / "config.yaml", "run")  # the finished pre-training run is reused
    assert len(list(Path(pretrain.train.runs_dir).glob("*/metrics.json"))) == 3


class Stop(RuntimeError):
    pass


class StopAt(Hook):
    """Stops the run at the start of epoch `epoch` (the last epoch's checkpoint stays)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.epoch:
            raise Stop(f"stopped before epoch {ctx.epoch + 1}")


@pytest.mark.parametrize("section", [
    {"refresh_every": 2, "stage1_epochs": 3},  # refreshes at epochs 0 and 2, stage 2 at 3
    {"task": "pretrain"},  # masks and cuts from the RNG, the table refreshed at epoch ends
    {"repeat_bias": True},  # the bias is a weight like the others
])
def test_a_stopped_recformer_run_resumes_to_the_same_weights_table_and_metrics(
        config, tiny_model_dir, section):
    cfg = _recformer_config(config, tiny_model_dir, epochs=4, **section)
    with pytest.raises(Stop):
        fit(cfg, hooks=[StopAt(2)])
    (run_dir,) = Path(cfg.train.runs_dir).iterdir()
    resumed = fit(None, resume=run_dir, hooks=[StopAt(99)])  # the hooks it started with
    straight = fit(cfg, hooks=[StopAt(99)])
    assert resumed.metrics["test"] == straight.metrics["test"]
    assert resumed.metrics["valid"] == straight.metrics["valid"]
    mine, theirs = (load_file(r.run_dir / "checkpoint" / "last" / "model.safetensors")
                    for r in (resumed, straight))
    assert mine.keys() == theirs.keys() and "item_table" in mine
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name


def test_a_pre_training_run_resumes_only_on_the_corpus_it_started_with(
        config, tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    write_successor_csv(other / "raw", seed=0)
    corpus_set = {"source": "tabular", "raw": str(other / "raw"), "dir": str(other / "dataset"),
                  "mapping": config.data.mapping}
    cfg = _recformer_config(config, tiny_model_dir, epochs=2, task="pretrain",
                            pretrain_corpus=[corpus_set])
    with pytest.raises(Stop):
        fit(cfg, hooks=[StopAt(1)])
    (run_dir,) = Path(cfg.train.runs_dir).iterdir()
    write_successor_csv(other / "raw", seed=1)  # the set changes: prepared again, new hash
    with pytest.raises(ValueError, match=f"dataset {other / 'dataset'} has content hash"):
        fit(None, resume=run_dir, hooks=[StopAt(99)])
    write_successor_csv(other / "raw", seed=0)  # back as it was: the run goes on
    assert fit(None, resume=run_dir, hooks=[StopAt(99)]).metrics["epochs"] == 2
