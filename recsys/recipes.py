"""The one table of model kinds: how each one's data, model, training task, evaluation and
artifacts are made, and how a finished run is rebuilt from its dir.

A row of `RECIPES` is keyed by (model name, the model section's `task` or None): the reranker
trains either as a CTR model on a temporal `CtrSplit` (selected on valid AUC) or listwise on a
retriever's candidate lists (`RerankData`, selected on the valid NDCG@10 of retrieval + rerank);
the retrieval models train on the leave-one-out `Split` and are selected on valid NDCG@10.
Nothing outside this table asks which model a config names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from features.masking import attribute_codes, mutual_information
from recsys.config import Config, read_yaml, stored_config
from recsys.config.loading import TEXT_ENCODER
from recsys.data import ensure_dataset, load_dataset
from recsys.data.ctr import CtrSplit, ctr_split
from recsys.data.schema import Dataset
from recsys.data.split import Split, leave_one_out
from recsys.eval.ctr import SELECT as CTR_SELECT
from recsys.eval.ctr import evaluate_ctr, write_calibration
from recsys.eval.rerank import evaluate_rerank
from recsys.eval.retrieval import evaluate
from recsys.inputs.recformer import RecformerRetriever, build_item_tokens, load_tokenizer
from recsys.inputs.recformer_corpus import build_corpus
from recsys.inputs.rerank_lists import RerankData
from recsys.inputs.reranker import RerankerScorer, build_reranker_inputs
from recsys.inputs.two_tower import TwoTowerRetriever, build_tower_inputs
from recsys.models import Popularity, Recformer, Reranker, SASRec, TwoTower
from recsys.models.recformer import MaskedLMHead
from recsys.runtime.checkpoint import load_weights, read_checkpoint
from recsys.tasks.ctr import CtrTask
from recsys.tasks.hooks import Hook
from recsys.tasks.listwise import ListwiseTask
from recsys.tasks.recformer import ItemTableRefresh, RecformerTask
from recsys.tasks.recformer_pretrain import PretrainTask
from recsys.tasks.retrieval import NextItemTask, TwoTowerTask

TrainData = Split | CtrSplit | RerankData  # what a kind trains and is evaluated on


@dataclass(frozen=True)
class Recipe:
    """How one kind of model is trained, evaluated and kept (a row of `RECIPES`)."""

    split: Callable[[Config, Dataset], TrainData]  # its training data from the dataset
    model: Callable[[Any, Dataset, TrainData], nn.Module]  # built from its own config section
    task: Callable[[Config, Dataset, TrainData, nn.Module], nn.Module | None]  # the loss
    # ^ module (holding the model, forward(batch) -> loss); None: nothing to train
    evaluate: Callable[[Config, nn.Module, TrainData, str], dict[str, float]]
    selection: str  # the valid metric (higher is better) that picks the epoch and stops early
    artifacts: Callable[[Config, nn.Module, TrainData, Path], list[Path]] = (
        lambda config, model, data, folder: [])  # files a finished run writes besides metrics
    hooks: Callable[[Config], list[Hook]] = lambda config: []  # its task's training-loop hooks
    offers: frozenset[str] = frozenset()  # what its model answers, besides training:
    # ^ "scores" score(history, users) over the catalogue (a retriever a reranker can rerank),
    # "vectors" user_vectors / item_vectors (embedding and candidate exports), "lists"
    # score_lists of candidate lists (reranked exports)


RETRIEVER = frozenset({"scores", "vectors"})


def _leave_one_out(config: Config, dataset: Dataset) -> Split:
    return leave_one_out(dataset.interactions, dataset.items["item_id"], config.data.cold_items)


def _ctr_split(config: Config, dataset: Dataset) -> CtrSplit:
    ctr = config.data.ctr
    return ctr_split(dataset.interactions, dataset.items["item_id"], ctr.positive_min,
                     ctr.negative_max, ctr.valid_from, ctr.test_from,
                     config.model.reranker.max_len)


def _two_tower(section, dataset: Dataset, split: Split) -> TwoTowerRetriever:
    inputs = build_tower_inputs(section, dataset.items, dataset.users, split.users.ids,
                                split.train_item_counts)
    return TwoTowerRetriever(TwoTower(section, inputs.sizes), inputs)


def _reranker(section, dataset: Dataset, split: CtrSplit | RerankData) -> RerankerScorer:
    inputs = build_reranker_inputs(section, dataset.items, dataset.users, split)
    return RerankerScorer(Reranker(section, inputs.sizes), inputs)


def _two_tower_task(config: Config, dataset: Dataset, split: Split, model: TwoTowerRetriever):
    loss = config.train.loss
    if config.model.two_tower.finetune_text and not any(
            TEXT_ENCODER.startswith(prefix) for prefix in config.train.lr_groups):
        raise ValueError(f"config key 'train.lr_groups': model.two_tower.finetune_text trains "
                         "the text encoder, so give it its own rate, e.g. "
                         f"{{{TEXT_ENCODER}: 5.0e-5}} (at train.lr {config.train.lr} the "
                         "pre-trained weights are lost)")
    nmi = None
    if loss.masking.kind == "correlated":
        nmi = item_feature_nmi(dataset, model.feature_names)
    return TwoTowerTask(model, loss, split, model.max_len, config.train.batch_size, nmi)


def _ranking(config: Config, model: nn.Module, split: Split, which: str) -> dict[str, float]:
    return evaluate(model, split, which, config.eval)


def _recformer(section, dataset: Dataset, split: Split) -> RecformerRetriever:
    catalogue = build_item_tokens(section, dataset.items, load_tokenizer(section))
    model = Recformer(section)
    head = MaskedLMHead.matching(model) if section.task == "pretrain" else None
    return RecformerRetriever(model, catalogue, head, encode_batch=section.encode_batch,
                              repeat_bias=section.repeat_bias)


def _pretrain_task(config: Config, dataset: Dataset, split: Split, model: RecformerRetriever):
    """MLM + item-item contrastive on the target's train prefixes and the corpus sets, none of
    which may be the target itself (its valid and test items would leak into training)."""
    section = config.model.recformer
    target = {Path(config.data.raw).resolve(), Path(config.data.dir).resolve()}
    for i, corpus_set in enumerate(section.pretrain_corpus):
        if target & {Path(corpus_set.raw).resolve(), Path(corpus_set.dir).resolve()}:
            raise ValueError(f"config key 'model.recformer.pretrain_corpus[{i}]': "
                             f"{corpus_set.dir} is the target dataset; its train prefixes "
                             "join the corpus anyway, and its valid and test items must not")
    corpus = build_corpus(section, dataset.items, split.train, load_tokenizer(section))
    return PretrainTask(model, corpus, config.train.loss, config.train.batch_size)


def _recformer_task(config: Config, dataset: Dataset, split: Split, model: RecformerRetriever):
    """Fine-tuning; a run that starts (not one rebuilt to evaluate) takes its encoder from the
    pre-training run `init_from` (its best checkpoint) before the first step."""
    start = config.model.recformer.init_from
    loss = config.train.loss
    if config.model.recformer.repeat_bias and loss.exclude_history:
        raise ValueError("config key 'model.recformer.repeat_bias': the bias learns from the "
                         "history's items as negatives, which train.loss.exclude_history drops; "
                         "set that to false")
    if start is not None:
        check_pretraining(config, Path(start))
        load_weights(Path(start) / "checkpoint" / "best", model.model, prefix="model.")
    return RecformerTask(model, split, config.train.batch_size, loss.temperature,
                         loss.exclude_history)


def check_pretraining(config: Config, start: Path) -> None:
    """Refuse a pre-training run that saw this run's valid or test items: one whose corpus
    holds this dataset whole, or that pre-trained on its train prefixes under another split."""
    theirs = stored_config(read_yaml(start / "config.yaml", "run config"))
    key = "config key 'model.recformer.init_from'"
    if theirs.model.name != "recformer" or theirs.model.recformer.task != "pretrain":
        raise ValueError(f"{key}: {start} is not a Recformer pre-training run")
    ours = {Path(config.data.raw).resolve(), Path(config.data.dir).resolve()}
    for corpus_set in theirs.model.recformer.pretrain_corpus:
        if ours & {Path(corpus_set.raw).resolve(), Path(corpus_set.dir).resolve()}:
            raise ValueError(f"{key}: {start} pre-trained on all of {corpus_set.dir}, this "
                             "run's dataset, valid and test items included")
    if Path(theirs.data.dir).resolve() in ours and theirs.data.cold_items != config.data.cold_items:
        raise ValueError(f"{key}: {start} pre-trained on this dataset's train prefixes with "
                         f"data.cold_items {theirs.data.cold_items}, this run holds out "
                         f"{config.data.cold_items}: its cold items were trained on")


RECIPES: dict[tuple[str, str | None], Recipe] = {
    ("popularity", None): Recipe(
        split=_leave_one_out,
        model=lambda section, dataset, split: Popularity(
            section, split.n_items, torch.as_tensor(split.train_item_counts)),
        task=lambda config, dataset, split, model: None,  # nothing to train
        evaluate=_ranking, selection="ndcg@10", offers=frozenset({"scores"})),
    ("sasrec", None): Recipe(
        split=_leave_one_out,
        model=lambda section, dataset, split: SASRec(section, split.n_items),
        task=lambda config, dataset, split, model: NextItemTask(
            model, split, model.max_len, config.train.batch_size),
        evaluate=_ranking, selection="ndcg@10", offers=RETRIEVER),
    ("two_tower", None): Recipe(
        split=_leave_one_out, model=_two_tower, task=_two_tower_task, evaluate=_ranking,
        selection="ndcg@10", offers=RETRIEVER),
    ("recformer", "finetune"): Recipe(
        split=_leave_one_out, model=_recformer, task=_recformer_task, evaluate=_ranking,
        selection="ndcg@10", offers=RETRIEVER,
        hooks=lambda config: [ItemTableRefresh(config.model.recformer.refresh_every,
                                               until=config.model.recformer.stage1_epochs)]),
    ("recformer", "pretrain"): Recipe(  # evaluated zero-shot: never fine-tuned on the target
        split=_leave_one_out, model=_recformer, task=_pretrain_task, evaluate=_ranking,
        selection="ndcg@10", offers=RETRIEVER,
        hooks=lambda config: [ItemTableRefresh(at_end=True)]),
    ("reranker", "ctr"): Recipe(
        split=_ctr_split, model=_reranker,
        task=lambda config, dataset, split, model: CtrTask(
            model, split.train, config.train.batch_size),
        evaluate=lambda config, model, split, which: evaluate_ctr(model, split, which),
        selection=CTR_SELECT,
        artifacts=lambda config, model, split, folder: write_calibration(
            model, split, "test", folder)),
    ("reranker", "listwise"): Recipe(
        split=lambda config, dataset: rerank_data(config, dataset.interactions),
        model=_reranker,
        task=lambda config, dataset, split, model: ListwiseTask(
            model, split.train, config.train.batch_size, config.train.loss.list_size),
        evaluate=lambda config, model, split, which: evaluate_rerank(
            model, split, which, config.eval.ks),
        selection="ndcg@10", offers=frozenset({"lists"})),
}


def recipe_of(config: Config) -> Recipe:
    """The row of `config`'s model: its name, and its section's `task` where it has one."""
    section = model_section(config)
    key = (config.model.name, getattr(section, "task", None))
    if key not in RECIPES:
        known = ", ".join(name if task is None else f"{name} (task {task})"
                          for name, task in RECIPES)
        raise ValueError(f"config key 'model.name': no recipe for {key}; known: {known}")
    return RECIPES[key]


def model_section(config: Config) -> Any:
    """The config section of the model `config` names (`model.<name>`)."""
    return getattr(config.model, config.model.name, None)


def load_data(config: Config) -> tuple[Dataset, TrainData]:
    """Prepare the dataset if needed, load and validate it, and cut the model's training data."""
    recipe = recipe_of(config)  # an unknown model fails before any work
    data = config.data
    dataset = load_dataset(ensure_dataset(data.source, data.raw, data.dir, data.mapping))
    return dataset, recipe.split(config, dataset)


