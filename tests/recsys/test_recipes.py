"""The one table of model kinds: every model section has its row, nothing else asks the name."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from recsys.config import ModelConfig, config_from_dict, config_to_dict
from recsys.recipes import RECIPES, recipe_of, selection_metric
from recsys.train.loop import fit

RECSYS = Path(__file__).resolve().parents[2] / "recsys"


def test_every_model_section_has_a_row_and_every_row_a_section():
    sections = {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}
    assert {name for name, _ in RECIPES} == sections


@pytest.mark.parametrize("task, selection", [("ctr", "auc"), ("listwise", "ndcg@10")])
def test_the_reranker_row_follows_its_task(task, selection):
    config = config_from_dict({"model": {"name": "reranker", "reranker": {"task": task}}})
    assert recipe_of(config) is RECIPES[("reranker", task)]
    assert selection_metric(config) == selection


def test_no_module_but_the_table_compares_the_model_name():
    asks = re.compile(r"model\.name\s*(==|!=|in\b|not in\b)")
    found = [f"{path.relative_to(RECSYS)}:{n}" for path in RECSYS.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if asks.search(line) and path.name != "recipes.py"]
    assert found == []


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    dim: int = 16  # item embedding size


class Toy(torch.nn.Module):
    """Scores the next item from the last one alone: a bigram model over item embeddings."""

    max_len = 12

    def __init__(self, config: ToyConfig, n_items: int):
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, config.dim, padding_idx=0)

    def position_scores(self, inputs, labelled):  # (B, L), (B, L) -> (labelled, n_items + 1)
        return self.items(inputs)[labelled] @ self.items.weight.T

    def score(self, history, users=None):  # (B, L) -> (B, n_items + 1)
        return self.items(history[:, -1]) @ self.items.weight.T


@dataclasses.dataclass(frozen=True)
class ToyModelConfig(ModelConfig):
    toy: ToyConfig | None = None


def test_a_toy_model_added_as_a_section_a_module_and_one_row_trains(config, monkeypatch):
    sasrec = RECIPES[("sasrec", None)]
    monkeypatch.setitem(RECIPES, ("toy", None), dataclasses.replace(
        sasrec, model=lambda section, dataset, split: Toy(section, split.n_items)))
    toy = dataclasses.replace(config, model=ToyModelConfig(name="toy"))
    result = fit(toy)
    assert result.metrics["model"] == "toy" and result.metrics["epochs"] == config.train.epochs
    assert result.metrics["test"]["ndcg@10"] > 0.5  # the successor pattern is a bigram
    assert config_to_dict(toy)["model"] == {"name": "toy", "toy": {"dim": 16}}


def test_a_task_with_parameters_of_its_own_is_refused_not_left_untrained(config, monkeypatch):
    sasrec = RECIPES[("sasrec", None)]

    def with_temperature(config, dataset, split, model):
        task = sasrec.task(config, dataset, split, model)
        task.temperature = torch.nn.Parameter(torch.ones(()))  # never optimized nor saved
        return task

    monkeypatch.setitem(RECIPES, ("sasrec", None), dataclasses.replace(sasrec,
                                                                       task=with_temperature))
    with pytest.raises(ValueError, match="parameters of its own"):
        fit(config)
