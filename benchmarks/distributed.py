"""Two-tower training sharded over 2 CPU (gloo) processes against 1, on a synthetic catalogue
large enough that a rank's memory matters: per-rank table bytes, peak RSS, samples/s.

    python benchmarks/distributed.py                       # 4M items x 64, 1500 users
    python benchmarks/distributed.py --items 200000 --users 500 --epochs 1   # a quick look
    python benchmarks/distributed.py --device cuda --worlds 1   # a GPU machine: nccl, fused
        # fbgemm optimizers on the GPU (needs torchrec's CUDA wheels; not run here yet)

Writes a tabular dataset (users walk runs of consecutive items, so the next item is learnable
from IDs alone) under `--workdir`, then trains `recsys train` under torchrun with
`--nproc-per-node` 1 and 2 and the same config (same global batch and seed), each process with
`--threads` torch threads. The planner gets `--memory-1` GiB a rank for 1 process and
`--memory-2` for 2: at 1.5 GiB a rank the planner still placed the whole 4M x 64 table (0.95
GiB) on one rank; at the default 0.9 it cannot, so it splits it. samples/s counts training
examples over the time of the training epochs alone (no evaluation). Per-rank peak RSS
includes what rank 0 holds to evaluate: the gathered full model. Prints a table and ends
with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from recsys.runtime.report import table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def write_raw(folder: Path, items: int, users: int, active: int, seed: int = 0) -> int:
    """events.csv and items.csv under `folder` (kept when there); returns the training examples
    an epoch holds (every position >= 1 of each user's prefix before its valid and test items).
    Walks start among the first `active` items, so items recur across users (learnable), while
    the catalogue, and so the item table, holds all `items`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 30, users)
    if not (folder / "events.csv").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        starts = rng.integers(0, min(active, items), users)
        user = np.repeat(np.arange(users), lengths)
        step = np.concatenate([np.arange(n) for n in lengths])
        item = (np.repeat(starts, lengths) + step) % items
        pd.DataFrame({"user": [f"u{u}" for u in user], "item": [f"i{i}" for i in item],
                      "ts": 1_000 + step}).to_csv(folder / "events.csv", index=False)
        pd.DataFrame({"id": [f"i{i}" for i in range(items)]}).to_csv(folder / "items.csv",
                                                                     index=False)
    return int(np.maximum(lengths - 3, 0).sum())


def config(args, raw: Path, memory_gb: float) -> dict:
    work = Path(args.workdir).resolve()
    return {
        "data": {"source": "tabular", "raw": str(raw), "dir": str(work / "dataset"), "mapping": {
            "interactions": "events.csv", "items": "items.csv",
            "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"},
            "item_columns": {"item_id": "id"}, "timestamp_format": "unix"}},
        "model": {"name": "two_tower", "two_tower": {
            "dim": args.dim, "hidden": args.dim, "max_len": 20, "text": [], "dropout": 0.0}},
        "train": {"seed": 0, "epochs": args.epochs, "batch_size": args.batch, "lr": 0.01,
                  "patience": args.epochs, "threads": args.threads, "device": args.device,
                  "eval_every": args.epochs,  # validate once, at the end: a full ranking of
                  # 4M items costs minutes, the training epochs seconds
                  "runs_dir": str(work / "runs"), "loss": {"temperature": 0.1}},
        "eval": {"chunk_users": 16, "ks": [10]},
        "tracking": {"experiment": "bench-distributed"},
        "distributed": {"enabled": True, "memory_per_rank_gb": memory_gb,
                        "timeout_s": 1800,
                        "embedding_optimizer": args.embedding_optimizer},
    }


def train(args, raw: Path, world: int, memory_gb: float) -> dict:
    """metrics.json of one `recsys train` under torchrun with `world` processes."""
    path = Path(args.workdir) / f"config_w{world}.yaml"
    path.write_text(yaml.safe_dump(config(args, raw, memory_gb), sort_keys=False))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(world), "-m", "recsys.cli", "--", "train", "--config",
               str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{world} process(es) failed:\n{done.stderr[-4000:]}")
    run_dir = re.findall(r"run dir: (\S+)", done.stdout)[-1]
    return json.loads((REPO / run_dir / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data",
                        help="unused: the catalogue is synthetic (kept for the common flags)")
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--active", type=int, default=5000, help="items the walks start among")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024, help="global batch (both runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--memory-1", type=float, default=8.0, help="GiB a rank, 1 process")
    parser.add_argument("--memory-2", type=float, default=0.9, help="GiB a rank, 2 processes")
    parser.add_argument("--workdir", default="runs/bench-distributed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--embedding-optimizer", default="adagrad",
                        choices=("adagrad", "rowwise_adagrad", "sgd", "adam"))
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2],
                        help="process counts to run (one GPU holds one rank: --worlds 1)")
    args = parser.parse_args(argv)

    raw = Path(args.workdir).resolve() / f"raw-{args.items}-{args.users}-{args.active}"
    examples = write_raw(raw, args.items, args.users, args.active)
    runs = {w: train(args, raw, w, args.memory_1 if w == 1 else args.memory_2)
            for w in args.worlds}

    def speed(m: dict) -> float:
        return examples * m["epochs"] / m["train_seconds"]

    gib = 2**30
    rows, summary = [], {"items": args.items, "dim": args.dim, "users": args.users,
                         "epochs": args.epochs, "device": args.device,
                         "examples_per_epoch": examples, "threads_per_process": args.threads}
    for world, m in runs.items():
        placed = m["distributed"]
        item = placed["plan"].get("t_item_id", {})
        rows.append((world, f"{item.get('type')} {item.get('shards')}",
                     " ".join(f"{b / gib:.2f}" for b in placed["table_bytes"]),
                     " ".join(f"{b / gib:.2f}" for b in placed["peak_rss_bytes"]),
                     round(speed(m)), m["valid"]["ndcg@10"]))
        summary[f"samples_per_s_{world}"] = round(speed(m), 1)
        summary[f"peak_rss_bytes_{world}"] = placed["peak_rss_bytes"]
        summary[f"plan_{world}"] = placed["plan"]
    print(table(("processes", "item table", "table GiB/rank", "peak RSS GiB/rank", "samples/s",
                 "valid ndcg@10"), rows))
    if {1, 2} <= runs.keys():
        one, two = runs[1]["valid"], runs[2]["valid"]
        diff = max(abs(two[k] - one[k]) / max(abs(one[k]), 1e-12) for k in one)
        summary["max_rel_metric_diff"] = float(f"{diff:.3g}")
        summary["per_rank_table_bytes_ratio"] = round(
            max(runs[2]["distributed"]["table_bytes"])
            / max(runs[1]["distributed"]["table_bytes"]), 4)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