def new_model(config: Config, dataset: Dataset, split: TrainData) -> nn.Module:
    """A freshly initialised model of `config.model` for this data (seed the RNG first)."""
    return recipe_of(config).model(model_section(config), dataset, split)


def training_task(config: Config, dataset: Dataset, split: TrainData, model: nn.Module):
    """The task module whose `forward(batch)` is `model`'s loss (see recsys.tasks)."""
    return recipe_of(config).task(config, dataset, split, model)


def evaluate_model(config: Config, model: nn.Module, split: TrainData,
                   which: str) -> dict[str, float]:
    """The run's metrics on `which` ("valid" or "test")."""
    return recipe_of(config).evaluate(config, model, split, which)


def selection_metric(config: Config) -> str:
    """The validation metric (higher is better) that picks the best epoch and stops early."""
    return recipe_of(config).selection


def recipe_hooks(config: Config) -> list[Hook]:
    """The training-loop hooks the model's task needs (before any the caller adds)."""
    return recipe_of(config).hooks(config)


def run_artifacts(config: Config, model: nn.Module, split: TrainData,
                  folder: Path) -> list[Path]:
    """Model-kind specific files of a finished run (the test calibration of a CTR model)."""
    return recipe_of(config).artifacts(config, model, split, folder)


def require(config: Config, what: str, purpose: str) -> None:
    """Refuse, naming the model, a model whose recipe does not offer `what` (see `Recipe.offers`)
    for `purpose`."""
    if what not in recipe_of(config).offers:
        raise ValueError(f"model {config.model.name!r} has no {what} {purpose}")


