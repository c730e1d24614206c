"""Generic converter: any CSV / TSV (optionally .gz) or parquet files described by a mapping.

    {"interactions": "ratings.csv",            # paths relative to the raw dir
     "items": "items.csv",                     # optional: else the distinct item ids, no text
     "users": "users.csv",                     # optional
     "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts",  # timestamp optional
                 "rating": "stars", "label": "click", "impression_id": "imp"},  # optional
     "item_columns": {"item_id": "iid", "title": "name", ...},  # optional, default: every column
     "user_columns": {"user_id": "uid", "age": "age"},          # optional, default: every column
     "timestamp_format": "unix" | "iso" | "%d/%m/%Y %H:%M",     # default "unix" (seconds)
     "list_separator": "|", "list_columns": ["genres"],         # split these attributes
     "sep": ",", "encoding": "utf-8", "name": "...", "license": "..."}

Without a timestamp column the position of a row among its user's rows (0, 1, 2, ...) is the time.
Unix timestamps must be whole seconds within int64 ("1.5" is an error, "1.0" and "1e9" are not);
before 1970 (negative) is accepted. ISO / strftime times keep whole seconds (fractions dropped)
and take years 1-9999. Labels must be 0 or 1; ratings finite numbers (negative accepted).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.schema import DataError
from recsys.data.sources._raw import (
    RawTable,
    check_mapping,
    epoch_seconds,
    raw_file,
    read_table,
    split_list,
)

OPTIONS = ("interactions", "items", "users", "columns", "item_columns", "user_columns",
           "timestamp_format", "list_separator", "list_columns", "sep", "encoding", "name",
           "license")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "label", "impression_id")


def convert(raw: Path, mapping=None):
    options = check_mapping(mapping, OPTIONS, "tabular")
    _check_types(options)
    columns = dict(options.get("columns") or {})
    for key in ("interactions", "columns"):
        if not options.get(key):
            raise DataError(f"mapping for tabular: '{key}' is required")
    for key in ("user_id", "item_id"):
        if key not in columns:
            raise DataError(f"mapping for tabular: columns.{key} is required")
    unknown = sorted(set(columns) - set(INTERACTION_COLUMNS))
    if unknown:
        raise DataError(f"mapping for tabular: unknown columns {unknown}; "
                        f"valid: {list(INTERACTION_COLUMNS)}")

    _check_encoding(options.get("encoding", "utf-8"))
    table = _read(raw, "interactions", options)
    inter = _interactions(table, columns, options.get("timestamp_format", "unix"))
    files = {"interactions": table.name}
    if options.get("items"):
        items_table = _read(raw, "items", options)
        items = _entities(items_table, "item_id", options.get("item_columns"), columns, options)
        files["items"] = items_table.name
    else:
        items = pd.DataFrame({"item_id": pd.Series(pd.unique(inter["item_id"]), dtype="str")})
    users = None
    if options.get("users"):
        users_table = _read(raw, "users", options)
        users = _entities(users_table, "user_id", options.get("user_columns"), columns, options)
        files["users"] = users_table.name
    meta = {"name": options.get("name", raw.name),
            "license": options.get("license", "not stated: see the raw data's own terms"),
            "files": files}
    return inter, items, users, meta


def _check_types(options: Mapping) -> None:
    """Each option's type, so a wrong one is named here and not met as a TypeError later."""
    for key, value in options.items():
        if value is None:  # unset
            continue
        if key in ("columns", "item_columns", "user_columns"):
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            expected = "a mapping of names to column names"
        elif key == "list_columns":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            expected = "a list of attribute names"
        else:
            ok, expected = isinstance(value, str) and value != "", "a non-empty string"
        if not ok:
            raise DataError(f"mapping for tabular: '{key}' must be {expected}, got {value!r}")


