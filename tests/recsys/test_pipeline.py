"""`run_pipeline`: every stage on the tiny data, then reruns that reuse what did not change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys.config import config_from_dict, config_to_dict
from recsys.pipeline import run_pipeline, summary


def _reranker(config, tiny_model_dir, root, lr=0.01):
    raw = config_to_dict(config)
    raw["model"] = {"name": "reranker", "reranker": {
        "task": "listwise", "candidates": 10, "train_positions": 3,
        "history_stats": False, "blend": [0.0, 1.0], "dim": 8, "text": ["title"], "max_len": 8,
        "dense_hidden": [16], "over_hidden": [16], "dropout": 0.0,
        "encoder": {"path": str(tiny_model_dir), "cache_dir": str(root / "cache")}}}
    raw["train"].update(epochs=2, batch_size=32, lr=lr, loss={"list_size": 6})
    raw["export"]["k"] = 5  # of the retriever's top 10
    return config_from_dict(raw)


def _ran(result) -> list[str]:
    return [s.name for s in result.stages if not s.remembered]


@pytest.mark.private_data  # the first run prepares the dataset
def test_pipeline_reruns_only_the_stages_whose_inputs_changed(config, tiny_model_dir, tmp_path):
    retriever = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2),
                                    export=dataclasses.replace(config.export, k=10))
    rerank = _reranker(config, tiny_model_dir, tmp_path)
    first = run_pipeline(retriever, rerank)
    assert _ran(first) == ["prepare", "retriever", "evaluate", "index", "candidates",
                           "reranker", "reranked candidates"]
    assert first.rerank_test["retrieval_ndcg@10"] == first.test["ndcg@10"]
    text = summary(retriever, first)
    assert "retrieval + rerank" in text and "reranked candidates" in text

    again = run_pipeline(retriever, rerank)
    assert _ran(again) == ["evaluate"]  # the rebuild check always runs
    assert [s.output for s in again.stages] == [s.output for s in first.stages]
    assert again.test == first.test and "remembered" in summary(retriever, again)

    retuned = run_pipeline(retriever, _reranker(config, tiny_model_dir, tmp_path, lr=0.02))
    assert _ran(retuned) == ["evaluate", "reranker", "reranked candidates"]
    assert retuned.run_dir == first.run_dir

    candidates = Path(next(s.output for s in first.stages if s.name == "candidates"))
    (candidates / "_manifest.json").unlink()  # as if the export had been killed
    redone = run_pipeline(retriever)
    assert _ran(redone) == ["evaluate", "candidates"]  # an incomplete output is redone
    assert (candidates / "_manifest.json").is_file() and redone.rerank_test is None

    # other export settings: never the run's old candidates passed off as the new ones
    fewer = dataclasses.replace(retriever, export=dataclasses.replace(retriever.export, k=3))
    with pytest.raises(ValueError, match="export.k"):
        run_pipeline(fewer)
    elsewhere = dataclasses.replace(fewer, export=dataclasses.replace(
        fewer.export, out=str(tmp_path / "top3")))
    assert _ran(run_pipeline(elsewhere)) == ["evaluate", "candidates"]  # the index reads no k
    ranks = pq.read_table(tmp_path / "top3", columns=["rank"]).column("rank").to_numpy()
    assert ranks.max() == 3


@pytest.mark.private_data  # it edits events.csv
def test_pipeline_redoes_what_an_edited_raw_file_or_a_damaged_part_touches(config):
    retriever = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2),
                                    export=dataclasses.replace(config.export, k=10))
    first = run_pipeline(retriever)
    candidates = Path(next(s.output for s in first.stages if s.name == "candidates"))
    part = sorted(candidates.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-20])  # damaged after the export finished
    assert _ran(run_pipeline(retriever)) == ["evaluate", "candidates"]
    assert pq.read_table(part).num_rows > 0

    events = Path(config.data.raw) / "events.csv"
    events.write_text(events.read_text() + "u_new,i1,5000\nu_new,i2,5001\nu_new,i3,5002\n")
    edited = run_pipeline(retriever)  # not the old run, refused for its changed dataset
    assert _ran(edited) == ["prepare", "retriever", "evaluate", "index", "candidates"]
    assert edited.run_dir != first.run_dir
