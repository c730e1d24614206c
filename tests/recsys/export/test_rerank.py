"""Relevance reranking: the listwise loss and the rerank-within-top-K ranks by hand, candidate
lists that never read the future, and a seeded tiny retrieval + rerank run through `fit`, then
exported as reranked candidates."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from features.ids import IdMap
from recsys.config import RerankerConfig, config_from_dict, config_to_dict
from recsys.data.split import Split
from recsys.eval.rerank import paired_stderr, rerank_ranks
from recsys.export.embeddings import full_histories
from recsys.export.reranked import export_reranked, rerank_table
from recsys.inputs.rerank_lists import RerankData, _top_k, retrieve_lists, training_examples
from recsys.losses import listwise_softmax
from recsys.ranking import UNRANKED
from recsys.recipes import evaluate_run, load_data, load_run
from recsys.tasks.listwise import sample_columns
from recsys.train.loop import fit


def test_listwise_softmax_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [2.0, 0.0, 5.0]])
    positive = torch.tensor([1, 0])
    valid = torch.tensor([[True, True, False], [True, True, False]])
    # row 0: e^ln3 / (1 + 3) = 3/4 (the padding column takes no share); row 1: e^2 / (e^2 + 1)
    expected = (math.log(4 / 3) + math.log1p(math.exp(-2.0))) / 2
    assert listwise_softmax(logits, positive, valid).item() == pytest.approx(expected, rel=1e-6)
    assert listwise_softmax(logits[:1], positive[:1]).item() == pytest.approx(math.log(5 / 3))


def test_sampled_lists_put_the_positive_first_and_padding_last():
    torch.manual_seed(0)
    valid = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    cols = sample_columns(torch.tensor([2, 1]), valid, 3)
    assert cols[:, 0].tolist() == [2, 1]
    assert set(cols[0, 1:].tolist()) <= {0, 1, 3} and cols[1, 1].item() == 0
    assert not valid[1, cols[1, 2]]  # only two real candidates: the third is padding


def test_rerank_ranks_by_hand():
    scores = np.array([[0.1, 0.5, 0.9], [3.0, 2.0, 1.0], [0.5, 0.5, -np.inf]])
    target_rank = np.array([2, 7, 1])
    positive = np.array([2, -1, 1])  # user 1's target is outside the top 3: it keeps rank 7
    # user 0: its target (column 2) has the best rerank score; user 2: a tie with column 0,
    # which was retrieved earlier and stays ahead
    np.testing.assert_array_equal(rerank_ranks(target_rank, positive, scores), [0, 7, 1])


def test_paired_stderr_by_hand():
    ranks, base = np.array([0, 20, 1]), np.array([1, 0, 1])
    diff = [1 - 1 / math.log2(3), -1.0, 0.0]  # per-user NDCG@10 of ranks minus that of base
    expected = statistics.stdev(diff) / math.sqrt(3)
    assert paired_stderr(ranks, base) == pytest.approx(expected)
    assert paired_stderr(base, base) == 0.0


class TableRetriever(torch.nn.Module):
    """score(history, users) = sum of the rows of a fixed random table for the history items."""

    def __init__(self, n_items: int, seed: int = 0):
        super().__init__()
        table = torch.randn(n_items + 1, n_items + 1, generator=torch.Generator().manual_seed(seed))
        table[0] = 0
        self.register_buffer("table", table)
        self.seen: list[list[int]] = []

    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        self.seen += [[int(i) for i in h if i > 0] for h in history]
        return self.table[history].sum(1)  # (B, n_items + 1)


def test_items_outside_the_top_k_keep_their_retrieval_order():
    """The final ranking is built by hand: top 3 reordered by the reranker, the rest unchanged."""
    n_items, k = 8, 3
    retriever = TableRetriever(n_items)
    history = np.array([4])
    full = retriever.table[4].clone()
    full[0] = full[4] = -np.inf  # padding and the seen item leave the ranking
    order = [int(i) for i in torch.argsort(full, descending=True, stable=True)[: n_items - 1]]
    rerank = {order[0]: 0.0, order[1]: 2.0, order[2]: 1.0}  # reranker: 2nd, 3rd, 1st
    final = sorted(order[:k], key=lambda i: -rerank[i]) + order[k:]
    for target in order:
        lists = retrieve_lists(retriever, [history], np.array([0]), np.array([target]), k,
                               exclude_seen=True, max_len=5)
        assert lists.items[0].tolist() == order[:k]
        scores = np.array([[rerank[i] for i in lists.items[0]]])
        rank = rerank_ranks(lists.target_rank, lists.positive, scores)[0]
        assert rank == final.index(target), target


def _split() -> Split:
    train = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([3])]
    return Split(users=IdMap(["a", "b", "c"]), items=IdMap([f"i{i}" for i in range(1, 10)]),
                 train=train, valid_target=np.array([8, 9, 0]), test_target=np.array([9, 8, 0]))


def test_training_examples_are_the_last_positions_of_train_prefixes():
    rows, ends = training_examples(_split(), positions=2)
    assert list(zip(rows.tolist(), ends.tolist(), strict=True)) == [(0, 3), (0, 4), (1, 1)]
    rows, ends = training_examples(_split(), positions=0)
    assert ends[rows == 0].tolist() == [1, 2, 3, 4]


def test_training_lists_read_only_the_past():
    """The retriever sees exactly prefix[:t] per training example (never the target, a later
    item, or a valid/test item), and rewriting the future leaves earlier lists unchanged."""
    config = RerankerConfig(history_stats=False, candidates=9, train_positions=0,
                            retrieval_features=True)
    split = _split()
    retriever = TableRetriever(split.n_items)
    data = RerankData(split, retriever, config, exclude_seen=True)
    assert len(data.train) == 5 and data.train_examples == 5  # K = catalogue: all targets in
    assert retriever.seen == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [6]]
    future = copy.deepcopy(split)
    future.train[0][3:] = [9, 8]  # rewrite user a's items from position 3 on
    changed = RerankData(future, TableRetriever(split.n_items), config, exclude_seen=True)
    for field in ("items", "features", "history"):
        np.testing.assert_array_equal(getattr(changed.train, field)[:2],
                                      getattr(data.train, field)[:2])
    assert (data.train.features[..., 0] <= 0).all()  # score minus the list's top score


def test_lists_exclude_seen_items_but_keep_a_repeated_target():
    retriever = TableRetriever(9)
    lists = retrieve_lists(retriever, [np.array([1, 2, 3])], np.array([0]), np.array([2]), 9,
                           exclude_seen=True, max_len=4)
    real = lists.items[0][lists.valid[0]]
    assert 2 in real and not {1, 3} & set(real.tolist()) and len(real) == 7
    assert lists.history[0].tolist() == [1, 2, 3]


@pytest.mark.filterwarnings("ignore")
def test_tiny_retrieval_plus_rerank_run(config, tiny_model_dir, tmp_path):
    """SASRec retrieves, the reranker trains on its lists through `fit` (with every input:
    retrieval features and recent popularity); the retrieval metrics of the rerank run are the
    retrieval run's own, and the run rebuilds from its dir."""
    raw = config_to_dict(config)
    raw["train"]["epochs"] = 3
    retrieval = fit(config_from_dict(raw))
    raw["model"] = {"name": "reranker", "reranker": {
        "task": "listwise", "retrieval_run": str(retrieval.run_dir), "candidates": 10,
        "train_positions": 3, "retrieval_features": True,
        "history_stats": False, "blend": [0.0, 1000.0], "dim": 8, "text": ["title"], "max_len": 8,
        "recent_popularity_days": 1,
        "dense_hidden": [16], "over_hidden": [16], "dropout": 0.0,
        "encoder": {"path": str(tiny_model_dir), "cache_dir": str(tmp_path / "cache")}}}
    raw["train"].update(epochs=3, batch_size=32, lr=0.01, loss={"list_size": 6})
    assert _keeps_rng(lambda: load_data(config_from_dict(raw)))  # train.seed is the reranker's
    result = fit(config_from_dict(raw))
    test = result.metrics["test"]
    assert result.metrics["selection"] == "valid ndcg@10"
    assert test["retrieval_ndcg@10"] == pytest.approx(retrieval.metrics["test"]["ndcg@10"])
    assert test["retrieval_recall@10"] == pytest.approx(retrieval.metrics["test"]["recall@10"])
    assert test["recall@50"] == pytest.approx(retrieval.metrics["test"]["recall@50"])  # K = 10
    assert test["ndcg@10_gain"] == pytest.approx(test["ndcg@10"] - test["retrieval_ndcg@10"])
    assert test["ndcg@10_gain_se"] >= 0
    assert test["rerank_ms_per_1k_users"] > 0 and test["blend"] in (0.0, 1000.0)
    if test["blend"] == 1000.0:  # the retrieval score dominates: retrieval order comes back
        assert test["ndcg@10"] == pytest.approx(test["retrieval_ndcg@10"], abs=1e-3)
    again = evaluate_run(result.run_dir, "test")
    for key in ("ndcg@10", "recall@10", "retrieval_ndcg@10", "hit@10"):
        assert again[key] == pytest.approx(test[key]), key
    _check_reranked_export(retrieval.run_dir, result.run_dir, tmp_path / "reranked")


