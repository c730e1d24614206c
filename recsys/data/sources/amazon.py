"""Amazon review datasets in three published layouts.

- amazon-lcrec: LC-Rec json (`<name>.inter.json` user -> item list, `<name>.item.json` item -> text)
- amazon-s3rec: S3-Rec text (`<name>.txt`, `<name>_item2attributes.json`, optional P5 datamaps)
- amazon-2018: raw McAuley 2018 json lines (`*_5.json.gz` reviews, `meta_*.json.gz`)

The first two carry no timestamps: each user's list is chronological, so the position in it
(0, 1, 2, ...) is the timestamp. Rows come out in file order (users in file order, then position).
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.schema import DataError
from recsys.data.sources._raw import (
    RawTable,
    check_mapping,
    find_one,
    raw_file,
    read_text,
    shorten,
)

LICENSE = ("Amazon review data (McAuley et al., UCSD): research use only, no redistribution, "
           "no commercial use; cite {}.")


def read_json(path: Path):
    """A whole-file JSON document; a syntax error names its line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = text.split("\n")[err.lineno - 1]
        raise DataError(f"{path.name}: column '?': invalid JSON, {err.msg} "
                        f"(line {err.lineno}: {shorten(repr(line))})") from None


def read_json_lines(path: Path) -> RawTable:
    """JSON lines as a table of raw values (no dtype or date guessing), one row per line."""
    text = read_text(path)
    lines = text.split("\n")
    try:
        frame = pd.read_json(io.StringIO(text), lines=True, dtype=False)  # no guessing
    except ValueError:  # find the line; valid JSON pandas refuses (a number past 2**64)
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path.name}: column '?': invalid JSON, {err.msg} "
                                f"(line {number}: {shorten(repr(line))})") from None
        frame = pd.DataFrame.from_records(records)  # big ints stay Python ints, checked later
    if len(frame) == 0:
        raise DataError(f"{path.name}: column '?': the file has no rows")
    return RawTable(path.name, frame, lambda pos: lines[pos])


INLINE_TAG = re.compile(r"</?(?:a|b|i|u|em|strong|span|font|sup|sub|small)\b[^<>]*>", re.I)
OTHER_TAG = re.compile(r"<[^<>]*>")  # <br>, <p>, <li> ... separate words


def _check_inside_raw(raw: Path, name, source: str, key: str) -> None:
    """Refuse a mapping name or glob pattern that leads outside the raw dir.

    Only the check of `raw_file` is wanted: `find_one` then globs for the file.
    """
    raw_file(raw, name, source, key)


def clean_text(value) -> str | None:
    """Unescape HTML entities, drop complete tags, collapse whitespace; '' -> None."""
    if not isinstance(value, str):
        return None
    text = OTHER_TAG.sub(" ", INLINE_TAG.sub("", html.unescape(value)))
    return " ".join(text.split()) or None


