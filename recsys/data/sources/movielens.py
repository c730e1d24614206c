"""MovieLens converters: 100K, 1M and latest(-small). Raw line order is kept everywhere.

Item attributes: `title` (as in the file, year included), `year` (from the title), `genres`
(list). 100K adds `release_date`; latest adds user `tags`. User attributes (100K, 1M) are strings.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.schema import DataError
from recsys.data.sources._raw import (
    LATIN1,
    RawTable,
    check_mapping,
    raw_file,
    read_table,
    split_list,
    year_from_title,
)

log = logging.getLogger(__name__)

LICENSE = ("GroupLens MovieLens {}: research use only; no redistribution and no commercial use "
           "without permission; cite Harper & Konstan, ACM TiiS 5(4), 2015.")


def _ratings(table: RawTable, user: str, item: str) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": table.strs(user), "item_id": table.strs(item),
        "timestamp": table.ints("timestamp"), "rating": table.floats("rating"),
    })


# --- MovieLens 100K ---------------------------------------------------------------------------


def convert_100k(raw: Path, mapping=None):
    """u.data (tab) + u.item (latin-1, '|', 19 genre flags named by u.genre) + u.user."""
    check_mapping(mapping, (), "movielens-100k")
    inter = _ratings(
        read_table(raw / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"]),
        "user_id", "item_id")

    genre_table = read_table(raw / "u.genre", "|", ["genre", "index"])
    order = genre_table.ints("index").to_numpy()
    genre_names = genre_table.strs("genre").to_numpy()[np.argsort(order)].tolist()
    columns = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names]
    movies = read_table(raw / "u.item", "|", columns, encodings=LATIN1)
    flags = np.column_stack([_flag(movies, g) for g in genre_names])  # (items, 19)
    titles = movies.strs("title", allow_empty=True)
    release = movies.strs("release_date", allow_empty=True)
    year = year_from_title(titles)
    # "01-Jan-1995": fall back to the release date's year when the title has none
    date_year = release.str[-4:].where(release.notna(), None)
    items = pd.DataFrame({
        "item_id": movies.strs("item_id"),
        "title": titles,
        "year": year.where(year.notna(), date_year),
        # the 'unknown' genre carries no text; items flagged only 'unknown' get None
        "genres": [[g for g, on in zip(genre_names, row, strict=True) if on and g != "unknown"]
                   or None for row in flags],
        "release_date": release,
    })

    people = read_table(raw / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame({c: people.strs(c) for c in people.frame.columns})
    meta = {"name": "MovieLens 100K", "license": LICENSE.format("100K"),
            "files": {"interactions": "u.data", "items": "u.item", "users": "u.user"}}
    return inter, items, users, meta


def _flag(movies: RawTable, column: str) -> np.ndarray:
    values = movies.frame[column]
    bad = ~values.isin(["0", "1"])
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise movies.error(column, pos, f"genre flag must be 0 or 1, got {values.iloc[pos]!r}")
    return (values == "1").to_numpy()


# --- MovieLens 1M -----------------------------------------------------------------------------

# Codes from the ML-1M README ("USERS FILE DESCRIPTION").
AGES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
        "50": "50-55", "56": "56+"}
OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]
ML1M_DEFAULT_RATINGS = ("ratings.dat", "ratings_users0001-2999.dat.gz")


def convert_1m(raw: Path, mapping=None):
    """movies.dat / users.dat / ratings ('::', latin-1).

    The shared copy has no complete ratings.dat (see its SOURCE.md): by default we read
    `ratings.dat` when present, else `ratings_users0001-2999.dat.gz` (users 1-2999, every
    timestamp, original lines). Mapping options:
      ratings_file: another ratings file, e.g. `ratings_all_partial_ts.csv.gz` (CSV with header
        user_id,movie_id,rating,timestamp; 199,435 rows have an empty timestamp);
      missing_timestamp: "error" (default) or "drop". A missing timestamp never becomes 0, which
        would put those ratings first in every user's history; "drop" removes the rows and
        records how many in dataset.json ("notes").
    """
    options = check_mapping(mapping, ("ratings_file", "missing_timestamp"), "movielens-1m")
    on_missing = options.get("missing_timestamp", "error")
    if on_missing not in ("error", "drop"):
        raise DataError(f"mapping for movielens-1m: missing_timestamp must be 'error' or 'drop', "
                        f"got {on_missing!r}")
    name = options.get("ratings_file") or next(
        (n for n in ML1M_DEFAULT_RATINGS if (raw / n).is_file()), ML1M_DEFAULT_RATINGS[0])
    path = raw_file(raw, name, "movielens-1m", "ratings_file")
    notes = {"ratings_file": name}
    if ".csv" in path.suffixes:
        table = read_table(path, ",", encodings=LATIN1, quoting=csv.QUOTE_MINIMAL)
        table.require("user_id", "movie_id", "rating", "timestamp")
        missing = (table.frame["timestamp"].str.strip() == "").to_numpy()
        if missing.any() and on_missing == "error":
            pos = int(np.flatnonzero(missing)[0])
            raise table.error("timestamp", pos, f"no timestamp on {int(missing.sum())} rows; "
                              "set mapping missing_timestamp='drop' to leave them out")
        if missing.any():
            # parse with a placeholder so error line numbers stay right, then drop those rows
            table.frame.loc[missing, "timestamp"] = "0"
            notes["dropped_rows_without_timestamp"] = int(missing.sum())
            log.warning("%s: dropped %d ratings without a timestamp", name, missing.sum())
        inter = _ratings(table, "user_id", "movie_id")
        if on_missing == "drop":
            inter = inter[~missing].reset_index(drop=True)
    else:
        cols = ["user_id", "item_id", "rating", "timestamp"]
        inter = _ratings(read_table(path, "::", cols, encodings=LATIN1), "user_id", "item_id")

    movies = read_table(raw / "movies.dat", "::", ["item_id", "title", "genres"],
                        encodings=LATIN1)
    titles = movies.strs("title", allow_empty=True)
    items = pd.DataFrame({
        "item_id": movies.strs("item_id"), "title": titles, "year": year_from_title(titles),
        "genres": split_list(movies.frame["genres"], "|"),
    })

    people = read_table(raw / "users.dat", "::",
                        ["user_id", "gender", "age", "occupation", "zip"], encodings=LATIN1)
    occupations = {str(i): name for i, name in enumerate(OCCUPATIONS)}
    users = pd.DataFrame({
        "user_id": people.strs("user_id"), "gender": people.strs("gender"),
        "age": _decode(people, "age", AGES), "occupation": _decode(people, "occupation",
                                                                   occupations),
        "zip": people.strs("zip"),
    })
    meta = {"name": "MovieLens 1M", "license": LICENSE.format("1M"), "notes": notes,
            "files": {"interactions": name, "items": "movies.dat", "users": "users.dat"}}
    return inter, items, users, meta


def _decode(table: RawTable, column: str, codes: dict[str, str]) -> pd.Series:
    """README code -> its label; an unknown code is an error."""
    values = table.strs(column)
    labels = values.map(codes)
    if labels.isna().any():
        pos = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise table.error(column, pos, f"unknown code {values.iloc[pos]!r}")
    return labels.astype(object)


# --- MovieLens latest -------------------------------------------------------------------------


def convert_latest(raw: Path, mapping=None):
    """ratings.csv + movies.csv + optional tags.csv (UTF-8, quoted CSV with header)."""
    check_mapping(mapping, (), "movielens-latest")
    ratings = read_table(raw / "ratings.csv", ",", quoting=csv.QUOTE_MINIMAL)
    inter = _ratings(ratings, "userId", "movieId")

    movies = read_table(raw / "movies.csv", ",", quoting=csv.QUOTE_MINIMAL)
    titles = movies.strs("title", allow_empty=True)
    items = pd.DataFrame({
        "item_id": movies.strs("movieId"), "title": titles, "year": year_from_title(titles),
        "genres": split_list(movies.strs("genres", allow_empty=True), "|",
                             drop=["(no genres listed)"]),
    })
    files = {"interactions": "ratings.csv", "items": "movies.csv"}
    if (raw / "tags.csv").is_file():
        items["tags"] = items["item_id"].map(_tags(raw / "tags.csv")).astype(object)
        items["tags"] = items["tags"].where(items["tags"].notna(), None)
    meta = {"name": "MovieLens latest", "license": LICENSE.format("latest"), "files": files}
    return inter, items, None, meta


def _tags(path: Path) -> pd.Series:
    """movieId -> unique tags in first-seen order, lowercased and stripped."""
    table = read_table(path, ",", quoting=csv.QUOTE_MINIMAL)
    table.require("movieId", "tag")
    tags = pd.DataFrame({"movie": table.strs("movieId"),
                         "tag": table.frame["tag"].str.strip().str.lower()})
    tags = tags[tags["tag"] != ""].drop_duplicates()
    return tags.groupby("movie", sort=False)["tag"].agg(list)
