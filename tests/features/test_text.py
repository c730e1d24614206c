"""Item sentences: golden strings on real rows of every shared dataset, then each rule alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.text import (
    DEFAULT_ATTRIBUTES,
    clean_text,
    item_sentence,
    item_sentences,
    truncate_text,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

# source, raw folder, {item_id: expected sentence} under the default attributes and budgets
GOLDEN = {
    "ml-100k": ("movielens-100k", SHARED / "ml-100k", {
        "1": "title Toy Story (1995) genres Animation, Children's, Comedy",
        "1128": "title Heidi Fleiss: Hollywood Madam (1995) genres Documentary",  # trailing space
        "267": "title unknown",  # no genres: skipped
    }),
    "ml-latest": ("movielens-latest", REPO / "data" / "sample" / "ml-latest-small", {
        "1": "title Toy Story (1995) genres Adventure, Animation, Children, Comedy, Fantasy "
             "tags pixar, fun",
        "8684": "title Man Escaped, A (Un condamné à mort s'est échappé ou Le vent souffle où il "
                "veut) (1956) genres Adventure, Drama",  # double space collapsed
    }),
    "ml-1m": ("movielens-1m", SHARED / "ml-1m", {
        # "&#8230;" in the raw title
        "3845": "title And God Created Woman (Et Dieu…Créa la Femme) (1956) genres Drama",
    }),
    "amazon-lcrec": ("amazon-lcrec", SHARED / "amazon-industrial-scientific", {
        "254": "title Ancor Tinned Copper Lugs 8 AWG - 4/0 AWG. category Industrial & Scientific, "
               "Industrial Electrical, Wiring & Connecting, Terminals, Ring Terminals",  # desc "."
        "4188": "title MeltInk3D PLA-1K175GLD05 Gold PLA 3D Printer Filament Ø 1.75mm, 1Kg "
                "(2.2 Lb), MADE in USA, Dimensional Accuracy: ± 0.05mm. brand MeltInk3D category "
                "Industrial & Scientific, Additive Manufacturing Products, 3D Printing Supplies, "
                "3D Printing Filament description Non Toxic PLA Filament For 3D Printing: In the "
                "realm of 3D printing, polylactic acid (or PLA) is king. The raw material to keep "
                "you printing, a PLA filament is to a",  # mojibake "Ã˜" / "Â±" repaired
    }),
    "amazon-2018": ("amazon-2018", SHARED / "amazon2018-magazine-subscriptions", {
        "B00005N7P0": "brand Future US, Inc. category Magazine Subscriptions, Technology, "
                      "Computers & Internet description MAXIMUM PC is the ultimate upgrade for "
                      "the savvy PC owners. Every month, the magazine is packed with breaking "
                      "news, tons of tips & techniques, and the most in-depth reviews anywhere. "
                      "Designed",
        "B00005N7SS": "title SmartMoney (1-year) category Magazine Subscriptions, Business & "
                      "Investing, Finance",
    }),
    "amazon-s3rec": ("amazon-s3rec", SHARED / "amazon-beauty", {"1": ""}),  # ids only, no text
    "mind": ("mind", SHARED / "mind-small-fragment", {
        "N10575": "title 20 Funny Things People in the 1980s Were Totally Guilty of Doing "
                  "category lifestyle",  # leading zero-width space dropped
    }),
}
EMPTY = {"amazon-2018": 6, "amazon-s3rec": 12101, "mind": 21754}


@pytest.fixture(scope="module")
def real_items(tmp_path_factory):
    """real_items('ml-100k') -> the items table prepared from ../shared/data, or skip."""
    from recsys.data import load_dataset, prepare

    cache = {}

    def items(name: str) -> pd.DataFrame:
        source, raw, _ = GOLDEN[name]
        if not raw.is_dir():
            pytest.skip(f"real dataset not available: {raw}")
        if name not in cache:
            out = tmp_path_factory.mktemp("text") / name
            prepare(source, raw, out)
            cache[name] = load_dataset(out).items
        return cache[name]

    return items


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_sentences_on_real_rows(real_items, name):
    items = real_items(name)
    sentences, empty = item_sentences(items)
    by_id = dict(zip(items["item_id"], sentences, strict=True))
    for item_id, expected in GOLDEN[name][2].items():
        assert by_id[item_id] == expected, item_id
    assert empty == EMPTY.get(name, 0)
    keys = "|".join(DEFAULT_ATTRIBUTES)
    assert not any(re.search(rf"(^| )({keys}) (nan|None)( |$)", s) for s in sentences)


def test_golden_mind_with_its_own_attributes(real_items):
    items = real_items("mind")
    sentences, _ = item_sentences(items, ("title", "category", "subcategory", "abstract"))
    assert sentences[items.index[items["item_id"] == "N10575"][0]] == (
        "title 20 Funny Things People in the 1980s Were Totally Guilty of Doing category "
        "lifestyle subcategory lifestyledidyouknow abstract We were far from saints in the 80s. "
        "Here are 25 things that were perfectly acceptable in an age before social media and "
        "online buffoonery.")


# --- rules ------------------------------------------------------------------------------------


def test_attribute_order_comes_from_config_not_columns():
    item = {"brand": "Acme", "title": "Rocket", "release_year": 1999}
    assert item_sentence(item, ("title", "release_year", "brand")) == (
        "title Rocket release year 1999 brand Acme")
    assert item_sentence(item, ("brand", "title")) == "brand Acme title Rocket"


@pytest.mark.parametrize("missing", [
    None, np.nan, float("nan"), pd.NA, "", "   ", "nan", "None", ".", " - ", [], [None, np.nan, ""],
    np.array([], dtype=object)])
def test_missing_values_are_skipped(missing):
    assert item_sentence({"title": "X", "genres": missing, "brand": "B"}) == "title X brand B"


def test_lists_tuples_and_arrays_join_clean_elements():
    assert clean_text(["Drama", None, "  Sci-Fi\n", np.nan, ""]) == "Drama, Sci-Fi"
    assert clean_text(("a", "b")) == "a, b"
    assert clean_text(np.array(["x", "y"], dtype=object)) == "x, y"
    assert clean_text(1995.0) == "1995" and clean_text(2.5) == "2.5"


def test_weird_bytes_and_characters():
    assert clean_text(b"caf\xc3\xa9") == "café"  # UTF-8 bytes
    assert clean_text(b"caf\xe9 cr\xe8me") == "café crème"  # not UTF-8: cp1252
    assert clean_text(b"\xef\xbb\xbfbom") == "bom"
    assert clean_text("caf\udce9") == "café"  # surrogateescape-decoded latin-1 byte
    assert clean_text("Filament Ã˜ 1.75mm, Â± 0.05mm") == "Filament Ø 1.75mm, ± 0.05mm"
    assert clean_text("a\x00b\x07c\td\r\ne\u200bf\ufeffg\ufffdh") == "abc d efgh"
    assert clean_text("Tom &amp; Jerry &#8230; &lt;3 &amp;amp;") == "Tom & Jerry … <3 &"
    assert clean_text("<p>Great<br/>product</p> a < b > c") == "Great product a < b > c"
    assert clean_text("e\u0301t\u00e9\u00a0\u2003wide") == "été wide"  # NFC, unicode spaces


def test_per_attribute_budget_cuts_whole_words():
    item = {"title": "one two three four five", "brand": "a b c"}
    expected = "title one two three brand a b c"
    assert item_sentence(item, ("title", "brand"), max_tokens=3) == expected
    assert truncate_text("  alpha   beta\ngamma ", 2) == "alpha beta"


def test_sentence_budget_counts_keys_and_never_leaves_a_key_alone():
    item = {"title": "w1 w2 w3", "brand": "b1 b2 b3", "category": "c1"}
    attrs = ("title", "brand", "category")
    # title(1) + 3 words = 4; brand(1) + 3 = 8; category(1) + 1 = 10
    assert item_sentence(item, attrs, max_length=10) == "title w1 w2 w3 brand b1 b2 b3 category c1"
    assert item_sentence(item, attrs, max_length=9) == "title w1 w2 w3 brand b1 b2 b3"
    assert item_sentence(item, attrs, max_length=6) == "title w1 w2 w3 brand b1"
    assert item_sentence(item, attrs, max_length=5) == "title w1 w2 w3"  # no bare "brand"
    assert item_sentence(item, attrs, max_tokens=None, max_length=None).endswith("category c1")


def test_very_long_text_is_cut_fast():
    words = " ".join(f"w{i}" for i in range(200_000))
    sentence = item_sentence({"title": "T", "description": words}, max_tokens=32)
    assert sentence == "title T description " + " ".join(f"w{i}" for i in range(32))


def test_frame_keeps_row_order_and_counts_items_without_text():
    items = pd.DataFrame({"item_id": ["c", "a", "b"], "title": ["C", None, "B"],
                          "other": ["x", "y", "z"]}, index=[10, 3, 7])
    result = item_sentences(items, ("title",))
    assert result.sentences == ["title C", "", "title B"] and result.empty == 1
    assert item_sentences(items, ("absent",)) == (["", "", ""], 3)


def test_bad_budget_and_tokenizer_are_errors():
    with pytest.raises(ValueError, match="max_tokens"):
        item_sentence({"title": "x"}, max_tokens=0)
    with pytest.raises(TypeError, match="tokenizer"):
        item_sentence({"title": "x"}, tokenizer=object())


# --- tokenizers -------------------------------------------------------------------------------


class CharTokenizer:
    """Duck-typed: only `tokenize`; one token per character."""

    def tokenize(self, text):
        return list(text)


def test_duck_typed_tokenizer_counts_its_tokens():
    item, chars = {"title": "ab cde f"}, CharTokenizer()
    assert item_sentence(item, ("title",), max_tokens=5, tokenizer=chars) == "title ab cde"
    assert item_sentence(item, ("title",), max_tokens=4, tokenizer=chars) == "title ab"
    # key "title" costs 5 chars, leaving 3 for the value
    assert item_sentence(item, ("title",), max_length=8, tokenizer=chars) == "title ab"


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import BertTokenizer  # the fast (Rust) tokenizer in transformers 5

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "title", "hello", "world", "un",
             "##believ", "##able", "(", ")", "1995"]
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})


def test_fast_tokenizer_budget_cuts_at_whitespace(wordpiece):
    # hello(1) un ##believ ##able(3) world(1): 3 tokens end inside "unbelievable" -> back off
    assert truncate_text("hello unbelievable world", 3, wordpiece) == "hello"
    assert truncate_text("hello unbelievable world", 4, wordpiece) == "hello unbelievable"
    assert truncate_text("hello (1995)", 2, wordpiece) == "hello"  # "(1995)" is one word
    # a single word longer than the budget is cut at a token boundary
    assert truncate_text("unbelievable", 2, wordpiece) == "unbeliev"


def test_fast_tokenizer_sentence_budget(wordpiece):
    item = {"title": "hello unbelievable", "brand": "world"}
    attrs = ("title", "brand")
    assert item_sentence(item, attrs, tokenizer=wordpiece) == "title hello unbelievable brand world"
    five = item_sentence(item, attrs, max_length=5, tokenizer=wordpiece)
    assert five == "title hello unbelievable"
    assert item_sentence(item, attrs, max_length=4, tokenizer=wordpiece) == "title hello"
    raw = wordpiece.backend_tokenizer  # a plain `tokenizers.Tokenizer` works the same way
    assert item_sentence(item, attrs, max_length=4, tokenizer=raw) == "title hello"
    raw.enable_truncation(2)  # the caller's truncation setting neither matters nor changes
    assert item_sentence(item, attrs, max_length=5, tokenizer=raw) == five
    assert raw.truncation["max_length"] == 2
    raw.no_truncation()
