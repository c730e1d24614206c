"""Retrieval quality and speed of one config on one dataset, full ranking.

    python benchmarks/retrieval.py --dataset ml-100k --config configs/ml100k_sasrec.yaml

Trains the config's model on `<data-root>/<dataset>` and the popularity baseline on the same
split, prints a table, and ends with one JSON line of the configured model's test metrics. A
config whose model starts from another run (Recformer's `init_from` naming its pre-training
config, trained first when no finished run of it exists) also reports that run's test NDCG@10
as `zero_shot_ndcg@10`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import sys
import time
from pathlib import Path

from recsys import load_config
from recsys.config import read_yaml
from recsys.runtime.report import table
from recsys.train.loop import fit

KEYS = ("ndcg@10", "ndcg@20", "recall@10", "recall@20", "mrr@10", "ndcg@10_all", "recall@10_all",
        "coverage@10", "tail_recall@10", "cold_recall@10")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="folder name under --data-root")
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # importing recsys already gave the root logger a handler

    raw = Path(args.data_root) / args.dataset
    config = load_config(args.config, [f"data.raw={raw}",
                                       f"data.dir=data/prepared/{args.dataset}", *args.set])
    started = time.perf_counter()
    result = fit(config)
    wall = time.perf_counter() - started
    popular = fit(dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                         name="popularity")))
    test = result.metrics["test"]
    history_seconds = result.metrics["train_seconds"]
    epochs = result.metrics["epochs"]
    row = {
        "dataset": args.dataset,
        "model": config.model.name,
        **{k: round(test[k], 5) if k in test else None for k in KEYS},  # None: no such targets
        "exclude_seen": config.eval.exclude_seen,
        "users": int(test["users"]),
        "epochs": epochs,
        "best_epoch": result.metrics["best_epoch"],
        "sec_per_epoch": round(history_seconds / max(epochs, 1), 3),
        "train_seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "run_id": result.run_id,
    }
    start = read_yaml(result.run_dir / "config.yaml", "run config")["model"][
        config.model.name].get("init_from")
    if start:  # the run started from another (a pre-training): its test numbers are zero-shot
        started = json.loads((Path(start) / "metrics.json").read_text())["test"]
        row["zero_shot_ndcg@10"] = round(started["ndcg@10"], 5)
        row["zero_shot_run"] = str(start)
    names = ("metric", config.model.name, "popularity")
    print(table(names, [(k, row[k], popular.metrics["test"].get(k)) for k in KEYS]))
    facts = ("exclude_seen", "users", "epochs", "best_epoch", "sec_per_epoch", "train_seconds",
             "peak_rss_mb")
    print(table(("", ""), [(k, row[k]) for k in facts]))
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
