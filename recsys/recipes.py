"""Data and models of a run: load the split, build the model it needs, reload a finished run.

Retrieval models train on the leave-one-out `Split` and are selected on valid NDCG@10; the
reranker (a CTR model) trains on a temporal `CtrSplit` and is selected on valid AUC, or, with
`model.reranker.task: listwise`, on a retriever's candidate lists (`RerankData`) and is selected
on the valid NDCG@10 of retrieval + rerank. The functions here hide that from the training loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from features.masking import attribute_codes, mutual_information
from recsys.config import Config, config_from_dict
from recsys.data import ensure_dataset, load_dataset
from recsys.data.ctr import CtrSplit, ctr_split
from recsys.data.schema import Dataset
from recsys.data.split import Split, leave_one_out
from recsys.eval.ctr import SELECT as CTR_SELECT
from recsys.eval.ctr import evaluate_ctr, write_calibration
from recsys.eval.rerank import evaluate_rerank
from recsys.eval.retrieval import evaluate
from recsys.inputs.rerank_lists import RerankData
from recsys.inputs.reranker import build_reranker_inputs
from recsys.inputs.two_tower import build_tower_inputs
from recsys.models import build_model
from recsys.runtime.checkpoint import load_weights, read_checkpoint
from recsys.tasks.ctr import CtrTask
from recsys.tasks.listwise import ListwiseTask
from recsys.tasks.retrieval import NextItemTask, TwoTowerTask


def load_data(config: Config) -> tuple[Dataset, Split | CtrSplit]:
    """Prepare the dataset if needed, load and validate it, and split it: leave-one-out, or
    labelled and by time for the reranker (`data.ctr`)."""
    data = config.data
    dataset = load_dataset(ensure_dataset(data.source, data.raw, data.dir, data.mapping))
    if _listwise(config):
        return dataset, rerank_data(config, dataset.interactions)
    if config.model.name == "reranker":
        ctr = data.ctr
        return dataset, ctr_split(dataset.interactions, dataset.items["item_id"],
                                  ctr.positive_min, ctr.negative_max, ctr.valid_from,
                                  ctr.test_from, config.model.reranker.max_len)
    split = leave_one_out(dataset.interactions, dataset.items["item_id"], data.cold_items)
    return dataset, split


def rerank_data(config: Config, interactions: pd.DataFrame | None = None) -> RerankData:
    """The retriever of `model.reranker.retrieval_run` (its best checkpoint), its split and the
    candidate lists; the retriever must have been trained on this config's dataset, whose
    `interactions` give the times of `recent_popularity_days`."""
    run = config.model.reranker.retrieval_run
    if run is None:
        raise ValueError("model.reranker.retrieval_run must name a retrieval run dir for task "
                         "'listwise'")
    retriever, retrieval_config, split = load_run(Path(run) / "checkpoint" / "best")
    if not hasattr(retriever, "score"):
        raise ValueError(f"{run} is a {retrieval_config.model.name!r} run, not a retriever")
    ours, theirs = config.data, retrieval_config.data
    if (Path(ours.dir).resolve(), ours.cold_items) != (Path(theirs.dir).resolve(),
                                                       theirs.cold_items):
        raise ValueError(f"the retrieval run {run} was trained on {theirs.dir} (cold_items "
                         f"{theirs.cold_items}), this config reads {ours.dir} "
                         f"(cold_items {ours.cold_items}): they must match")
    return RerankData(split, retriever, config.model.reranker, config.eval.exclude_seen,
                      interactions)


def _listwise(config: Config) -> bool:
    return config.model.name == "reranker" and config.model.reranker.task == "listwise"


def new_model(config: Config, dataset: Dataset, split: Split) -> nn.Module:
    """A freshly initialised model of `config.model` for this data (seed the RNG first)."""
    if config.model.name == "reranker":
        inputs = build_reranker_inputs(config.model.reranker, dataset.items, dataset.users, split)
        return build_model(config.model, split.n_items, inputs=inputs)
    counts = torch.as_tensor(split.train_item_counts)
    inputs = None
    if config.model.name == "two_tower":
        inputs = build_tower_inputs(config.model.two_tower, dataset.items, dataset.users,
                                    split.users.ids, split.train_item_counts)
    return build_model(config.model, split.n_items, counts, inputs)


def training_task(config: Config, dataset: Dataset, split: Split, model: nn.Module):
    """The batches and loss that train `model` (see recsys.tasks.retrieval, recsys.tasks.ctr)."""
    if _listwise(config):
        return ListwiseTask(model, split.train, config.train.batch_size,
                            config.model.reranker.list_size)
    if config.model.name == "reranker":
        return CtrTask(model, split.train, config.train.batch_size)
    if config.model.name == "two_tower":
        nmi = None
        if config.model.two_tower.masking.kind == "correlated":
            nmi = item_feature_nmi(dataset, model.item_tower.feature_names)
        return TwoTowerTask(model, config.model.two_tower, split, config.train.batch_size, nmi)
    return NextItemTask(model, split, model.max_len, config.train.batch_size)


def item_feature_nmi(dataset: Dataset, features: tuple[str, ...]) -> np.ndarray:
    """(F, F) normalised mutual information between the item features, over the item table."""
    return mutual_information(attribute_codes(dataset.items, features))


def evaluate_model(config: Config, model: nn.Module, split: Split | CtrSplit,
                   which: str) -> dict[str, float]:
    """The run's metrics on `which` ("valid" or "test"): ranking metrics, or CTR metrics."""
    if _listwise(config):
        return evaluate_rerank(model, split, which, config.eval.ks)
    if config.model.name == "reranker":
        return evaluate_ctr(model, split, which)
    return evaluate(model, split, which, config.eval)


