"""Item -> Recformer-style key/value sentence: "title Toy Story (1995) genres Animation, Comedy".

Attributes are rendered as `key value` pairs in a fixed order (keys are the column names with `_`
read as a space). A value is cleaned first (`clean_text`): bytes are decoded, mojibake repaired,
HTML tags and entities resolved, control / zero-width characters dropped and whitespace collapsed;
lists are joined with ", ". Missing values (None, NaN, "", "nan", punctuation only) are skipped.

Token budgets: each value gets at most `max_tokens` tokens, the whole sentence `max_length`.
Tokens are counted with an optional tokenizer (duck-typed: a Hugging Face fast tokenizer, a
`tokenizers.Tokenizer`, or anything with `tokenize(str) -> list`); without one a token is a
whitespace word. Text is cut at whitespace only, so no word is split; the single exception is one
word longer than the whole budget: cut at a token boundary (offsets) or pro rata by characters.
Keys plus values are assumed to add up (exact for whitespace words and WordPiece).
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("title", "genres", "brand", "category", "tags", "description")
LIST_SEPARATOR = ", "
# whole values that are a missing marker written as text (str(NaN) and friends), not content
_MISSING = frozenset({"nan", "none", "null", "<na>", "nat", "n/a"})
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,300}>")  # only tag-like spans: "a < b > c" survives
_MOJIBAKE = ("Ã", "Â", "â€")  # UTF-8 bytes once read as cp1252 leave these behind


# --- cleaning ---------------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    """UTF-8 when valid (BOM dropped), else cp1252, else latin-1 (which never fails)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def _repair_mojibake(text: str) -> str:
    """'Ã˜ 1.75mm' -> 'Ø 1.75mm' when the text round-trips; anything else stays as it is."""
    if not any(marker in text for marker in _MOJIBAKE):
        return text
    for encoding in ("cp1252", "latin-1"):
        try:
            return text.encode(encoding).decode("utf-8")
        except UnicodeError:
            pass
    return text


def _clean_str(text: str) -> str:
    if text.isascii() and text.isprintable() and "&" not in text and "<" not in text:
        return " ".join(text.split())  # the common case, kept cheap
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        # bytes smuggled in by a surrogateescape decode; other lone surrogates are dropped below
        with contextlib.suppress(UnicodeError):
            text = _decode(text.encode("utf-8", "surrogateescape"))
    text = _repair_mojibake(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    for _ in range(2):  # "&amp;#8230;" is escaped twice in some dumps
        if "&" not in text:
            break
        text = html.unescape(text)
    text = unicodedata.normalize("NFC", text).replace("\ufffd", "")
    if not text.isprintable():  # spaces stay spaces; control, zero-width, surrogates go
        text = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in text)
    return " ".join(text.split())


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and value != value


def clean_text(value: Any) -> str:
    """One attribute value as clean single-spaced text; "" when it carries no text.

    Accepts str, bytes, numbers, None/NaN and lists (tuples, arrays) of those; list elements are
    cleaned one by one, empty ones dropped, the rest joined with ", ".
    """
    if isinstance(value, list | tuple | np.ndarray | pd.Series):
        parts = (clean_text(v) for v in value)
        return LIST_SEPARATOR.join(p for p in parts if p)
    if _is_missing(value):
        return ""
    if isinstance(value, bytes | bytearray):
        value = _decode(bytes(value))
    elif isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)  # 1995.0 -> "1995"
    text = _clean_str(value if isinstance(value, str) else str(value))
    if text.lower() in _MISSING or not any(ch.isalnum() for ch in text):
        return ""
    return text


# --- token counting and truncation ------------------------------------------------------------


