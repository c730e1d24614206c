"""The main job, end to end, resumable stage by stage.

    prepare -> retriever -> evaluate -> index -> candidates [-> reranker -> reranked candidates]

Each stage's output (a dataset dir, a run dir, a store, a candidates dir) is remembered in
`<runs_dir>/pipeline_stages.json` under a key hashed from what the stage reads: its config
section and the outputs of the stages before it. A rerun of the same command skips every stage
whose key is remembered and whose output is still complete; a changed config redoes the stage
it touches and, since their keys include its new output, every stage after it. A killed stage
is redone from its start (a killed training can also be resumed by `recsys train --resume`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.ann.index import INDEX_FILE, build_index, save_index
from recsys.config import Config, config_to_dict
from recsys.data import dataset_sha256, ensure_dataset
from recsys.export.candidates import export_candidates
from recsys.export.embeddings import export_embeddings
from recsys.export.export_dir import finished
from recsys.export.reranked import export_reranked
from recsys.recipes import evaluate_run
from recsys.runtime import tracking
from recsys.runtime.atomic import write_json
from recsys.runtime.report import table
from recsys.train.loop import fit
from serving.store import read_store

STAGES_FILE = "pipeline_stages.json"


@dataclass(frozen=True)
class Stage:
    name: str
    output: str  # the stage's product: a path
    seconds: float  # wall time of this invocation (about 0 when remembered)
    remembered: bool  # True when an earlier run's output was reused


@dataclass(frozen=True)
class PipelineResult:
    run_id: str  # the retriever's run (and MLflow run) id
    run_dir: Path
    test: dict[str, float]  # retriever test metrics recomputed from the saved run dir
    stages: list[Stage]
    rerank_test: dict[str, float] | None = None  # retrieval vs retrieval + rerank, when reranked


class StageBook:
    """The remembered stage outputs, keyed by the hash of each stage's inputs."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}
        self.stages: list[Stage] = []

    def run(self, name: str, inputs: dict[str, Any], work: Callable[[], str],
            complete: Callable[[Path], bool]) -> str:
        """The output of stage `name` for `inputs`: remembered when still `complete`, else
        produced by `work()` and remembered (written atomically)."""
        key = hashlib.sha256(json.dumps({"stage": name, **inputs}, sort_keys=True,
                                        default=str).encode()).hexdigest()
        started = time.perf_counter()
        output = self.done.get(key)
        remembered = output is not None and complete(Path(output))
        if not remembered:
            output = str(work())
            self.done[key] = output
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.done)
        self.stages.append(Stage(name, output, time.perf_counter() - started, remembered))
        return output


def run_pipeline(config: Config, rerank: Config | None = None) -> PipelineResult:
    """Run (or reuse) every stage; `rerank` is a listwise reranker config whose
    `retrieval_run` the pipeline fills with the retriever it trained."""
    book = StageBook(Path(config.train.runs_dir) / STAGES_FILE)
    dataset = _prepare_stage(book, config)
    trains_on = {**_trains_on(config), "dataset_sha256": dataset_sha256(dataset)}
    run_dir = book.run("retriever", trains_on, lambda: fit(config).run_dir, complete=_finished)
    started = time.perf_counter()
    test = evaluate_run(run_dir, "test")  # always: proves the run dir alone rebuilds the model
    book.stages.append(Stage("evaluate", run_dir, time.perf_counter() - started, False))
    export = config_to_dict(config.export)
    index = {"run": run_dir, "index": config.export.index, "metric": config.export.metric}
    book.run("index", index, lambda: _index_stage(run_dir, config),
             complete=lambda out: (out / INDEX_FILE).is_file())
    book.run("candidates", {"run": run_dir, "export": export},
             lambda: export_candidates(run_dir, **export)["out"], complete=finished)
    rerank_test = None
    if rerank is not None:
        rerank = _reading(rerank, run_dir)
        reranker = book.run("reranker", _trains_on(rerank), lambda: fit(rerank).run_dir,
                            complete=_finished)
        book.run("reranked candidates", {"run": run_dir, "reranker": reranker,
                                         "export": config_to_dict(rerank.export)},
                 lambda: _reranked(run_dir, reranker, rerank.export.k), complete=finished)
        rerank_test = json.loads((Path(reranker) / "metrics.json").read_text())["test"]
    return PipelineResult(Path(run_dir).name, Path(run_dir), test, book.stages, rerank_test)


def _prepare_stage(book: StageBook, config: Config) -> Path:
    """The dataset dir, asking `ensure_dataset` every time: it alone knows whether the raw files
    changed (a stat per file); the stages after it are keyed by the dataset's content hash."""
    data = config.data
    info = Path(data.dir) / "dataset.json"
    before = info.stat().st_mtime_ns if info.is_file() else None
    started = time.perf_counter()
    out = ensure_dataset(data.source, data.raw, data.dir, data.mapping)
    book.stages.append(Stage("prepare", str(out), time.perf_counter() - started,
                             remembered=before == info.stat().st_mtime_ns))
    return out


def _trains_on(config: Config) -> dict[str, Any]:
    """What a training stage reads: the config without its export and tracking sections."""
    return {k: v for k, v in config_to_dict(config).items() if k not in ("export", "tracking")}


def _reading(rerank: Config, run_dir: str) -> Config:
    """The reranker config with the retriever's run dir filled in."""
    reranker = dataclasses.replace(rerank.model.reranker, retrieval_run=run_dir)
    return dataclasses.replace(rerank, model=dataclasses.replace(rerank.model, reranker=reranker))


def _finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def _index_stage(run_dir: str, config: Config) -> str:
    """Export the item and user stores, then save the item store's faiss index beside it."""
    store = read_store(export_embeddings(run_dir)["items_path"], verify=False)  # just written
    save_index(build_index(store.vectors, config.export.index, config.export.metric), store.path)
    return store.path


def _reranked(run_dir: str, reranker: str, k: int) -> str:
    return export_reranked(run_dir, reranker, n=k)["out"]


def summary(config: Config, result: PipelineResult) -> str:
    """The table `recsys pipeline` ends with."""
    masked = "masked" if config.eval.exclude_seen else "not masked"
    rows = [(name, result.test[name], result.test[f"{name}_all"])
            for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")]
    lines = [table(("test metric", f"seen {masked}", "seen not masked"), rows), ""]
    if result.rerank_test is not None:
        rerank = [(name, result.rerank_test[f"retrieval_{name}"], result.rerank_test[name])
                  for name in ("ndcg@10", "recall@10")]
        lines += [table(("test metric", "retrieval", "retrieval + rerank"), rerank), ""]
    lines += [
        table(("stage", "seconds", "output"),
              [(s.name, "remembered" if s.remembered else f"{s.seconds:.1f}", s.output)
               for s in result.stages]),
        "",
        table(("", ""), [
            ("model", config.model.name),
            ("dataset", config.data.dir),
            ("users evaluated", int(result.test["users"])),
            ("coverage@10", result.test["coverage@10"]),
            ("mlflow run", f"{result.run_id} @ {tracking.tracking_uri(config.tracking)}"),
        ]),
    ]
    return "\n".join(lines)