def selection_metric(config: Config) -> str:
    """The validation metric (higher is better) that picks the best epoch and stops early."""
    return CTR_SELECT if config.model.name == "reranker" and not _listwise(config) \
        else "ndcg@10"


def run_artifacts(config: Config, model: nn.Module, split: Split | CtrSplit,
                  folder: Path) -> list[Path]:
    """Model-kind specific files of a finished run (the test calibration of a CTR model)."""
    if config.model.name == "reranker" and not _listwise(config):
        return write_calibration(model, split, "test", folder)
    return []


def check_dataset(recorded: str | None, dataset: Dataset, run: Path) -> None:
    """Refuse a run whose dataset changed since it was trained (re-prepared from edited raw
    files, or replaced): its users, items and histories would silently be other ones."""
    current = dataset.info.get("sha256")
    if recorded is not None and recorded != current:
        raise ValueError(f"{run} was trained on the dataset in {dataset.path} with content "
                         f"sha256 {recorded}, which now holds {current}: the dataset changed "
                         "under the run; train again, or restore the data it was trained on")


def check_run_id(state: dict, run_dir: Path) -> None:
    """Refuse a run dir whose checkpoint belongs to another run: a copy or a renamed dir would
    write a second history into the original MLflow run, or label exports with a wrong id."""
    recorded = state.get("run_id", run_dir.name)  # older checkpoints did not record it
    if recorded != run_dir.name:
        raise ValueError(f"{run_dir}: this run dir holds run {recorded} (a copied or renamed run "
                         f"dir?); use it under its own name, {run_dir.parent / recorded}")


def load_run(checkpoint: str | Path) -> tuple[nn.Module, Config, Split | CtrSplit]:
    """Rebuild a checkpoint's model (in eval mode) with the data it was trained on; refuse if
    that data changed since."""
    doc = read_checkpoint(Path(checkpoint))
    run_dir = Path(checkpoint).parents[1]
    check_run_id(doc["state"], run_dir)  # artifacts are labelled with the dir's name
    config = config_from_dict(doc["config"])
    dataset, split = load_data(config)
    check_dataset(doc["state"].get("dataset_sha256"), dataset, run_dir)
    with torch.random.fork_rng():  # the caller's random stream stays its own
        torch.manual_seed(config.train.seed)  # weights are overwritten; init stays repeatable
        model = new_model(config, dataset, split)
    load_weights(Path(checkpoint), model)
    return model.eval(), config, split


def evaluate_run(run_dir: str | Path, which: str = "test") -> dict[str, float]:
    """Metrics of a run's best checkpoint on `which` ("valid" or "test"), from the run dir alone."""
    model, config, split = load_run(Path(run_dir) / "checkpoint" / "best")
    return evaluate_model(config, model, split, which)