def _sequences(user_ids: list[str], seqs: list[list]) -> pd.DataFrame:
    """Flatten user -> chronological item list into rows; position is the timestamp."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    items = [str(i) for seq in seqs for i in seq]
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pd.DataFrame({
        "user_id": np.repeat(np.array(user_ids, dtype=object), lengths).astype(str),
        "item_id": pd.Series(items, dtype="str"),
        "timestamp": np.arange(lengths.sum(), dtype=np.int64) - starts,
    })


# --- LC-Rec json ------------------------------------------------------------------------------


def convert_lcrec(raw: Path, mapping=None):
    """`<name>.inter.json` + `<name>.item.json`; mapping option `name` picks one of several."""
    options = check_mapping(mapping, ("name",), "amazon-lcrec")
    prefix = options.get("name", "*")
    _check_inside_raw(raw, prefix, "amazon-lcrec", "name")
    inter_path = find_one(raw, [f"{prefix}.inter.json"], "LC-Rec interaction", "name")
    item_path = inter_path.with_name(inter_path.name.replace(".inter.json", ".item.json"))

    seqs = read_json(inter_path)
    if not isinstance(seqs, dict):
        raise DataError(f"{inter_path.name}: column 'user': expected an object user -> item list")
    for user, seq in seqs.items():
        if not isinstance(seq, list) or not all(isinstance(i, int | str) for i in seq):
            raise DataError(f"{inter_path.name}: column 'item': user {user!r} needs a list of "
                            f"item ids (row: {shorten(repr(seq))})")
    inter = _sequences(list(seqs), list(seqs.values()))

    records = read_json(item_path)
    if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
        raise DataError(f"{item_path.name}: column 'item': expected an object item -> fields")
    frame = pd.DataFrame.from_dict(records, orient="index")
    items = pd.DataFrame({"item_id": pd.Series(list(records), dtype="str")})
    for column in frame.columns:
        values = frame[column].tolist()
        if column == "categories":  # "A,B, with comma,C": split where no space follows
            items["category"] = [_category_path(v) for v in values]
        else:  # strings, or lists of strings in variants of the format
            items[column] = [_text_list(v) if isinstance(v, list) else clean_text(v)
                             for v in values]
    meta = {"name": f"Amazon {item_path.name.removesuffix('.item.json')} (LC-Rec)",
            "license": LICENSE.format("Ni, Li & McAuley, EMNLP 2019"),
            "files": {"interactions": inter_path.name, "items": item_path.name}}
    return inter, items, None, meta


def _category_path(value) -> list[str] | None:
    if not isinstance(value, str):
        return None
    parts = [clean_text(p) for p in re.split(r",(?! )", value)]
    return [p for p in parts if p] or None


# --- S3-Rec text ------------------------------------------------------------------------------


def convert_s3rec(raw: Path, mapping=None):
    """`<name>.txt` ('user item item ...', oldest first) + attribute ids + P5 datamaps (ASINs).

    Items: `asin` (from datamaps.json[.gz] when present) and `attribute_ids` (anonymous S3-Rec
    brand/category ids, as strings). Users: `reviewer_id` from the datamaps. P5's own
    attribute names are not used: they don't match the S3-Rec ids (SOURCE.md).
    """
    options = check_mapping(mapping, ("name",), "amazon-s3rec")
    prefix = options.get("name", "*")
    _check_inside_raw(raw, prefix, "amazon-s3rec", "name")
    seq_path = find_one(raw, [f"{prefix}.txt"], "S3-Rec sequence", "name")
    lines = [line.split() for line in read_text(seq_path).split("\n") if line.strip()]
    if not lines:
        raise DataError(f"{seq_path.name}: column 'user_id': the file has no rows")
    inter = _sequences([line[0] for line in lines], [line[1:] for line in lines])

    attr_path = seq_path.with_name(f"{seq_path.stem}_item2attributes.json")
    attrs = read_json(attr_path) if attr_path.is_file() else {}
    # catalogue in order of first appearance (S3-Rec numbers items that way), then items
    # that only have attributes
    ids = pd.unique(pd.concat([inter["item_id"], pd.Series(list(attrs), dtype="str")]))
    items = pd.DataFrame({"item_id": pd.Series(ids, dtype="str")})
    maps_name, maps = _datamaps(raw)
    users = None
    files = {"interactions": seq_path.name, "items": attr_path.name}
    if maps:
        items["asin"] = items["item_id"].map(maps.get("id2item", {})).astype(object)
        user_ids = pd.Series(pd.unique(inter["user_id"]), dtype="str")
        users = pd.DataFrame({"user_id": user_ids,
                              "reviewer_id": user_ids.map(maps.get("id2user", {})).astype(object)})
        files["users"] = maps_name
    items["attribute_ids"] = [
        [str(a) for a in attrs[i]] if i in attrs else None for i in items["item_id"]]
    items = items.astype(object).where(items.notna(), None)
    meta = {"name": f"Amazon {seq_path.stem} (S3-Rec)",
            "license": LICENSE.format("He & McAuley, WWW 2016; McAuley et al., SIGIR 2015"),
            "files": files}
    return inter, items, users, meta


def _datamaps(raw: Path) -> tuple[str, dict]:
    for name in ("datamaps.json", "datamaps.json.gz"):
        if (raw / name).is_file():
            return name, read_json(raw / name)
    return "", {}


# --- raw Amazon 2018 --------------------------------------------------------------------------

JUNK = re.compile(r"[<>]|=\"")  # a cut-off tag such as '<span class="a-size-medium ...'


def _title(value) -> str | None:
    """Titles of the 2018 dump are often HTML fragments (SOURCE.md): those become None."""
    text = clean_text(value)
    return None if text is None or JUNK.search(text) else text


def _paragraphs(value) -> str | None:
    parts = [clean_text(p) for p in value] if isinstance(value, list) else [clean_text(value)]
    return " ".join(p for p in parts if p) or None


def convert_2018(raw: Path, mapping=None):
    """Reviews `*_5.json[.gz]` + metadata `meta_*.json[.gz]` (json lines).

    Mapping options: `reviews`, `meta` (file names, when the folder holds several) and `items`:
    "interacted" (default: the reviewed items, in order of first review; the catalogue the
    5-core data defines) or "all" (every meta item too). Reviewed items missing from the meta
    get a row with None attributes. Duplicate meta rows: the first one per asin wins.
    """
    options = check_mapping(mapping, ("reviews", "meta", "items"), "amazon-2018")
    scope = options.get("items", "interacted")
    if scope not in ("interacted", "all"):
        raise DataError(f"mapping for amazon-2018: items must be 'interacted' or 'all', "
                        f"got {scope!r}")
    for key in ("reviews", "meta"):
        if key in options:
            _check_inside_raw(raw, options[key], "amazon-2018", key)
    reviews_path = find_one(raw, [options["reviews"]] if "reviews" in options
                            else ["*_5.json.gz", "*_5.json"], "reviews", "reviews")
    meta_path = find_one(raw, [options["meta"]] if "meta" in options
                         else ["meta_*.json.gz", "meta_*.json"], "meta", "meta")

    reviews = read_json_lines(reviews_path)
    inter = pd.DataFrame({
        "user_id": reviews.strs("reviewerID"), "item_id": reviews.strs("asin"),
        "timestamp": reviews.ints("unixReviewTime"), "rating": reviews.floats("overall"),
    })

    meta = read_json_lines(meta_path)
    frame = meta.frame.assign(asin=meta.strs("asin")).drop_duplicates("asin")
    described = pd.DataFrame({
        "item_id": frame["asin"],
        "title": [_title(v) for v in _field(frame, "title")],
        "brand": [clean_text(v) for v in _field(frame, "brand")],
        "category": [_text_list(v) for v in _field(frame, "category")],
        "description": [_paragraphs(v) for v in _field(frame, "description")],
    })
    reviewed = pd.Series(pd.unique(inter["item_id"]), dtype="str")
    ids = reviewed if scope == "interacted" else pd.unique(pd.concat([frame["asin"], reviewed]))
    items = pd.DataFrame({"item_id": pd.Series(ids, dtype="str")}).merge(
        described, on="item_id", how="left", sort=False)
    items = items.astype(object).where(items.notna(), None)
    meta_info = {"name": f"Amazon 2018 {reviews_path.name.split('_5.json')[0]}",
                 "license": LICENSE.format("Ni, Li & McAuley, EMNLP 2019"),
                 "files": {"interactions": reviews_path.name, "items": meta_path.name}}
    return inter, items, None, meta_info


def _field(frame: pd.DataFrame, name: str) -> list:
    """A meta field's values (all None when no line has the key)."""
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _text_list(value) -> list[str] | None:
    """A list of strings (e.g. the category path), entities decoded, empty parts dropped."""
    if not isinstance(value, list):
        return None
    return [c for c in (clean_text(v) for v in value) if c] or None