def _check_reranked_export(retrieval_run, rerank_run, out):
    """`recsys export --rerank`: the best 5 of each user's retrieval top 10, by reranker score;
    a user the reranker does not know keeps its retrieval order (stage "retrieval")."""
    summary = export_reranked(retrieval_run, rerank_run, out, n=5)
    source = pd.read_parquet(summary["retrieval_candidates"])
    ranked = pd.read_parquet(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == len(ranked) == 5 * source["user_id"].nunique()
    assert (ranked["stage"] == "rerank").all() and summary["unknown_users"] == 0
    for user, rows in ranked.groupby("user_id", sort=False):
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert (np.diff(rows["score"].to_numpy()) <= 0).all()
        assert set(rows["item_id"]) <= set(source.loc[source["user_id"] == user, "item_id"])
    model, _, data = load_run(rerank_run / "checkpoint" / "best")
    table = pq.read_table(Path(summary["retrieval_candidates"]) / "part-00000.parquet")
    first = table.column("user_id")[0].as_py()
    renamed = pa.array(["nobody" if u == first else u for u in table.column("user_id").to_pylist()])
    table = table.set_column(0, "user_id", renamed)
    out_table = rerank_table(model, data.split, full_histories(data.split), table, 3,
                             popularity=data.popularity).to_pandas()
    nobody = out_table[out_table["user_id"] == "nobody"]
    expected = table.to_pandas().query("user_id == 'nobody'").head(3)
    assert nobody["item_id"].tolist() == expected["item_id"].tolist()
    assert (nobody["stage"] == "retrieval").all() and (nobody["rank"] == [1, 2, 3]).all()
    assert (out_table.loc[out_table["user_id"] != "nobody", "stage"] == "rerank").all()


def _keeps_rng(call) -> bool:
    """Whether `call()` leaves the global torch random stream where it was."""
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    call()
    return torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_is_a_stable_sort_cut_to_k(seed):
    """Many ties (scores from 5 values, some -inf, padding column 0 at -inf): the lists and
    the target's rank must be those of a stable descending sort of the whole row."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (64, 300), generator=generator).float()
    scores[torch.rand(64, 300, generator=generator) < 0.3] = float("-inf")
    scores[:, 0] = float("-inf")
    scores[:3, 10:] = float("-inf")  # rows with fewer finite items than k
    target = torch.randint(0, 300, (64,), generator=generator)
    items, values, rank = _top_k(scores, target, 20)
    want_values, want_order = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(items, want_order[:, :20])
    assert torch.equal(values, want_values[:, :20])
    sorted_rank = (want_order == target[:, None]).int().argmax(dim=1)
    scored = torch.isfinite(scores.gather(1, target[:, None]))[:, 0]  # a -inf target is no hit
    assert torch.equal(rank, torch.where(scored, sorted_rank, UNRANKED))
