"""The config schema: one small frozen dataclass per section, value ranges as annotations.

A model receives only its own section. Ranges are annotated-types constraints (`Count`, `Share`
...), checked by `recsys.config.loading` when a config is read; a rule across keys of one section
raises `_Invalid` from `__post_init__`, naming the key to change.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Ge, MinLen

from recsys.config.distributed import DistributedConfig
from recsys.config.ranges import (  # noqa: F401 (ConfigError is part of this module's API)
    ConfigError,
    Count,
    NonNegative,
    Positive,
    Quantile,
    Share,
    _Invalid,
)
from recsys.config.recformer import RecformerConfig
from recsys.config.sparse import SparseConfig


@dataclass(frozen=True)
class CtrDataConfig:
    """How a CTR (reranker) run labels and splits interactions (recsys.data.ctr)."""

    positive_min: float = 4.0  # rating >= this -> label 1, when the dataset has no label column
    negative_max: float = 2.0  # rating <= this -> label 0; ratings in between are dropped
    valid_from: Quantile = 0.8  # global time quantile of the labelled rows where validation starts
    test_from: Quantile = 0.9  # global time quantile where test starts (train: before valid_from)

    def __post_init__(self):
        if self.negative_max >= self.positive_min:
            raise _Invalid("negative_max", f"{self.negative_max} must be below positive_min "
                                           f"{self.positive_min}")
        if self.valid_from >= self.test_from:
            raise _Invalid("valid_from", f"{self.valid_from} must be below test_from "
                                         f"{self.test_from}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "movielens-latest"  # converter name (recsys prepare --help lists them)
    raw: str = "data/sample/ml-latest-small"  # raw files, relative to the working directory
    dir: str = "data/prepared/ml-latest-small"  # canonical dataset dir written by prepare
    mapping: dict[str, Any] | None = None  # column mapping for source "tabular"
    cold_items: Share = 0.0  # share of items (newest first seen) kept out of training: cold start
    ctr: CtrDataConfig = field(default_factory=CtrDataConfig)  # labels + temporal split (reranker)


@dataclass(frozen=True)
class ItemTextConfig:
    attributes: tuple[str, ...] = ("title", "genres", "brand", "category", "tags", "description")
    # ^ attributes rendered into an item's sentence, in this order; absent ones are skipped
    max_tokens: Count = 32  # token budget per attribute value
    max_length: Count = 256  # token budget of the whole sentence


@dataclass(frozen=True)
class TextEncoderConfig:
    path: str | None = None  # local Hugging Face model dir; None = bundled all-MiniLM-L6-v2
    projection_dim: NonNegative = 0  # linear projection after mean pooling; 0 = none
    batch_size: Count = 128  # sentences per forward pass when encoding the catalogue
    bf16: bool = False  # bf16 autocast on CPUs that support it
    cache_dir: str | None = "cache/text"  # encodings keyed by (model, text) hash; None = off


@dataclass(frozen=True)
class SASRecConfig:
    max_len: Count = 200  # history positions the model sees (most recent kept)
    dim: Count = 64  # embedding and hidden size
    layers: Count = 2  # transformer blocks
    heads: Count = 1  # attention heads
    dropout: Share = 0.2  # dropout on embeddings, attention and feed-forward
    ffn_mult: Count = 4  # feed-forward width = ffn_mult * dim
    repeat_bias: bool = False  # learn one score offset for items already in the history

    def __post_init__(self):
        if self.dim % self.heads:
            raise _Invalid("heads", f"{self.heads} heads do not divide dim {self.dim}")


@dataclass(frozen=True)
class PopularityConfig:
    pass


@dataclass(frozen=True)
class MaskingConfig:
    kind: Literal["none", "random", "correlated"] = "none"  # SSL feature masking (Yao et al.)
    alpha: Annotated[float, Ge(0)] = 0.1  # weight of the contrastive loss beside the retrieval one
    temperature: Positive = 0.1  # softmax temperature of the contrastive (InfoNCE) loss
    batch_size: Count = 256  # items drawn uniformly from the catalogue per step for the SSL loss


@dataclass(frozen=True)
class LossConfig:
    """The training loss's settings; which loss a model trains with is its recipe's task."""

    temperature: Positive = 0.05  # two_tower, recformer: softmax temperature of the loss over
    # ^ cosine scores
    exclude_history: bool = False  # recformer fine-tuning: the user's history items are no
    # ^ negatives (eval.exclude_seen leaves them out of the ranking; the untrained encoder puts
    # ^ them first, and pushing them down moves what the ranking never reads)
    uniform_negatives: NonNegative = 0  # two_tower: negatives drawn uniformly from the
    # ^ catalogue, beside the in-batch ones
    logq: bool = True  # two_tower: subtract log sampling probability from each negative's logit
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # two_tower: SSL loss
    list_size: NonNegative = 32  # listwise reranker: candidates per training list (positive +
    # ^ sampled); 0 = all K
    mlm_probability: Share = 0.15  # recformer pretrain: share of key/value tokens masked
    mlm_weight: Annotated[float, Ge(0)] = 0.1  # recformer pretrain: weight of the MLM loss
    # ^ beside the item-item contrastive one


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: Count = 64  # output size of both towers (the retrieval embedding)
    max_len: Count = 50  # most recent history items the user tower sees
    item_ids: bool = True  # item-ID embedding in the item tower (off: text and attributes only)
    id_dropout: Share = 0.0  # training share of items shown without their ID (as cold ones are)
    user_ids: bool = True  # user-ID embedding in the user tower
    user_categorical: tuple[str, ...] = ()  # user attributes (users.parquet) as ID bags
    text: tuple[str, ...] = ("title",)  # attributes read by the frozen text encoder, one feature
    categorical: tuple[str, ...] = ()  # attributes embedded as ID bags through torchrec
    max_values: Count = 16  # values kept per categorical attribute of an item
    history: Literal["mean", "transformer"] = "mean"  # mean, or a transformer read at the newest
    history_layers: Count = 1  # transformer blocks when history = "transformer"
    hidden: Count = 256  # hidden width of each tower's MLP
    dropout: Share = 0.1  # dropout inside the towers' MLPs
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    text_max_tokens: Count = 64  # token budget of one attribute's text
    finetune_text: bool = False  # train the text encoder with the towers (off: frozen, cached);
    # ^ give it its own rate: train.lr_groups: {model.item_tower.text_encoder: 5.0e-5}


@dataclass(frozen=True)
class RerankerConfig:
    """DCN-v2 CTR model over (user, item, history before the interaction) (models/reranker.py)."""

    dim: Count = 16  # embedding size of each sparse feature (ID and attribute bags)
    user_ids: bool = True  # user-ID bag (users unseen in training read an empty bag)
    item_ids: bool = True  # item-ID bag (items unseen in training read an empty bag)
    user_id_dropout: Share = 0.0  # training share of rows shown without the user ID (as new users)
    item_id_dropout: Share = 0.0  # training share of rows shown without the item ID (as new items)
    user_categorical: tuple[str, ...] = ()  # user attributes (users.parquet) as ID bags
    categorical: tuple[str, ...] = ()  # item attributes as ID bags through torchrec
    max_values: Count = 16  # values kept per categorical attribute
    text: tuple[str, ...] = ("title",)  # item attributes read by the frozen text encoder
    max_len: Count = 50  # most recent items (before the interaction) pooled into the history
    history_stats: bool = True  # log count and smoothed positive rate of the user's earlier rows
    dense_hidden: tuple[Count, ...] = (128, 64)  # dense-arch MLP widths over the dense features
    cross_layers: NonNegative = 2  # DCN-v2 cross layers over [sparse embeddings, dense output]
    cross_rank: NonNegative = 0  # low-rank cross weights (U V^T of this rank); 0 = full matrices
    over_hidden: tuple[Count, ...] = (128, 64)  # over-arch MLP widths before the logit
    dropout: Share = 0.1  # dropout in the dense and over arches
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    text_max_tokens: Count = 64  # token budget of one attribute's text
    # relevance reranking of a retriever's top-K (recsys/inputs/rerank_lists.py, rerank_task.py)
    task: Literal["ctr", "listwise"] = "ctr"  # BCE on labelled rows, or softmax over candidates
    retrieval_run: str | None = None  # listwise: run dir of the retriever whose top-K is reranked
    candidates: Count = 100  # listwise: K, the retriever's top-K reordered (the rest keep order)
    train_positions: NonNegative = 20  # listwise: last N next-item examples of each train
    # ^ prefix; 0 = all
    retrieval_features: bool = False  # retrieval score (minus the list's top) and log1p(rank)
    blend: Annotated[tuple[float, ...], MinLen(1)] = (0.0,)  # listwise: weights w of the final
    # ^ score, reranker logit + w * (retrieval score - list top); the best valid NDCG@10 picks w
    recent_popularity_days: NonNegative = 0  # listwise: model input log1p(the candidate's train
    # ^ interactions, all users, in the N days before the example's time); 0 = off


@dataclass(frozen=True)
class ModelConfig:
    """The model a run trains and its one settings section; the other models' sections are
    None (a config holds, writes and logs only its own model's section)."""

    name: str = "sasrec"  # the model: one of the sections below, which holds its settings (how
    # ^ it trains is the row of recsys.recipes.RECIPES for that name)
    sasrec: SASRecConfig | None = None
    popularity: PopularityConfig | None = None
    two_tower: TwoTowerConfig | None = None
    reranker: RerankerConfig | None = None
    recformer: RecformerConfig | None = None

    def __post_init__(self):
        models = [f.name for f in dataclasses.fields(self) if f.name != "name"]
        if self.name not in models:
            raise _Invalid("name", f"{self.name!r} is not one of {', '.join(map(repr, models))}")
        for other in models:
            if other != self.name:
                object.__setattr__(self, other, None)
        if getattr(self, self.name) is None:  # the model's defaults
            section = typing.get_type_hints(type(self))[self.name].__args__[0]
            object.__setattr__(self, self.name, section())


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 42  # seeds weights, shuffling and dropout
    epochs: Count = 200  # upper bound; early stopping usually ends sooner
    batch_size: Count = 128  # training examples per batch (SASRec: history windows of max_len + 1)
    lr: Positive = 1e-3  # AdamW learning rate
    weight_decay: Annotated[float, Ge(0)] = 0.0  # AdamW weight decay
    eval_every: Count = 1  # validate every N epochs
    patience: Count = 10  # validations without a better selection metric before stopping
    threads: NonNegative = 0  # torch intra-op threads; 0 keeps torch's default
    runs_dir: str = "runs"  # run directories live here
    keep_freed_memory: bool = False  # faster CPU epochs, more peak RSS (recsys/runtime/memory.py)
    on_nan: Literal["stop", "skip_step"] = "stop"  # a non-finite loss: stop the run with an
    # ^ error, or skip that optimizer step (an epoch with no finite step still stops)
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # LR after the warmup:
    # ^ constant, or decaying to 0 at the last step of `epochs` (linearly or by cosine)
    warmup_steps: NonNegative = 0  # optimizer steps of linear LR warmup (step s: lr * (s+1)/W)
    grad_accum: Count = 1  # batches whose gradients add up before each optimizer step
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: forward and loss under bf16 autocast
    device: Literal["cpu", "cuda"] = "cpu"  # where the model, its task and batches live
    lr_groups: dict[str, Positive] = field(default_factory=dict)  # parameter-name prefix ->
    # ^ its own AdamW rate (e.g. {model.item_tower.text_encoder: 5.0e-5}); the rest train at lr
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class EvalConfig:
    exclude_seen: bool = True  # drop the user's prefix items from the ranking
    ks: Annotated[tuple[Count, ...], MinLen(1)] = (10, 20, 50)  # cut-offs for Recall@k / NDCG@k
    chunk_users: Count = 1024  # users scored at once; bounds memory to chunk x items


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "recsys"  # MLflow experiment name
    uri: str | None = None  # tracking URI; None -> $MLFLOW_TRACKING_URI or sqlite:///mlruns.db
    run_name: str | None = None  # MLflow run name; None -> the model name


@dataclass(frozen=True)
class ExportConfig:
    k: Count = 100  # candidates kept per user (recsys export --what candidates)
    part_users: Count = 20_000  # users per parquet part: the unit of resume and of torchrun shards;
    # an IVF search orders a part's users by inverted list, so larger parts search faster
    batch_users: Count = 1024  # users whose vectors are computed at once
    search_users: Count = 10_000  # users a search worker takes at once (an IVF,Flat scan shares
    # each list's matrix product among them: recsys/ann/ivf_scan.py)
    index: str = "Flat"  # faiss index_factory spec over the item vectors (Flat, IVF256,Flat ...)
    metric: Literal["ip", "cosine"] = "ip"  # candidate score: inner product or cosine
    nprobe: Count | None = None  # IVF lists searched per query; None = faiss default
    ef_search: Count | None = None  # HNSW search breadth; None = faiss default
    allow_items: str | None = None  # text file of raw item ids, one a line: only these offered
    deny_items: str | None = None  # text file of raw item ids, one a line: never offered
    out: str | None = None  # candidates dir; None = <run dir>/candidates


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