def _check_encoding(encoding: str) -> None:
    """An unknown (or non-text, like 'base64') encoding names the mapping key, not a codec."""
    try:
        b"x".decode(encoding)  # b"" would be decoded without looking the codec up
    except UnicodeDecodeError:  # a real text codec (utf-16 wants two bytes)
        pass
    except LookupError:
        raise DataError(f"mapping for tabular: 'encoding': unknown text encoding {encoding!r}") \
            from None


def _read(raw: Path, key: str, options: Mapping) -> RawTable:
    """The file named by mapping `key`: CSV / TSV (optionally .gz) or parquet."""
    path = raw_file(raw, options[key], "tabular", key)
    if not path.name.endswith(".parquet"):
        sep = options.get("sep") or ("\t" if ".tsv" in path.suffixes else ",")
        encoding = options.get("encoding", "utf-8")
        return read_table(path, sep, encodings=(encoding,), quoting=csv.QUOTE_MINIMAL)
    if not path.is_file():
        raise DataError(f"{path.name}: file not found ({path})")
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path.name}: column '?': cannot read parquet ({err})") from None
    if len(frame) == 0:
        raise DataError(f"{path.name}: column '{frame.columns[0]}': the file has no rows")
    return RawTable(path.name, frame, lambda pos: repr(frame.iloc[pos].to_dict()))


def _interactions(table: RawTable, columns: Mapping[str, str], fmt: str) -> pd.DataFrame:
    inter = pd.DataFrame({"user_id": table.strs(columns["user_id"]),
                          "item_id": table.strs(columns["item_id"])})
    if "timestamp" in columns:
        inter["timestamp"] = _timestamps(table, columns["timestamp"], fmt)
    else:  # the file order within each user is the time order
        inter["timestamp"] = inter.groupby("user_id", sort=False).cumcount().astype("int64")
    if "label" in columns:
        inter["label"] = table.ints(columns["label"], allowed=(0, 1))
    if "rating" in columns:
        inter["rating"] = table.floats(columns["rating"])
    if "impression_id" in columns:
        inter["impression_id"] = table.strs(columns["impression_id"])
    return inter


def _timestamps(table: RawTable, column: str, fmt: str) -> pd.Series:
    """Seconds since the epoch from unix numbers, ISO 8601 strings or a strftime format."""
    if fmt == "unix":
        return table.ints(column)
    values = table.strs(column)
    try:
        parsed = pd.to_datetime(values, format="ISO8601" if fmt == "iso" else fmt, utc=True,
                                errors="coerce")
    except ValueError as err:  # the format itself, e.g. '%Q': bad values only become NaT
        raise DataError(f"mapping for tabular: 'timestamp_format': {fmt!r} is not a valid "
                        f"format ({err})") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise table.error(column, pos, f"cannot parse {values.iloc[pos]!r} with "
                                       f"timestamp_format {fmt!r}")
    return epoch_seconds(parsed)


def _entities(table: RawTable, key: str, chosen: Mapping | None, columns: Mapping,
              options: Mapping) -> pd.DataFrame:
    """Items or users: `key` + attributes (strings, or lists when a list separator applies)."""
    if chosen is None:  # the key column named like in the interactions, the rest as they are
        source_key = columns[key] if columns[key] in table.frame.columns else key
        chosen = {key: source_key, **{c: c for c in table.frame.columns if c != source_key}}
    if key not in chosen:
        raise DataError(f"mapping for tabular: {key} is required in the {table.name} columns")
    out = pd.DataFrame({key: table.strs(chosen[key])})
    separator = options.get("list_separator")
    to_split = set(options.get("list_columns") or [c for c in chosen if c != key])
    for name, column in chosen.items():
        if name == key:
            continue
        table.require(column)
        values = table.frame[column]
        is_list = values.map(lambda v: isinstance(v, list | np.ndarray)).any()
        if is_list or pd.api.types.is_numeric_dtype(values):
            # parquet lists and numbers: write_dataset normalises them (1999.0 -> "1999")
            out[name] = values.to_numpy(dtype=object)
            continue
        values = table.strs(column, allow_empty=True)
        out[name] = split_list(values, separator) if separator and name in to_split else values
    return out
