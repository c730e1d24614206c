"""Full-ranking evaluation of retrieval + rerank (the protocol of `recsys.eval.retrieval`).

The retriever ranks the whole catalogue (seen items out with `exclude_seen`); the reranker
reorders the top K; every item outside the top K keeps its retrieval rank. So a target outside
the top K keeps its rank, and a target inside moves to its place among the K reranked scores
(ties keep the retrieval order). Metrics of retrieval alone come from the same lists, so both
numbers rest on the same users and candidates.

The final score of a candidate is the reranker logit + w * (its retrieval score - the list's top
score), with w taken from `model.reranker.blend` by the best valid NDCG@10 (`choose_blend`, also
when evaluating test): the reranker trains on train-prefix lists, where the retriever is better
than on unseen targets (it trained on them), so how far to trust its score is set on valid.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from recsys.inputs.rerank_lists import CandidateLists, RerankData, list_tensors
from recsys.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from recsys.ranking import rank_of


def rerank_ranks(target_rank: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n,) 0-based ranks after reordering each top K by `scores`.

    target_rank (n,) retrieval ranks; positive (n,) the target's column in its top K, -1 when
    outside; scores (n, K) reranker scores in retrieval order (-inf for padding). Inside the top
    K, the rank is the count of candidates scored higher, or equal and retrieved earlier.
    """
    rows = np.flatnonzero(positive >= 0)
    ranks = target_rank.astype(np.int64).copy()
    ranks[rows] = rank_of(torch.from_numpy(scores[rows]), torch.from_numpy(positive[rows])).numpy()
    return ranks


def paired_stderr(ranks: np.ndarray, base: np.ndarray, k: int = 10) -> float:
    """Standard error of the mean per-user NDCG@k difference between `ranks` and `base` (n,),
    the same users: how far the gain of a rerank over its own retrieval is from noise."""
    def gains(r: np.ndarray) -> np.ndarray:
        return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
    diff = gains(ranks) - gains(base)
    return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0


@torch.inference_mode()
def score_lists(model: nn.Module, lists: CandidateLists, batch_size: int = 256) -> np.ndarray:
    """(n, K) float32 reranker logits of every list's candidates, -inf on padding."""
    model.eval()
    users, items, history, features, valid = list_tensors(lists)
    out = [model.score_lists(users[s:s + batch_size], items[s:s + batch_size],
                             history[s:s + batch_size], features[s:s + batch_size]).float()
           for s in range(0, len(users), batch_size)]
    scores = torch.cat(out) if out else torch.zeros(items.shape)
    return scores.masked_fill(~valid, float("-inf")).numpy()


def choose_blend(model: nn.Module, data: RerankData, logits: np.ndarray | None = None) -> float:
    """The weight of `data.config.blend` with the best valid NDCG@10 (ties: the first listed);
    `logits` (n, K) are the model's scores of the valid lists when the caller has them."""
    lists = data.lists("valid")
    logits = score_lists(model, lists) if logits is None else logits
    best = max(data.config.blend, key=lambda w: ndcg_at_k(rerank_ranks(
        lists.target_rank, lists.positive, logits + w * lists.retrieval_score), 10))
    return float(best)


def evaluate_rerank(model: nn.Module, data: RerankData, which: str,
                    ks: tuple[int, ...] = (10, 20, 50)) -> dict[str, float]:
    """Rerank metrics on `which` ("valid" or "test"), retrieval alone under `retrieval_` keys.

    `rerank_ms_per_1k_users` times the reranking alone (the lists are retrieved already): the
    forward over K candidates per user, the blend and the reorder, in ms per 1,000 users.
    """
    lists = data.lists(which)
    started = time.perf_counter()
    logits = score_lists(model, lists)  # (n, K)
    seconds = time.perf_counter() - started
    weight = choose_blend(model, data, logits if which == "valid" else None)
    started = time.perf_counter()
    ranks = rerank_ranks(lists.target_rank, lists.positive, logits + weight * lists.retrieval_score)
    seconds += time.perf_counter() - started
    out: dict[str, float] = {"blend": weight}
    for name, r in (("", ranks), ("retrieval_", lists.target_rank)):
        for k in ks:
            out[f"{name}recall@{k}"] = recall_at_k(r, k)
        for k in (10, 20):
            out[f"{name}ndcg@{k}"] = ndcg_at_k(r, k)
        out[f"{name}mrr@10"] = mrr_at_k(r, 10)
    out["ndcg@10_gain"] = out["ndcg@10"] - out["retrieval_ndcg@10"]
    out["ndcg@10_gain_se"] = paired_stderr(ranks, lists.target_rank)
    out[f"hit@{lists.items.shape[1]}"] = float(np.mean(lists.positive >= 0))
    out["rerank_ms_per_1k_users"] = 1e6 * seconds / max(len(lists), 1)
    out["users"] = float(len(lists))
    return out
