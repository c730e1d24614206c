"""MIND (Microsoft News) converter: behaviors.tsv + news.tsv, plain or gzipped.

Interactions: one row per shown candidate, in file order (impression by impression, candidates
in their listed order), with `label` (1 click / 0 shown) and `impression_id`; the timestamp is
the impression time ("11/11/2019 9:05:27 AM", no time zone in the data; read as UTC).

History clicks are NOT emitted as interactions: they have no time (they happened before the log
window), so they could not be ordered against the impressions. They are kept, in file order, as
the user attribute `history` (list of news ids; MIND keeps one history per user within a
split, and we take the one on the user's first impression).

Items: every news.tsv row (category, subcategory, title, abstract) plus every news id referenced
by a candidate or a history without a news row, with None attributes. In the shared fragment
most referenced ids have no text (SOURCE.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.sources._raw import RawTable, check_mapping, epoch_seconds, find_one, read_table

LICENSE = ("MIND, Microsoft Research License Terms: non-commercial research only, no "
           "redistribution; cite Wu et al., ACL 2020.")
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
NEWS_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url",
                "title_entities", "abstract_entities"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def convert(raw: Path, mapping=None):
    check_mapping(mapping, (), "mind")
    behaviors = read_table(find_one(raw, ["behaviors.tsv", "behaviors.tsv.gz"], "behaviors",
                                    "behaviors"), "\t", BEHAVIOR_COLUMNS)
    news = read_table(find_one(raw, ["news.tsv", "news.tsv.gz"], "news", "news"), "\t",
                      NEWS_COLUMNS)
    inter = _impressions(behaviors)
    users = _users(behaviors)

    described = pd.DataFrame({"item_id": news.strs("news_id")})
    for column in ("category", "subcategory", "title", "abstract"):
        described[column] = news.strs(column, allow_empty=True)
    referenced = pd.unique(pd.concat([inter["item_id"], users["history"].explode().dropna()]))
    missing = referenced[~pd.Series(referenced).isin(described["item_id"]).to_numpy()]
    items = pd.concat([described, pd.DataFrame({"item_id": pd.Series(missing, dtype="str")})],
                      ignore_index=True)
    items = items.astype(object).where(items.notna(), None)
    meta = {"name": "MIND", "license": LICENSE,
            "files": {"interactions": behaviors.name, "items": news.name,
                      "users": behaviors.name}}
    return inter, items, users, meta


def _impressions(behaviors: RawTable) -> pd.DataFrame:
    """One row per candidate 'N123-1'; a row's index still points at its behaviors line."""
    times = pd.to_datetime(behaviors.frame["time"], format=TIME_FORMAT, errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise behaviors.error("time", pos, f"cannot parse {behaviors.frame['time'].iloc[pos]!r} "
                                           f"as {TIME_FORMAT!r}")
    seconds = epoch_seconds(times)

    shown = behaviors.strs("impressions").str.split().explode()
    parts = shown.str.rsplit("-", n=1, expand=True).reindex(columns=[0, 1])
    bad = ~parts[1].isin(["0", "1"]).to_numpy()
    if bad.any():
        pos = int(shown.index[np.flatnonzero(bad)[0]])
        raise behaviors.error("impressions", pos, f"candidate {shown[bad].iloc[0]!r} is not "
                                                  "'<news id>-<0|1>'")
    rows = shown.index.to_numpy()
    return pd.DataFrame({
        "user_id": behaviors.strs("user_id").to_numpy()[rows],
        "item_id": parts[0].to_numpy(),
        "timestamp": seconds.to_numpy()[rows].astype(np.int64),
        "label": (parts[1] == "1").to_numpy().astype(np.int8),
        "impression_id": behaviors.strs("impression_id").to_numpy()[rows],
    })


def _users(behaviors: RawTable) -> pd.DataFrame:
    """user_id + `history` (clicked news ids, oldest first) from the user's first impression."""
    first = pd.DataFrame({"user_id": behaviors.strs("user_id"),
                          "history": behaviors.frame["history"]}).drop_duplicates("user_id")
    history = [h.split() or None for h in first["history"].tolist()]
    return pd.DataFrame({"user_id": first["user_id"].to_numpy(),
                         "history": pd.Series(history, dtype=object)})
