"""Recformer inputs: item token lists under budgets, sequence batches, catalogue encoding
(the bundled MiniLM tokenizer; the model cut to one layer)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.config.recformer import RecformerConfig
from recsys.inputs.recformer import ItemTokens, build_item_tokens, encode_items, load_tokenizer
from recsys.models.recformer import CLS, KEY, PAD, VALUE, Recformer

CONFIG = RecformerConfig(layers=1, attributes=("title", "brand", "item_type"), max_attr_tokens=6,
                         max_item_tokens=12, max_tokens=40, max_items=4, max_item_positions=8)
ITEMS = pd.DataFrame({
    "item_id": ["a", "b", "c", "d", "e", "f"],
    "title": ["red drill", "steel staple kit", None, "Café 東京 🚀",
              "one two three four five six seven eight", "hammer"],
    "brand": ["bosch", None, "", "мир", "bosch", ["x", "y"]],
    "item_type": ["tool", "office", float("nan"), None, "long type name here", None],
})


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(CONFIG)


@pytest.fixture(scope="module")
def catalogue(tokenizer):
    return build_item_tokens(CONFIG, ITEMS, tokenizer)


def words(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(ids))


def test_item_is_key_value_pairs_in_attribute_order(catalogue, tokenizer):
    ids, types = catalogue.item(1)
    assert words(tokenizer, ids) == ["title", "red", "drill", "brand", "bosch", "item", "type",
                                     "tool"]
    assert types.tolist() == [KEY, VALUE, VALUE, KEY, VALUE, KEY, KEY, VALUE]
    assert catalogue.n_items == 6 and catalogue.lengths[0] == 0  # index 0: padding, no tokens
    ids, _ = catalogue.item(6)  # a list value is joined with ", "
    assert words(tokenizer, ids) == ["title", "hammer", "brand", "x", ",", "y"]


def test_budgets_cut_between_words_and_never_leave_a_key_alone(catalogue, tokenizer):
    ids, types = catalogue.item(5)
    # the title keeps 6 of its 8 words (max_attr_tokens); with "brand bosch" that is 9 of
    # the item's 12 tokens: "item type" takes 2 and its value keeps the 1 word left
    assert words(tokenizer, ids) == ["title", "one", "two", "three", "four", "five", "six",
                                     "brand", "bosch", "item", "type", "long"]
    assert (catalogue.lengths[1:] <= CONFIG.max_item_tokens).all()
    for index in range(1, catalogue.n_items + 1):
        _, types = catalogue.item(index)
        ends_of_keys = np.flatnonzero((types[:-1] == KEY) & (types[1:] != KEY))
        assert (types[ends_of_keys + 1] == VALUE).all() and types[-1] == VALUE


def test_a_value_over_the_room_left_is_cut_at_a_word(tokenizer):
    items = pd.DataFrame({"title": ["red drill"], "brand": ["bosch tools international"]})
    config = RecformerConfig(attributes=("title", "brand"), max_attr_tokens=32,
                             max_item_tokens=6, max_tokens=40)
    ids, types = build_item_tokens(config, items, tokenizer).item(1)
    assert words(tokenizer, ids) == ["title", "red", "drill", "brand", "bosch", "tools"]
    assert types.tolist() == [KEY, VALUE, VALUE, KEY, VALUE, VALUE]
    # room for the key "brand" but not one value token: the key goes too
    config = RecformerConfig(attributes=("title", "brand"), max_item_tokens=4, max_tokens=40)
    ids, _ = build_item_tokens(config, items, tokenizer).item(1)
    assert words(tokenizer, ids) == ["title", "red", "drill"]
    # one word longer than the whole budget is cut at a token
    config = RecformerConfig(attributes=("brand",), max_attr_tokens=2)
    long_word = pd.DataFrame({"brand": ["makita"]})  # ma ##kit ##a
    ids, _ = build_item_tokens(config, long_word, tokenizer).item(1)
    assert words(tokenizer, ids) == ["brand", "ma", "##kit"]


def test_items_without_text_read_as_one_unknown_token(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="recsys.inputs.recformer"):
        catalogue = build_item_tokens(CONFIG, ITEMS, tokenizer)
    assert catalogue.empty == 1
    ids, types = catalogue.item(3)
    assert ids.tolist() == [tokenizer.unk_token_id] and types.tolist() == [VALUE]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("recformer: 1 of 6 items have no text")


def test_non_english_and_emoji_text_survive(catalogue, tokenizer):
    tokens = words(tokenizer, catalogue.item(4)[0])
    # uncased MiniLM strips accents; its vocabulary has no emoji, which reads as [UNK]
    assert tokens == ["title", "cafe", "東", "京", tokenizer.unk_token, "brand", "м", "##и",
                      "##р"]


def test_absent_attributes_are_skipped_but_one_must_exist(tokenizer):
    only_title = build_item_tokens(CONFIG, ITEMS[["item_id", "title"]], tokenizer)
    assert words(tokenizer, only_title.item(1)[0]) == ["title", "red", "drill"]
    config = RecformerConfig(attributes=("genres",))
    with pytest.raises(ValueError, match=r"recformer.attributes \['genres'\]: none .*title"):
        build_item_tokens(config, ITEMS, tokenizer)


def expected_sequence(catalogue: ItemTokens, history: list[int]):
    """One row built the slow, obvious way: newest first, whole items while they fit."""
    tokens, types, positions = [catalogue.cls_id], [CLS], [0]
    for rank, item in enumerate(reversed([i for i in history if i]), start=1):
        ids, kinds = catalogue.item(item)
        if rank > catalogue.max_items or len(tokens) + len(ids) > catalogue.max_tokens:
            break
        tokens += ids.tolist()
        types += kinds.tolist()
        positions += [rank] * len(ids)
    return tokens, types, positions


def test_sequences_match_the_obvious_construction(catalogue):
    rng = np.random.default_rng(0)
    histories = rng.integers(1, catalogue.n_items + 1, size=(16, 7))
    for row, keep in enumerate(rng.integers(0, 8, size=16)):
        histories[row, : 7 - keep] = 0  # left padding; row with keep 0 is empty
    for budget in (CONFIG.max_tokens, 20):  # the second drops items in most rows
        tight = replace(catalogue, max_tokens=budget)
        batch = tight.sequences(histories)
        assert all(t.shape == batch.tokens.shape and t.dtype == torch.int64 for t in batch)
        width = batch.tokens.shape[1]
        for row, history in enumerate(histories.tolist()):
            tokens, types, positions = expected_sequence(tight, history)
            n = len(tokens)
            assert batch.tokens[row, :n].tolist() == tokens
            assert batch.token_types[row, :n].tolist() == types
            assert batch.item_positions[row, :n].tolist() == positions
            assert batch.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
            assert (batch.token_types[row, n:] == PAD).all()
            assert (batch.tokens[row, n:] == catalogue.pad_id).all()


def test_over_budget_drops_the_oldest_items_whole(catalogue):
    sizes = catalogue.lengths
    history = [1, 2, 6, 5]  # time order: 5 is the newest
    budget = 1 + sizes[5] + sizes[6]  # room for the two newest only
    tight = replace(catalogue, max_tokens=int(budget + sizes[2] - 1))
    batch = tight.sequences(np.array([history]))
    assert batch.item_positions[0].max() == 2  # items 5 and 6 kept, 2 and 1 dropped
    assert batch.attention_mask.sum() == budget
    kept = batch.tokens[0, 1:budget].tolist()
    assert kept == catalogue.item(5)[0].tolist() + catalogue.item(6)[0].tolist()
    few = replace(catalogue, max_items=1).sequences(np.array([history]))
    assert few.tokens[0, 1:].tolist() == catalogue.item(5)[0].tolist()  # the newest alone


def test_single_items_are_one_item_sequences(catalogue):
    single = catalogue.single_items([2, 5])
    for row, item in enumerate([2, 5]):
        one = catalogue.sequences(np.array([[0, 0, item]]))
        n = one.tokens.shape[1]
        for got, want in zip(single, one, strict=True):
            assert torch.equal(got[row, :n], want[0])
    with pytest.raises(ValueError, match="0 is the padding index"):
        catalogue.single_items([0, 1])
    with pytest.raises(IndexError, match=r"outside 0\.\.6"):
        catalogue.sequences(np.array([[1, 7]]))


def test_encoded_items_equal_encoding_each_alone(catalogue):
    torch.manual_seed(0)
    model = Recformer(CONFIG)
    model.train()  # encode_items switches dropout off and restores the mode
    indices = np.array([5, 1, 3, 4])
    vectors = encode_items(model, catalogue, indices, batch_size=3)
    assert model.training and vectors.shape == (4, model.dim) and not vectors.requires_grad
    model.eval()
    with torch.no_grad():
        for row, item in enumerate(indices):
            alone = model.encode(*catalogue.sequences(np.array([[item]])))
            assert torch.allclose(vectors[row], alone[0], atol=1e-5)
