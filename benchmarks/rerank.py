"""Retrieval alone vs retrieval + relevance rerank, full ranking, one dataset.

    python benchmarks/rerank.py --dataset ml-100k
    python benchmarks/rerank.py --dataset amazon-industrial-scientific
    python benchmarks/rerank.py --dataset ml-100k --retrieval-run runs/<id>   # reuse a retriever

Trains the retrieval config (unless `--retrieval-run` names a finished run of it), then the
listwise reranker on that run's candidates (`model.reranker.task: listwise`, selected on valid
NDCG@10 of retrieval + rerank). Test: the retriever ranks the catalogue, the reranker reorders its
top K, the rest keep their order; both numbers come from the same users and lists.
`benchmarks/ctr.py` calls `compare` for its rerank keys. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys import load_config
from recsys.runtime.report import table
from recsys.train.loop import fit

CONFIGS = {  # dataset -> (retrieval config, rerank config)
    "ml-100k": ("configs/ml100k_sasrec.yaml", "configs/ml100k_rerank.yaml"),
    "amazon-industrial-scientific": ("configs/scientific_sasrec.yaml",
                                     "configs/scientific_rerank.yaml"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrieval-config", help="retriever YAML (default: per dataset)")
    parser.add_argument("--retrieval-run", help="a finished retrieval run dir to reuse")
    parser.add_argument("--rerank-config", help="listwise reranker YAML (default: per dataset)")
    parser.add_argument("--rerank-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the reranker, e.g. train.epochs=3")


def compare(args: argparse.Namespace) -> dict:
    """Train (or reuse) the retriever, train the reranker on its lists; return the test keys."""
    retrieval_config, rerank_config = CONFIGS.get(args.dataset, (None, None))
    data = [f"data.raw={Path(args.data_root) / args.dataset}",
            f"data.dir=data/prepared/{args.dataset}"]
    run = args.retrieval_run
    if run is None:
        config = load_config(args.retrieval_config or retrieval_config, data)
        run = str(fit(config).run_dir)
    config = load_config(args.rerank_config or rerank_config,
                         [*data, f"model.reranker.retrieval_run={run}",
                          f"tracking.experiment=rerank-{args.dataset}", *args.rerank_set])
    result = fit(config)
    test = result.metrics["test"]
    k = config.model.reranker.candidates
    rows = [("retrieval", test["retrieval_ndcg@10"], test["retrieval_recall@10"],
             test["retrieval_ndcg@20"], test["retrieval_mrr@10"], "-"),
            (f"retrieval + rerank top {k}", test["ndcg@10"], test["recall@10"], test["ndcg@20"],
             test["mrr@10"], f"{test['rerank_ms_per_1k_users']:.0f}")]
    print(f"\nRerank on {args.dataset}: {int(test['users'])} test users, retrieval run {run}, "
          f"rerank run {result.run_dir} (best epoch {result.metrics['best_epoch']}), "
          f"target in top {k}: {test[f'hit@{k}']:.3f}, exclude_seen={config.eval.exclude_seen}, "
          f"NDCG@10 gain {test['ndcg@10_gain']:+.4f} (paired s.e. {test['ndcg@10_gain_se']:.4f})")
    print(table(("stage", "NDCG@10", "Recall@10", "NDCG@20", "MRR@10", "rerank ms / 1k users"),
                rows))
    return {"retrieval_ndcg@10": round(test["retrieval_ndcg@10"], 5),
            "rerank_ndcg@10": round(test["ndcg@10"], 5),
            "rerank_ndcg@10_gain": round(test["ndcg@10"] - test["retrieval_ndcg@10"], 5),
            "rerank_ndcg@10_gain_se": round(test["ndcg@10_gain_se"], 5),
            "retrieval_recall@10": round(test["retrieval_recall@10"], 5),
            "rerank_recall@10": round(test["recall@10"], 5),
            "rerank_ms_per_1k_users": round(test["rerank_ms_per_1k_users"], 1),
            "rerank_candidates": k, "retrieval_run": run, "rerank_run": str(result.run_dir)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="folder name under --data-root")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    summary = compare(args)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
