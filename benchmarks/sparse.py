"""Dynamic sparse training against its alternatives at the same density and epoch budget.

    python benchmarks/sparse.py                      # SASRec on ml-100k
    python benchmarks/sparse.py --dataset amazon-industrial-scientific \
        --config configs/scientific_two_tower_sparse.yaml

The config's `sparse` section names the parameters kept sparse and the schedule; its `train.epochs`
(E) is every run's budget. Runs: dense training (E epochs); then for each density d: dynamic sparse
training from scratch (prune by magnitude, regrow by gradient), static random sparsity (the first
random masks kept), and dense training for E/2 epochs, magnitude-pruned to d and fine-tuned with
fixed masks for E/2 epochs (what a user would otherwise do; E in all). The dense runs take the
config's `sparse.dense_baseline` overrides: a sparse model may be tuned apart from the dense one
(less dropout, a higher rate), and the dense model is measured at its own settings. Each run is
tested on its best valid epoch. Inference latency is the time to score the test users with the
run's model (the dense kernels every run uses); `csr_kernel_ratio` times the catalogue score
product with the largest sparse table as a torch CSR tensor against dense, on this machine.
`--repeats R` trains every run R times (repeat r moves `train.seed` and `sparse.seed` on by r) and
reports the means: on ml-100k one seed moves test NDCG@10 by ~0.01, the size of the effects
compared. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from recsys import load_config
from recsys.config import Config
from recsys.recipes import evaluate_model, load_run
from recsys.runtime.report import table
from recsys.train.loop import RunResult, fit
from recsys.train.sparsity import covered_parameters

DENSITIES = (0.5, 0.2, 0.1)


def _with(config: Config, epochs: int | None = None, **sparse) -> Config:
    train = config.train if epochs is None else dataclasses.replace(
        config.train, epochs=epochs, patience=epochs)
    return dataclasses.replace(config, train=train,
                               sparse=dataclasses.replace(config.sparse, **sparse))


def _best(run: RunResult) -> tuple:
    """(model, config, split) of the run's best checkpoint."""
    return load_run(run.run_dir / "checkpoint" / "best")


def _test_seconds(best: tuple, repeats: int = 3) -> float:
    """The fastest of `repeats` full-ranking test evaluations of a run's (model, config, split)."""
    model, config, split = best
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate_model(config, model, split, "test")
        times.append(time.perf_counter() - started)
    return min(times)


def _csr_kernel_ratio(model: torch.nn.Module, patterns: tuple[str, ...],
                      users: int = 1024) -> float:
    """Seconds of (table as CSR) @ (dim x users) over the dense product, for the model's largest
    sparse 2-D table: > 1 means the sparse kernel is slower here."""
    tables = [p for p in covered_parameters(model, patterns).values() if p.dim() == 2]
    weight = max(tables, key=lambda p: p.numel()).detach()
    csr = weight.to_sparse_csr()
    queries = torch.randn(weight.shape[1], users)

    def best_of(product) -> float:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            product()
            times.append(time.perf_counter() - started)
        return min(times)

    return best_of(lambda: csr @ queries) / best_of(lambda: weight @ queries)


def _row(name: str, run: RunResult, dense: RunResult | None, seconds: float) -> dict:
    test, base = run.metrics["test"], (dense or run).metrics
    per_epoch = run.metrics["train_seconds"] / max(run.metrics["epochs"], 1)
    dense_epoch = base["train_seconds"] / max(base["epochs"], 1)
    return {"run": name, "ndcg@10": round(test["ndcg@10"], 5),
            "recall@10": round(test["recall@10"], 5),
            "param_bytes": run.metrics["param_bytes"]["sparse"],
            "bytes_ratio": round(run.metrics["param_bytes"]["sparse"]
                                 / base["param_bytes"]["dense"], 4),
            "s_per_epoch": round(per_epoch, 2), "time_ratio": round(per_epoch / dense_epoch, 3),
            "test_seconds": round(seconds, 3), "run_id": run.run_id}


def _seeded(config: Config, repeat: int) -> Config:
    """`config` with its training and mask seeds moved on by `repeat` (0: as written)."""
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, seed=config.train.seed + repeat),
        sparse=dataclasses.replace(config.sparse, seed=config.sparse.seed + repeat))


