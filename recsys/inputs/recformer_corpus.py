"""Recformer pre-training corpus: one joint catalogue and the item sequences that train on it.

    corpus = build_corpus(config, dataset.items, split.train, tokenizer)
    corpus.items.sequences(histories)        # RecformerInputs over the joint catalogue
    corpus.sequences[k], corpus.sources[k]   # k-th sequence (joint indices, oldest first), origin

The joint catalogue lists the target's items first with their own indices (1..n_target, so an
index of the target's split means the same item here), then the items of each
`config.pretrain_corpus` set in its items.parquet order. Sets name different attributes; their
tables are joined over the union of columns, an attribute a set lacks simply absent for its
items (build_item_tokens skips missing values).

The target contributes its train prefixes only, so no valid or test interaction of the target is
ever trained on; each other set contributes every user's whole sequence. Sequences of fewer
than two items (no history before a next item) are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config.recformer import CorpusSet, RecformerConfig
from recsys.data import ensure_dataset, load_dataset
from recsys.data.split import leave_one_out
from recsys.inputs.recformer import ItemTokens, build_item_tokens
from recsys.models.recformer import VALUE

log = logging.getLogger(__name__)

TARGET = "target"  # the source name of the target's own train prefixes


@dataclass(frozen=True)
class SourceStats:
    """What one source brought to the corpus (logged, and kept for the run's record)."""

    name: str  # TARGET, or the set's dataset dir as the config names it
    sequences: int  # sequences of >= 2 items it contributes
    items: int  # its items in the joint catalogue
    items_without_text: int  # of those, items with no text (each read as the fallback token)
    sha256: str | None = None  # a corpus set's dataset content hash (None for the target)


@dataclass(frozen=True)
class Corpus:
    """The joint catalogue's token lists and every training sequence over it."""

    items: ItemTokens  # joint catalogue: target items 1..n_target, then each set's
    sequences: list[np.ndarray]  # joint item indices (int64), oldest first, each >= 2 items
    sources: tuple[str, ...]  # per sequence: the name of the source it came from
    stats: tuple[SourceStats, ...]  # per source, the target first
    mask_id: int  # the tokenizer's [MASK] id (masked language modelling)


def build_corpus(config: RecformerConfig, target_items: pd.DataFrame,
                 target_train: list[np.ndarray], tokenizer,
                 data_dir_base: Path | None = None) -> Corpus:
    """The corpus of the target's train prefixes (`target_train`, indices into `target_items`)
    and every sequence of each `config.pretrain_corpus` set, prepared when missing.

    `data_dir_base` resolves the sets' relative raw / dir paths (default: the working dir).
    """
    if tokenizer.mask_token_id is None:
        raise ValueError(f"recformer.backbone {tokenizer.name_or_path}: the tokenizer has no "
                         "mask token (masked language modelling needs one)")
    tables = [target_items]
    parts = [(TARGET, [np.asarray(s, np.int64) for s in target_train])]
    hashes = [None]
    for corpus_set in config.pretrain_corpus:
        items, sequences, sha256 = _load_set(corpus_set, data_dir_base)
        offset = sum(len(t) for t in tables)  # joint index = offset + the set's own index
        tables.append(items)
        parts.append((corpus_set.dir, [s + offset for s in sequences]))
        hashes.append(sha256)
    joint = pd.concat(tables, ignore_index=True, sort=False)  # union of columns, NaN elsewhere
    catalogue = build_item_tokens(config, joint, tokenizer)

    no_text = _without_text(catalogue)  # (n_items + 1,) bool
    sequences, sources, stats, start = [], [], [], 1
    for (name, seqs), table, sha256 in zip(parts, tables, hashes, strict=True):
        kept = [s for s in seqs if len(s) >= 2]
        sequences += kept
        sources += [name] * len(kept)
        end = start + len(table)
        stats.append(SourceStats(name, len(kept), len(table), int(no_text[start:end].sum()),
                                 sha256))
        start = end
        log.info("recformer corpus: %s gives %d sequences over %d items (%d without text)",
                 *_fields(stats[-1]))
    if not sequences:
        raise ValueError("recformer pre-training corpus: no sequence of two or more items "
                         f"(sources: {', '.join(s.name for s in stats)})")
    return Corpus(items=catalogue, sequences=sequences, sources=tuple(sources),
                  stats=tuple(stats), mask_id=int(tokenizer.mask_token_id))


def _load_set(corpus_set: CorpusSet, base: Path | None
              ) -> tuple[pd.DataFrame, list[np.ndarray], str | None]:
    """One extra set's items table, every user's whole sequence (the set's own item indices,
    time ordered as the evaluation split orders them) and the dataset's content hash."""
    raw, out = (Path(p) if base is None else Path(base) / p
                for p in (corpus_set.raw, corpus_set.dir))
    mapping = getattr(corpus_set, "mapping", None)  # a set may one day carry its own mapping
    dataset = load_dataset(ensure_dataset(corpus_set.source, raw, out, mapping))
    split = leave_one_out(dataset.interactions, dataset.items["item_id"])
    # leave_one_out orders each user's items by (timestamp, row order), then holds the last two
    # out; put them back for the whole sequence
    sequences = [np.concatenate([train, [valid, test]]) if valid else train
                 for train, valid, test in zip(split.train, split.valid_target,
                                               split.test_target, strict=True)]
    return dataset.items, sequences, dataset.info.get("sha256")


def _without_text(catalogue: ItemTokens) -> np.ndarray:
    """(n_items + 1,) True where an item has no text: a real item starts with a KEY token, an
    empty one is the single fallback token, typed VALUE."""
    first = np.full(catalogue.n_items + 1, -1, np.int64)
    first[1:] = catalogue.types[catalogue.offsets[1:-1]]
    return first == VALUE


def _fields(stats: SourceStats) -> tuple:
    return stats.name, stats.sequences, stats.items, stats.items_without_text
