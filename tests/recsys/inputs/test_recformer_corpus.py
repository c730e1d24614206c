"""Recformer pre-training corpus: the joint catalogue keeps the target's indices, the target
gives its train prefixes only, other sets join over the union of their attributes."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recsys.config.recformer import CorpusSet, RecformerConfig
from recsys.data.split import leave_one_out
from recsys.inputs.recformer import build_item_tokens, load_tokenizer
from recsys.inputs.recformer_corpus import TARGET, build_corpus

CONFIG = RecformerConfig(layers=1, attributes=("title", "genre", "brand"), max_attr_tokens=6,
                         max_item_tokens=16, max_tokens=64, max_items=4, max_item_positions=8)
TARGET_ITEMS = pd.DataFrame({
    "item_id": ["a", "b", "c", "d", "e", "f"],
    "title": ["red drill", "steel staple", "tape", "glue gun", "saw", "level"],
    "genre": ["tools", "office", "office", "tools", None, "tools"],
})
# u1: a b c | valid d | test e ; u2: b c | valid a | test f ; u3 (2 items): train only
TARGET_EVENTS = pd.DataFrame({
    "user_id": ["u1"] * 5 + ["u2"] * 4 + ["u3"] * 2,
    "item_id": ["a", "b", "c", "d", "e", "b", "c", "a", "f", "c", "b"],
    "timestamp": [1, 2, 3, 4, 5, 1, 2, 3, 4, 1, 2],
})
# an Amazon set in the LC-Rec layout: no "genre", but brand and categories
LCREC_SEQUENCES = {"0": [0, 1, 2], "1": [2, 0], "2": [1]}
LCREC_ITEMS = {
    "0": {"title": "hammer", "brand": "bosch", "categories": "Industrial & Scientific"},
    "1": {"title": "", "brand": "", "categories": ""},
    "2": {"title": "nails", "brand": "acme", "categories": ""},
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(CONFIG)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(TARGET_EVENTS, TARGET_ITEMS["item_id"])


def lcrec_set(root) -> CorpusSet:
    raw = root / "lcrec-raw"
    raw.mkdir()
    (raw / "Tiny.inter.json").write_text(json.dumps(LCREC_SEQUENCES))
    (raw / "Tiny.item.json").write_text(json.dumps(LCREC_ITEMS))
    return CorpusSet(source="amazon-lcrec", raw="lcrec-raw", dir="lcrec")  # relative to root


def words(tokenizer, corpus, index) -> list[str]:
    return tokenizer.convert_ids_to_tokens(corpus.items.item(index)[0].tolist())


def test_target_gives_train_prefixes_only_with_its_own_indices(tokenizer, split):
    corpus = build_corpus(CONFIG, TARGET_ITEMS, split.train, tokenizer)
    assert [s.tolist() for s in corpus.sequences] == [s.tolist() for s in split.train]
    assert [s.tolist() for s in corpus.sequences] == [[1, 2, 3], [2, 3], [3, 2]]
    assert corpus.sources == (TARGET,) * 3
    # d (4), e (5) and f (6) are only valid / test items of the target: never trained on
    assert not np.isin([4, 5, 6], np.concatenate(corpus.sequences)).any()
    alone = build_item_tokens(CONFIG, TARGET_ITEMS, tokenizer)
    assert np.array_equal(corpus.items.ids, alone.ids)
    assert np.array_equal(corpus.items.offsets, alone.offsets)
    assert corpus.mask_id == tokenizer.mask_token_id


def test_short_sequences_are_dropped(tokenizer):
    train = [np.array([1, 2]), np.array([3]), np.array([], np.int64)]
    corpus = build_corpus(CONFIG, TARGET_ITEMS, train, tokenizer)
    assert [s.tolist() for s in corpus.sequences] == [[1, 2]]
    assert corpus.stats[0].sequences == 1
    with pytest.raises(ValueError, match="no sequence of two or more items"):
        build_corpus(CONFIG, TARGET_ITEMS, train[1:], tokenizer)


def test_extra_set_joins_after_the_target_over_the_union_of_attributes(tokenizer, split,
                                                                       tmp_path, caplog):
    config = replace(CONFIG, task="pretrain", pretrain_corpus=(lcrec_set(tmp_path),))
    with caplog.at_level(logging.INFO, logger="recsys.inputs.recformer_corpus"):
        corpus = build_corpus(config, TARGET_ITEMS, split.train, tokenizer,
                              data_dir_base=tmp_path)
    assert (tmp_path / "lcrec" / "dataset.json").is_file()  # prepared on first use
    n = len(TARGET_ITEMS)
    assert corpus.items.n_items == n + 3
    # the set's items 1..3 become n+1..n+3, in time order; its one-item user is left out
    assert [s.tolist() for s in corpus.sequences[3:]] == [[n + 1, n + 2, n + 3], [n + 3, n + 1]]
    assert corpus.sources == (TARGET,) * 3 + ("lcrec",) * 2
    # target items read title + genre (no brand column); the set's read title + brand
    assert words(tokenizer, corpus, 1) == ["title", "red", "drill", "genre", "tools"]
    assert words(tokenizer, corpus, n + 1) == ["title", "hammer", "brand", "bosch"]
    assert words(tokenizer, corpus, n + 2) == [tokenizer.unk_token]  # no text at all
    assert [(s.name, s.sequences, s.items, s.items_without_text) for s in corpus.stats] == \
        [(TARGET, 3, 6, 0), ("lcrec", 2, 3, 1)]
    assert "lcrec gives 2 sequences over 3 items (1 without text)" in caplog.text


def test_tokenizer_without_mask_token_is_refused(tokenizer, split):
    class NoMask:
        mask_token_id = None
        name_or_path = "somewhere"

    with pytest.raises(ValueError, match="somewhere: the tokenizer has no mask token"):
        build_corpus(CONFIG, TARGET_ITEMS, split.train, NoMask())
