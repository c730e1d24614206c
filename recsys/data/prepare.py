"""Raw files -> canonical dataset directory, by source name (`recsys prepare --source ...`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from recsys.data.schema import FORMAT_VERSION, INFO_FILE, DataError, write_dataset
from recsys.data.sources import amazon, mind, movielens, tabular

log = logging.getLogger(__name__)

# name -> converter(raw: Path, mapping) -> (interactions, items, users | None, meta)
SOURCES: dict[str, Callable] = {
    "movielens-100k": movielens.convert_100k,
    "movielens-1m": movielens.convert_1m,
    "movielens-latest": movielens.convert_latest,
    "amazon-lcrec": amazon.convert_lcrec,
    "amazon-s3rec": amazon.convert_s3rec,
    "amazon-2018": amazon.convert_2018,
    "mind": mind.convert,
    "tabular": tabular.convert,
}


def _plain_mapping(mapping: Mapping | None) -> dict | None:
    """The mapping as plain JSON data (it is recorded in dataset.json and compared later)."""
    if not mapping:  # None and {} mean the same: the converter's defaults
        return None
    try:
        return json.loads(json.dumps(dict(mapping)))  # key order kept: it orders attributes
    except (TypeError, ValueError) as err:
        raise DataError(f"mapping: must be JSON-like data (str, number, list, dict): {err}") \
            from None


def prepare(source: str, raw: str | Path, out: str | Path, mapping: Mapping | None = None) -> dict:
    """Convert `raw` with the `source` converter and write the dataset to `out` atomically."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")
    raw = Path(raw).resolve()
    if not raw.exists():
        raise DataError(f"{raw}: raw data not found")
    if not raw.is_dir():
        raise DataError(f"{raw}: not a directory (the raw path is the folder of the raw files)")
    plain = _plain_mapping(mapping)
    files = raw_fingerprint(raw, Path(out))  # before reading: a later edit must show
    interactions, items, users, meta = SOURCES[source](raw, plain)
    info = write_dataset(
        out, interactions, items, users, name=meta["name"], source=source,
        license=meta["license"], origin=meta.get("files"),
        extra={"raw": str(raw), "raw_files": files, "mapping": plain,
               "notes": meta.get("notes", {})},
    )
    counts = info["counts"]
    log.info("prepared %s -> %s: %d users, %d items, %d interactions (%d items without text)",
             source, out, counts["users"], counts["items"], counts["interactions"],
             info["items_without_text"])
    return info


def raw_fingerprint(raw: Path, out: Path | None = None) -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of every file under `raw` (`out` and its temp dirs
    left out, should the dataset live inside the raw dir).

    Size + mtime and no content hash: it costs one stat per file, where hashing would read the
    whole raw data (gigabytes) on every `ensure_dataset`. An edit keeps both only when someone
    resets the mtime on purpose; a file touched but unchanged is prepared again (safe side).
    """
    skip = None if out is None else Path(out).resolve()
    found = {}
    for folder, dirs, names in os.walk(raw):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if skip is None or not _is_dataset_dir(here / d, skip))
        for name in sorted(names):
            try:
                stat = (here / name).stat()
            except OSError:  # a dangling link: no file to read either
                continue
            found[(here / name).relative_to(raw).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return found


def _is_dataset_dir(path: Path, out: Path) -> bool:
    """`out` or one of its temp / old dirs (`.NAME.tmp-*`, `.NAME.old-*`)."""
    return path == out or (path.parent == out.parent and path.name.startswith(f".{out.name}."))


def ensure_dataset(source: str, raw: str | Path, out: str | Path,
                   mapping: Mapping | None = None) -> Path:
    """`out` if it already holds this source/raw/mapping and the raw files are unchanged
    (sizes and mtimes, see `raw_fingerprint`); otherwise prepare it first.

    Only dataset.json and the raw files' stats are read (cheap); `load_dataset` verifies the
    content hash. A dataset.json without a fingerprint (older code) is prepared again.
    """
    out = Path(out)
    info_path = out / INFO_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError):
            info = {}
        info = info if isinstance(info, dict) else {}
        raw_dir = Path(raw).resolve()
        same = (
            info.get("source") == source
            and info.get("raw") == str(raw_dir)
            and info.get("mapping") == _plain_mapping(mapping)
            and info.get("created_with", {}).get("format_version") == FORMAT_VERSION
        )
        if same and info.get("raw_files") != raw_fingerprint(raw_dir, out):
            log.info("raw files under %s changed since %s was prepared", raw_dir, out)
            same = False
        if same:
            counts = info.get("counts", {})
            log.info("dataset %s is up to date (%s users, %s items, %s interactions)", out,
                     counts.get("users"), counts.get("items"), counts.get("interactions"))
            return out
    prepare(source, raw, out, mapping)
    return out
