"""The main job, end to end: prepare -> train -> evaluate -> summary.

Later stages (index, export, rerank) join here as they land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from recsys import tracking
from recsys.config import Config
from recsys.data import ensure_dataset
from recsys.report import table
from recsys.runs import evaluate_run
from recsys.train import fit


@dataclass(frozen=True)
class PipelineResult:
    run_id: str
    run_dir: Path
    test: dict[str, float]  # metrics recomputed from the saved run dir
    seconds: dict[str, float]  # wall time per stage


def run_pipeline(config: Config) -> PipelineResult:
    """Run every stage in order and return what the summary shows."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    ensure_dataset(config.data.source, config.data.raw, config.data.dir, config.data.mapping)
    seconds["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    result = fit(config)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    test = evaluate_run(result.run_dir, "test")
    seconds["evaluate"] = time.perf_counter() - started
    return PipelineResult(result.run_id, result.run_dir, test, seconds)


def summary(config: Config, result: PipelineResult) -> str:
    """The table `recsys pipeline` ends with."""
    masked = "masked" if config.eval.exclude_seen else "not masked"
    rows = [(name, result.test[name], result.test[f"{name}_all"])
            for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")]
    lines = [
        table(("test metric", f"seen {masked}", "seen not masked"), rows),
        "",
        table(("", ""), [
            ("model", config.model.name),
            ("dataset", config.data.dir),
            ("users evaluated", int(result.test["users"])),
            ("coverage@10", result.test["coverage@10"]),
            *[(f"{stage} seconds", f"{s:.1f}") for stage, s in result.seconds.items()],
            ("run dir", str(result.run_dir)),
            ("mlflow run", f"{result.run_id} @ {tracking.tracking_uri(config.tracking)}"),
        ]),
    ]
    return "\n".join(lines)
