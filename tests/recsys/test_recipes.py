"""The one table of model kinds: every model section has its row, nothing else asks the name."""

import dataclasses
import re
from pathlib import Path

import pytest

from recsys.config import ModelConfig, config_from_dict
from recsys.recipes import RECIPES, recipe_of, selection_metric

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