def rerank_data(config: Config, interactions: pd.DataFrame | None = None) -> RerankData:
    """The retriever of `model.reranker.retrieval_run` (its best checkpoint), its split and the
    candidate lists; the retriever must have been trained on this config's dataset, whose
    `interactions` give the times of `recent_popularity_days`."""
    run = config.model.reranker.retrieval_run
    if run is None:
        raise ValueError("model.reranker.retrieval_run must name a retrieval run dir for task "
                         "'listwise'")
    retriever, retrieval_config, split = load_run(Path(run) / "checkpoint" / "best")
    require(retrieval_config, "scores", f"to rank candidates with ({run} is not a retriever)")
    ours, theirs = config.data, retrieval_config.data
    if (Path(ours.dir).resolve(), ours.cold_items) != (Path(theirs.dir).resolve(),
                                                       theirs.cold_items):
        raise ValueError(f"the retrieval run {run} was trained on {theirs.dir} (cold_items "
                         f"{theirs.cold_items}), this config reads {ours.dir} "
                         f"(cold_items {ours.cold_items}): they must match")
    return RerankData(split, retriever, config.model.reranker, config.eval.exclude_seen,
                      interactions)


def item_feature_nmi(dataset: Dataset, features: tuple[str, ...]) -> np.ndarray:
    """(F, F) normalised mutual information between the item features, over the item table."""
    return mutual_information(attribute_codes(dataset.items, features))


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
    config = stored_config(doc["config"])
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
