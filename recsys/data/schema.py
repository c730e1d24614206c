"""The canonical dataset directory: schema, validation, atomic write and verified load.

A dataset is a directory with `interactions.parquet`, `items.parquet`, optional `users.parquet` and
`dataset.json` (DESIGN.md, "Canonical dataset"). The same checks run on write and on load; every
failure is a `DataError` naming the file, the column and an example row.

In memory, ids are `str` columns; item/user attributes are object columns holding `str`,
`list[str]` or `None` (never NaN, "" or "nan"). Interaction row order is the raw file order and is
never changed: the split breaks timestamp ties by it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.numbers import finite_float32, not_numbers, whole_numbers
from recsys.runtime.atomic_dir import replacing

FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
FILES = {"interactions": "interactions.parquet", "items": "items.parquet", "users": "users.parquet"}
KEYS = {"items": "item_id", "users": "user_id"}
REQUIRED = ("user_id", "item_id", "timestamp")
INTERACTION_TYPES = {
    "user_id": pa.string(), "item_id": pa.string(), "timestamp": pa.int64(),
    "label": pa.int8(), "rating": pa.float32(), "impression_id": pa.string(),
}


class DataError(ValueError):
    """Bad input data: the message names the file, the column and an example row."""


@dataclass(frozen=True)
class Dataset:
    """A loaded and validated dataset directory."""

    path: Path
    interactions: pd.DataFrame  # user_id, item_id, timestamp [, label, rating, impression_id]
    items: pd.DataFrame  # item_id + attributes (object: str | list[str] | None)
    users: pd.DataFrame | None  # user_id + attributes, or None
    info: dict  # the content of dataset.json


# --- errors -----------------------------------------------------------------------------------


def _error(file: str, column: str, problem: str, df: pd.DataFrame | None = None,
           mask=None) -> DataError:
    """DataError naming file and column, with the first row where `mask` is true as example."""
    example = ""
    if df is not None and mask is not None:
        pos = int(np.flatnonzero(np.asarray(mask))[0])
        values = ", ".join(f"{k}={_short(v)}" for k, v in df.iloc[pos].to_dict().items())
        example = f" (row {pos}: {values})"
    return DataError(f"{file}: column '{column}': {problem}{example}")


def _short(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- validation -------------------------------------------------------------------------------


def _ids(df: pd.DataFrame, column: str, file: str) -> pd.Series:
    """Ids as a `str` column; null, empty or float ids are errors (1.0 is not an id)."""
    values = df[column]
    if pd.api.types.is_float_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise _error(file, column, f"ids must be strings or integers, not {values.dtype}", df,
                     np.ones(len(df), bool))
    null = values.isna()
    if null.any():
        raise _error(file, column, "missing id", df, null)
    ids = values.astype("str").reset_index(drop=True)
    empty = (ids.str.strip() == "").to_numpy()
    if empty.any():
        raise _error(file, column, "empty id", df, empty)
    return ids


def _numbers(df: pd.DataFrame, column: str, file: str, what: str) -> np.ndarray:
    """`column` as int64 ("timestamp", "label": whole numbers, labels 0 / 1) or float32."""
    values = df[column]
    if not_numbers(values):  # converters give seconds explicitly
        raise _error(file, column, f"expected {what}, got {values.dtype}", df,
                     np.ones(len(df), bool))
    if column == "rating":
        number, bad = finite_float32(values)
    else:
        number, bad = whole_numbers(values)
    if column == "label":
        bad = bad | ~np.isin(number, [0, 1])
    if bad.any():
        raise _error(file, column, f"null, unparsable or out-of-range value, expected {what}", df,
                     bad)
    return number


def validate_interactions(df: pd.DataFrame, file: str = FILES["interactions"]) -> pd.DataFrame:
    """Check and coerce interactions to the canonical dtypes; row order is kept."""
    for column in REQUIRED:
        if column not in df.columns:
            raise _error(file, column, f"missing (columns: {list(df.columns)})",
                         df, np.ones(len(df), bool) if len(df) else None)
    extra = [c for c in df.columns if c not in INTERACTION_TYPES]
    if extra:
        raise _error(file, str(extra[0]), f"unexpected column; allowed: {list(INTERACTION_TYPES)}",
                     df, np.ones(len(df), bool) if len(df) else None)
    if len(df) == 0:
        raise _error(file, "user_id", "the table is empty")
    out = {c: _ids(df, c, file) for c in ("user_id", "item_id")}
    out["timestamp"] = _numbers(df, "timestamp", file, "integer seconds within int64")
    if "label" in df.columns:
        out["label"] = _numbers(df, "label", file, "0 or 1").astype("int8")
    if "rating" in df.columns:
        out["rating"] = _numbers(df, "rating", file, "a finite float32 number")
    if "impression_id" in df.columns:
        out["impression_id"] = _ids(df, "impression_id", file)
    return pd.DataFrame(out)


def _attribute_value(value):
    """str | list[str] | None; NaN, '' and empty lists become None."""
    if value is None:
        return None
    if isinstance(value, list | tuple | np.ndarray):
        kept = [str(v) for v in value if v is not None and not _is_nan(v) and str(v).strip()]
        return kept or None
    if _is_nan(value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)  # a number column with gaps is float in pandas: 31.0 -> "31"
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _is_nan(value) -> bool:
    return isinstance(value, float | np.floating) and value != value


def validate_entities(df: pd.DataFrame, kind: str, file: str) -> pd.DataFrame:
    """Check items or users: key column present, unique, and attributes str / list[str]."""
    key = KEYS[kind]
    if key not in df.columns:
        raise _error(file, key, f"missing (columns: {list(df.columns)})",
                     df, np.ones(len(df), bool) if len(df) else None)
    if len(df) == 0:
        raise _error(file, key, "the table is empty")
    ids = _ids(df, key, file)
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        dup = ids[duplicated].iloc[0]
        raise _error(file, key, f"duplicate {key} {dup!r}", df, duplicated)
    out = {key: ids}
    for column in df.columns:
        if column == key:
            continue
        if not isinstance(column, str) or not column:
            raise _error(file, str(column), "attribute names must be non-empty strings")
        values = [_attribute_value(v) for v in df[column].tolist()]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1:
            mixed = [isinstance(v, list) for v in values]
            raise _error(file, column, "mixes strings and lists", df, mixed)
        out[column] = pd.Series(values, dtype=object)
    return pd.DataFrame(out)


def validate_tables(interactions, items, users=None, files: Mapping[str, str] | None = None):
    """All checks, including that every interaction points at a known item (and user)."""
    names = {**FILES, **(files or {})}
    inter = validate_interactions(interactions, names["interactions"])
    items = validate_entities(items, "items", names["items"])
    users = None if users is None else validate_entities(users, "users", names["users"])
    for key, table, kind in (("item_id", items, "items"), ("user_id", users, "users")):
        if table is None:
            continue
        unknown = ~inter[key].isin(table[key]).to_numpy()
        if unknown.any():
            first = inter[key][unknown].iloc[0]
            problem = (f"{first!r} is not in {names[kind]} "
                       f"({int(unknown.sum())} rows reference unknown ids)")
            raise _error(names["interactions"], key, problem, inter, unknown)
    return inter, items, users


def items_without_text(items: pd.DataFrame) -> int:
    """Items whose every attribute is None (allowed, but worth knowing)."""
    attributes = [c for c in items.columns if c != "item_id"]
    if not attributes:
        return len(items)
    return int(items[attributes].isna().all(axis=1).sum())


# --- files ------------------------------------------------------------------------------------


def _arrow(df: pd.DataFrame, kind: str) -> pa.Table:
    """Explicit parquet schema: ids string, attributes string or list<string>."""
    fields = []
    for column in df.columns:
        if kind == "interactions":
            fields.append(pa.field(column, INTERACTION_TYPES[column]))
        elif column != KEYS[kind] and any(isinstance(v, list) for v in df[column]):
            fields.append(pa.field(column, pa.list_(pa.string())))
        else:
            fields.append(pa.field(column, pa.string()))
    schema = pa.schema(fields)
    return pa.Table.from_pandas(df, schema=schema, preserve_index=False).replace_schema_metadata()


def _write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(inter, items, users, *, name, source, license) -> dict:
    ties = int(inter.duplicated(["user_id", "timestamp"]).sum())
    return {
        "name": name, "source": source, "license": license,
        "counts": {"interactions": len(inter), "users": int(inter["user_id"].nunique()),
                   "items": len(items)},
        "rows": {"interactions": len(inter), "items": len(items),
                 "users": None if users is None else len(users)},
        "items_interacted": int(inter["item_id"].nunique()),
        "items_without_text": items_without_text(items),
        "timestamp_range": [int(inter["timestamp"].min()), int(inter["timestamp"].max())],
        "tied_timestamps": ties,  # rows sharing (user, timestamp) with an earlier row
        "columns": {"interactions": list(inter.columns), "items": list(items.columns),
                    "users": None if users is None else list(users.columns)},
        "created_with": {
            "format_version": FORMAT_VERSION, "writer": "recsys.data.schema",
            "python": platform.python_version(), "pandas": pd.__version__,
            "pyarrow": pa.__version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def write_dataset(out_dir, interactions, items, users=None, *, name: str, source: str,
                  license: str, origin: Mapping[str, str] | None = None,
                  extra: Mapping | None = None) -> dict:
    """Validate, then write the dataset into a temp dir beside `out_dir` and rename it in place.

    `origin` names the raw file behind each table for error messages (e.g. {"items": "u.item"});
    `extra` is merged into dataset.json. On any error nothing at `out_dir` changes.
    """
    out_dir = Path(out_dir)
    inter, items, users = validate_tables(interactions, items, users, origin)
    info = _describe(inter, items, users, name=name, source=source, license=license)
    info.update(extra or {})
    _check_replaceable(out_dir)
    with replacing(out_dir) as tmp:
        info["files"] = {}
        for kind, df in (("interactions", inter), ("items", items), ("users", users)):
            if df is not None:
                _write_table(_arrow(df, kind), tmp / FILES[kind])
                info["files"][FILES[kind]] = {"sha256": _sha256(tmp / FILES[kind]),
                                              "rows": len(df)}
        info["sha256"] = _combined_hash(info["files"])
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info


def _combined_hash(files: Mapping[str, Mapping]) -> str:
    """One content hash over the parquet files (their names and sha256s, in name order)."""
    lines = "".join(f"{name} {files[name]['sha256']}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty dir or a previous dataset may be replaced (never someone's home dir)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise DataError(f"{out_dir}: exists and is not a directory; refusing to replace it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        raise DataError(f"{out_dir}: not empty and has no {INFO_FILE}; refusing to replace it")


def _read_parquet(path: Path, kind: str) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path.name}: column '?': cannot read parquet ({err})") from None
    if kind == "interactions":
        return table.to_pandas()
    # attributes as plain Python objects: str, list[str] or None
    return pd.DataFrame({name: pd.Series(table.column(name).to_pylist(), dtype=object)
                         for name in table.column_names})


def _read_info(path: Path) -> dict:
    info_path = path / INFO_FILE
    if not info_path.is_file():
        raise DataError(f"{INFO_FILE}: file not found in {path} (run prepare first)")
    try:
        info = json.loads(info_path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{INFO_FILE}: not valid JSON in {path} ({err})") from None
    if not isinstance(info, dict):
        raise DataError(f"{INFO_FILE}: not a JSON object in {path}")
    return info


def dataset_sha256(path) -> str:
    """The content hash of a dataset dir (over its parquet files), as dataset.json records it.

    Reads dataset.json only; `load_dataset` checks the files against it.
    """
    path = Path(path)
    digest = _read_info(path).get("sha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise DataError(f"{INFO_FILE}: no valid 'sha256' in {path} (prepare it again)")
    return digest


def load_dataset(path) -> Dataset:
    """Read a dataset directory, verify its content hash and run every validation."""
    path = Path(path)
    info = _read_info(path)
    files = info.get("files") or {}
    for kind in ("interactions", "items"):
        if FILES[kind] not in files:
            raise DataError(f"{INFO_FILE}: does not list {FILES[kind]} ({path})")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise DataError(f"{name}: file not found in {path}")
        if _sha256(file) != entry.get("sha256"):
            raise DataError(f"{name}: content sha256 does not match {INFO_FILE} in {path}; "
                            "the file changed after it was written (prepare it again)")
    if info.get("sha256") != _combined_hash(files):  # the hash runs record (dataset_sha256)
        raise DataError(f"{INFO_FILE}: 'sha256' does not match its file list in {path} "
                        "(prepare it again)")
    tables = {kind: _read_parquet(path / FILES[kind], kind) if FILES[kind] in files else None
              for kind in FILES}
    inter, items, users = validate_tables(tables["interactions"], tables["items"], tables["users"])
    return Dataset(path=path, interactions=inter, items=items, users=users, info=info)
