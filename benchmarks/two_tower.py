"""Two-tower ablation next to SASRec on one dataset, same split, full ranking, tracked in MLflow.

    python benchmarks/two_tower.py --dataset amazon-industrial-scientific \\
        --config configs/scientific_two_tower.yaml --sasrec configs/scientific_sasrec.yaml

Variants of the two-tower config: (a) ID-only, (b) text (+ attributes) without SSL, (c) + random
feature masking, (d) + correlated feature masking; then SASRec. Prints one table and ends with a
JSON line {variant: {metric: value}}.
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

KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "ndcg@10_all", "tail_recall@10",
        "cold_recall@10")
VARIANTS = {  # name -> overrides of the two-tower config
    "a_id_only": ["model.two_tower.text=[]", "model.two_tower.categorical=[]",
                  "model.two_tower.item_ids=true", "train.loss.masking.kind=none"],
    "b_text": ["train.loss.masking.kind=none"],
    "c_text_rfm": ["train.loss.masking.kind=random"],
    "d_text_cfm": ["train.loss.masking.kind=correlated"],
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="folder name under --data-root")
    parser.add_argument("--config", required=True, help="two-tower experiment YAML")
    parser.add_argument("--sasrec", help="SASRec YAML for the same dataset (optional)")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, e.g. train.epochs=5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # importing recsys already gave the root logger a handler

    data = [f"data.raw={Path(args.data_root) / args.dataset}",
            f"data.dir=data/prepared/{args.dataset}",
            f"tracking.experiment=two-tower-{args.dataset}"]
    runs = {name: (args.config, overrides) for name, overrides in VARIANTS.items()}
    if args.sasrec:
        runs["sasrec"] = (args.sasrec, [])
    results = {}
    for name, (path, overrides) in runs.items():
        if args.only and name not in args.only:
            continue
        named = [*overrides, *data, f"tracking.run_name={name}", *args.set]
        metrics = fit(load_config(path, named)).metrics
        test = metrics["test"]
        results[name] = {k: round(test[k], 5) for k in KEYS if k in test}
        results[name].update(epochs=metrics["epochs"], train_seconds=round(
            metrics["train_seconds"], 1), sec_per_epoch=round(
            metrics["train_seconds"] / max(metrics["epochs"], 1), 2))
    columns = (*KEYS, "sec_per_epoch")
    print(table(("variant", *columns), [(name, *(r.get(k, "-") for k in columns))
                                        for name, r in results.items()]))
    print(json.dumps({"dataset": args.dataset, **results}))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