def _one_repeat(config: Config, dense_config: Config,
                densities: list[float]) -> tuple[list[dict], dict[float, float]]:
    """Every run of the benchmark once -> its table rows and, per density, the CSR kernel ratio
    on the dynamic run's model."""
    epochs, patterns = config.train.epochs, config.sparse.params
    dense = fit(_with(dense_config, params=()))
    half = fit(_with(dense_config, epochs=epochs // 2, params=()))
    rows, kernels = [_row("dense", dense, None, _test_seconds(_best(dense)))], {}
    for d in densities:
        runs = {
            "dynamic": fit(_with(config, density=d, mode="dynamic")),
            "static": fit(_with(config, density=d, mode="static")),
            "prune": fit(_with(config, epochs=epochs - epochs // 2, density=d, mode="static",
                               init="magnitude", init_from=str(half.run_dir))),
        }
        best = {k: _best(r) for k, r in runs.items()}
        rows += [_row(f"{k}@{d}", r, dense, _test_seconds(best[k])) for k, r in runs.items()]
        kernels[d] = _csr_kernel_ratio(best["dynamic"][0], patterns)
    return rows, kernels


def _mean_rows(repeats: list[list[dict]]) -> list[dict]:
    """Each run's row averaged over the repeats (its run ids listed)."""
    means = []
    for same in zip(*repeats, strict=True):
        row = {k: round(statistics.fmean(r[k] for r in same), 5) if isinstance(v, float) else v
               for k, v in same[0].items()}
        means.append({**row, "run_id": [r["run_id"] for r in same]})
    return means


def _by_run(rows: list[dict]) -> dict[str, dict]:
    return {r["run"]: r for r in rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="folder name under --data-root")
    parser.add_argument("--config", default="configs/ml100k_sasrec_sparse.yaml")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--repeats", type=int, default=1,
                        help="train every run this many times, repeat r with train.seed and "
                             "sparse.seed moved on by r; the table and JSON give the means")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # importing recsys already gave the root logger a handler

    raw = Path(args.data_root) / args.dataset
    overrides = [f"data.raw={raw}", f"data.dir=data/prepared/{args.dataset}", *args.set]
    config = load_config(args.config, overrides)
    if not config.sparse.enabled:
        raise SystemExit(f"{args.config} has no sparse.params: nothing to make sparse")
    baseline = list(config.sparse.dense_baseline)
    dense_config = load_config(args.config, [*overrides, *baseline])
    repeats = [_one_repeat(_seeded(config, r), _seeded(dense_config, r), args.densities)
               for r in range(args.repeats)]
    per_repeat = [_by_run(rows) for rows, _ in repeats]
    rows = _mean_rows([rows for rows, _ in repeats])
    by_run = _by_run(rows)
    dense = by_run["dense"]
    summary: dict[str, object] = {"dataset": args.dataset, "model": config.model.name,
                                  "epochs": config.train.epochs, "repeats": args.repeats,
                                  "dense_baseline": baseline, "dense_ndcg@10": dense["ndcg@10"]}
    for d in args.densities:
        dynamic, static, prune = (by_run[f"{k}@{d}"] for k in ("dynamic", "static", "prune"))
        summary.update({
            f"ndcg_ratio_vs_dense@{d}": round(dynamic["ndcg@10"] / dense["ndcg@10"], 4),
            f"ndcg_gain_vs_static@{d}": round(dynamic["ndcg@10"] - static["ndcg@10"], 5),
            f"ndcg_gain_vs_prune@{d}": round(dynamic["ndcg@10"] - prune["ndcg@10"], 5),
            f"param_bytes_ratio@{d}": dynamic["bytes_ratio"],
            f"train_time_ratio@{d}": dynamic["time_ratio"],
            f"test_latency_ratio@{d}": round(dynamic["test_seconds"] / dense["test_seconds"], 3),
            f"csr_kernel_ratio@{d}": round(statistics.fmean(k[d] for _, k in repeats), 3),
        })
        if args.repeats > 1:  # the spread the means hide
            summary[f"ndcg_ratio_vs_dense@{d}_by_repeat"] = [
                round(by[f"dynamic@{d}"]["ndcg@10"] / by["dense"]["ndcg@10"], 4)
                for by in per_repeat]
    keys = ("run", "ndcg@10", "recall@10", "param_bytes", "bytes_ratio", "s_per_epoch",
            "time_ratio", "test_seconds")
    print(table(keys, [tuple(r[k] for k in keys) for r in rows]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