class _Counter:
    """Token counts and cuts for one tokenizer (or whitespace words when it is None)."""

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # HF fast -> its Rust core
        if tokenizer is None:
            self.kind = "words"
        elif hasattr(backend, "encode_batch") and hasattr(backend, "to_str"):
            self.kind = "offsets"  # a `tokenizers.Tokenizer`: offsets in one batched call
            # a private copy: the caller's may have truncation or padding switched on
            self.backend = type(backend).from_str(backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
        elif hasattr(tokenizer, "tokenize"):
            self.kind = "tokenize"  # counts per word, no offsets
            self._memo: dict[str, int] = {}
        else:
            raise TypeError(f"tokenizer {type(tokenizer).__name__} has neither offsets nor "
                            "tokenize(); pass a Hugging Face fast tokenizer or None")

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        filled = [i for i, t in enumerate(texts) if t]
        out: list[list[tuple[int, int]]] = [[] for _ in texts]
        if filled:
            encoded = self.backend.encode_batch([texts[i] for i in filled],
                                                add_special_tokens=False)
            for i, enc in zip(filled, encoded, strict=True):
                out[i] = enc.offsets
        return out

    def _word_costs(self, text: str) -> list[int]:
        costs = []
        for word in text.split(" "):
            if word not in self._memo:
                self._memo[word] = len(self.tokenizer.tokenize(word))
            costs.append(self._memo[word])
        return costs

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per (clean) text."""
        if self.kind == "words":
            return [len(t.split(" ")) if t else 0 for t in texts]
        if self.kind == "tokenize":
            return [sum(self._word_costs(t)) if t else 0 for t in texts]
        return [len(o) for o in self._offsets(list(texts))]

    def truncate(self, texts: Sequence[str], budget: int) -> tuple[list[str], list[int]]:
        """Each clean text cut to `budget` tokens at whitespace -> (texts, token counts)."""
        if self.kind == "words":
            words = [t.split(" ") if t else [] for t in texts]
            return ([" ".join(w[:budget]) for w in words], [min(len(w), budget) for w in words])
        # every word is at least one token: words past budget + 1 can never be kept
        texts = [t if t.count(" ") <= budget else " ".join(t.split(" ", budget + 1)[: budget + 1])
                 for t in texts]
        if self.kind == "tokenize":
            return _unzip([_cut_words(t, self._word_costs(t), budget) if t else ("", 0)
                           for t in texts])
        offsets = self._offsets(texts)
        out, counts = list(texts), [len(o) for o in offsets]
        long = [i for i, n in enumerate(counts) if n > budget]
        for i in long:
            out[i] = _cut_at_offset(texts[i], offsets[i][budget][0])
        if long:  # the cut may drop more than the extra tokens: count what is kept
            for i, n in zip(long, self.count([out[i] for i in long]), strict=True):
                counts[i] = n
        return out, counts


def _unzip(pairs: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _cut_at_offset(text: str, first_dropped: int) -> str:
    """Cut before char `first_dropped`, backing off to whitespace unless that leaves nothing."""
    if first_dropped > 0 and text[first_dropped - 1] == " ":
        return text[: first_dropped - 1]
    space = text.rfind(" ", 0, first_dropped)
    return text[:space] if space > 0 else text[:first_dropped]  # one huge word: token boundary


def _cut_words(text: str, costs: list[int], budget: int) -> tuple[str, int]:
    words, kept, used = text.split(" "), 0, 0
    while kept < len(words) and used + costs[kept] <= budget:
        used += costs[kept]
        kept += 1
    if kept == 0 and words:  # one word over budget and no offsets: keep its share of characters
        share = max(1, len(words[0]) * budget // costs[0])
        return words[0][:share], budget
    return " ".join(words[:kept]), used


def truncate_text(text: str, max_tokens: int, tokenizer: Any = None) -> str:
    """`text` cleaned and cut to at most `max_tokens` tokens (see the module doc)."""
    _check_budget("max_tokens", max_tokens)
    return _Counter(tokenizer).truncate([clean_text(text)], max_tokens)[0][0]


def _check_budget(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None (no limit), got {value!r}")


# --- sentences --------------------------------------------------------------------------------


class ItemSentences(NamedTuple):
    sentences: list[str]  # one per item, in the input row order; "" for an item with no text
    empty: int  # how many items have no text at all


def item_sentences(items: pd.DataFrame, attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
                   max_tokens: int | None = 32, max_length: int | None = 256,
                   tokenizer: Any = None) -> ItemSentences:
    """Sentences for every row of `items` (columns not in `attributes` are ignored).

    Each value is cut to `max_tokens`; then attributes are added in order while the sentence
    stays within `max_length` (the first that does not fit is cut, so no key dangles alone).
    """
    _check_budget("max_tokens", max_tokens)
    _check_budget("max_length", max_length)
    counter = _Counter(tokenizer)
    columns = [a for a in dict.fromkeys(attributes) if a in items.columns]
    keys = [a.replace("_", " ").strip() for a in columns]
    key_costs = counter.count(keys)
    rendered = []  # per attribute: (values, token counts) after the per-value budget
    for column in columns:
        values = [clean_text(v) for v in items[column].tolist()]
        if max_tokens is None:
            rendered.append((values, counter.count(values)))
        else:
            rendered.append(counter.truncate(values, max_tokens))
    sentences = []
    for row in range(len(items)):
        parts, used = [], 0
        for key, key_cost, (values, costs) in zip(keys, key_costs, rendered, strict=True):
            value, cost = values[row], costs[row]
            if not value:
                continue
            if max_length is not None and used + key_cost + cost > max_length:
                room = max_length - used - key_cost
                cut = counter.truncate([value], room)[0][0] if room > 0 else ""
                if cut:
                    parts.append(f"{key} {cut}")
                break
            parts.append(f"{key} {value}")
            used += key_cost + cost
        sentences.append(" ".join(parts))
    empty = sum(1 for s in sentences if not s)
    if empty:
        log.info("%d of %d items have no text in %s", empty, len(items), list(attributes))
    return ItemSentences(sentences, empty)


def item_sentence(item: Mapping[str, Any], attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
                  max_tokens: int | None = 32, max_length: int | None = 256,
                  tokenizer: Any = None) -> str:
    """The sentence of one item given as a mapping attribute -> value."""
    row = pd.DataFrame({a: pd.Series([item[a]], dtype=object) for a in attributes if a in item})
    if row.empty:
        return ""
    return item_sentences(row, attributes, max_tokens, max_length, tokenizer).sentences[0]
