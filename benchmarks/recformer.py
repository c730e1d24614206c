"""Recformer against SASRec and the text two-tower on one split, with its ablations.

    python benchmarks/recformer.py --dataset amazon-industrial-scientific
    python benchmarks/recformer.py --dataset amazon-industrial-scientific \\
        --reuse sasrec=runs/<id> two_tower=runs/<id>   # finished runs

Runs, in order (each a tracked MLflow run; a name given to --reuse is read from its run dir):
  sasrec       configs/scientific_sasrec.yaml
  two_tower    configs/scientific_two_tower.yaml
  recformer    configs/scientific_recformer_small.yaml, from the best checkpoint of a finished
               configs/scientific_recformer_pretrain_small.yaml run (trained first if none);
               that run's test numbers are the zero-shot ones (row `zero_shot`)
  no_pretrain  the same without pre-training
  no_stage2    the same with the item table re-encoded every epoch (no frozen stage 2)
  tokens_256   the same at 256 tokens a sequence instead of 128
Test split, full ranking. Prints a table and ends with one JSON line: every run's metrics plus
`ndcg_ratio_vs_sasrec` and `ndcg_all_ratio_vs_peer` (RecBole 1.2.1's SASRec on this split,
seen items left in: test NDCG@10 0.0637, README "Results").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys import load_config
from recsys.config import read_yaml
from recsys.runtime.report import table
from recsys.train.loop import fit

KEYS = ("ndcg@10", "recall@10", "ndcg@10_all", "tail_recall@10", "cold_recall@10")
PEER_NDCG_ALL = 0.0637  # RecBole 1.2.1 SASRec, converged, same split, seen items ranked
FINETUNE = "configs/scientific_recformer_small.yaml"
RUNS = {  # name -> (config, overrides)
    "sasrec": ("configs/scientific_sasrec.yaml", []),
    "two_tower": ("configs/scientific_two_tower.yaml", []),
    "recformer": (FINETUNE, []),
    "no_pretrain": (FINETUNE, ["model.recformer.init_from=null"]),
    "no_stage2": (FINETUNE, ["model.recformer.stage1_epochs=1000"]),
    "tokens_256": (FINETUNE, ["model.recformer.max_tokens=256"]),
}


def _metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-industrial-scientific",
                        help="folder name under --data-root")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--only", nargs="*", help="run names to run or reuse (default: all)")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="NAME=RUN_DIR",
                        help="finished runs to read instead of training them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, e.g. train.threads=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # importing recsys already gave the root logger a handler
    reuse = dict(item.split("=", 1) for item in args.reuse)
    data = [f"data.raw={Path(args.data_root) / args.dataset}",
            f"data.dir=data/prepared/{args.dataset}"]

    results, dirs = {}, {}
    for name, (path, overrides) in RUNS.items():
        if args.only and name not in args.only:
            continue
        if name in reuse:
            dirs[name] = Path(reuse[name])
        else:
            named = [*overrides, *data, f"tracking.run_name={name}", *args.set]
            dirs[name] = fit(load_config(path, named)).run_dir
        if name == "recformer":  # the pre-training it started from: the zero-shot numbers
            run = read_yaml(dirs[name] / "config.yaml", "run config")
            dirs["zero_shot"] = Path(run["model"]["recformer"]["init_from"])
    for name, run_dir in dirs.items():
        metrics = _metrics(run_dir)
        test = metrics["test"]
        results[name] = {k: round(test[k], 5) for k in KEYS if k in test}
        results[name].update(epochs=metrics["epochs"], sec_per_epoch=round(
            metrics["train_seconds"] / max(metrics["epochs"], 1), 1), run=str(run_dir))
    columns = (*KEYS, "epochs", "sec_per_epoch")
    print(table(("run", *columns), [(name, *(r.get(k, "-") for k in columns))
                                    for name, r in results.items()]))
    summary = {"dataset": args.dataset, **results}
    if "sasrec" in results:
        summary["ndcg_ratio_vs_sasrec"] = {
            name: round(r["ndcg@10"] / results["sasrec"]["ndcg@10"], 3)
            for name, r in results.items() if name != "sasrec"}
    summary["ndcg_all_ratio_vs_peer"] = {
        name: round(r["ndcg@10_all"] / PEER_NDCG_ALL, 3) for name, r in results.items()
        if "ndcg@10_all" in r}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
