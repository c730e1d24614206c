"""The GPU paths against the CPU, same machine, same run: a training epoch and a faiss search.

    python benchmarks/gpu.py                      # on a machine with a CUDA device
    python benchmarks/gpu.py --epochs 3 --items 1000000

Trains the config (default SASRec on ml-100k) for `--epochs` epochs with `train.device` cuda and
then cpu (same seed: the metrics should agree closely, the s/epoch not), then searches `--users`
random unit queries in a Flat index of `--items` random unit vectors on the GPU and on the CPU
(recall@100 of the GPU against the CPU's exact result). Prints a table and one JSON line.
Without a CUDA device it says so and exits 2: nothing here is measured on a CPU-only machine.

The lent machines run Python 3.12 with a CUDA torch but without this project's other needs:
carry them as cp312 wheels (faiss-gpu-cu12, mlflow and its needs, torchrec, fbgemm-gpu,
annotated-types; the device tool's README says how) and run with PYTHONPATH=.:<wheels dir>.
Never run on CI: no test imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recsys import load_config
from recsys.ann.index import build_index, recall_at_k, search
from recsys.runtime.report import table
from recsys.train.loop import fit


def train_seconds(config, device: str) -> tuple[float, dict]:
    """(s/epoch, test metrics) of `config` trained on `device` (no early stop inside)."""
    run = fit(dataclasses.replace(config, train=dataclasses.replace(config.train, device=device)))
    return run.metrics["train_seconds"] / max(run.metrics["epochs"], 1), run.metrics["test"]


def search_seconds(vectors: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool):
    """(seconds, result rows) of an exact inner-product search, index built outside the timing."""
    index = build_index(vectors, "Flat", "ip", use_gpu=use_gpu)
    search(index, queries[:64], k, metric="ip")  # warm-up
    started = time.perf_counter()
    _, rows = search(index, queries, k, metric="ip")
    return time.perf_counter() - started, rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="folder name under --data-root")
    parser.add_argument("--config", default="configs/ml100k_sasrec.yaml", help="experiment YAML")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per device")
    parser.add_argument("--items", type=int, default=1_000_000, help="faiss catalogue size")
    parser.add_argument("--users", type=int, default=20_000, help="faiss queries")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--no-cpu-training", action="store_true",
                        help="train on the GPU only (a model too slow to train on the CPU here, "
                             "e.g. configs/scientific_recformer_base.yaml)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: run this on the lent GPU machine", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # importing recsys already gave the root logger a handler

    raw = Path(args.data_root) / args.dataset
    config = load_config(args.config, [f"data.raw={raw}", f"data.dir=data/prepared/{args.dataset}",
                                       f"train.epochs={args.epochs}", "train.patience=1000"])
    gpu_epoch, gpu_test = train_seconds(config, "cuda")
    cpu_epoch, cpu_test = (float("nan"), {"ndcg@10": float("nan")}) if args.no_cpu_training \
        else train_seconds(config, "cpu")

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(args.items, args.users, replace=False)]
    gpu_search, gpu_rows = search_seconds(vectors, queries, 100, use_gpu=True)
    cpu_search, cpu_rows = search_seconds(vectors, queries, 100, use_gpu=False)

    row = {
        "device": torch.cuda.get_device_name(0),
        "sec_per_epoch_gpu": round(gpu_epoch, 3), "sec_per_epoch_cpu": round(cpu_epoch, 3),
        "epoch_speedup": round(cpu_epoch / gpu_epoch, 2),
        "ndcg@10_gpu": round(gpu_test["ndcg@10"], 5), "ndcg@10_cpu": round(cpu_test["ndcg@10"], 5),
        "search_users_per_s_gpu": round(args.users / gpu_search),
        "search_users_per_s_cpu": round(args.users / cpu_search),
        "search_speedup": round(cpu_search / gpu_search, 2),
        "gpu_recall@100_vs_cpu": round(recall_at_k(gpu_rows, cpu_rows, 100), 4),
    }
    row = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
    print(table(("measure", "value"), list(row.items())))
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
