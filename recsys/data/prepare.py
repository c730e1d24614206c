"""Raw files -> canonical dataset directory, by source name (`recsys prepare --source ...`)."""

from __future__ import annotations

import json
import logging
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
    plain = _plain_mapping(mapping)
    interactions, items, users, meta = SOURCES[source](raw, plain)
    info = write_dataset(
        out, interactions, items, users, name=meta["name"], source=source,
        license=meta["license"], origin=meta.get("files"),
        extra={"raw": str(raw), "mapping": plain, "notes": meta.get("notes", {})},
    )
    counts = info["counts"]
    log.info("prepared %s -> %s: %d users, %d items, %d interactions (%d items without text)",
             source, out, counts["users"], counts["items"], counts["interactions"],
             info["items_without_text"])
    return info


def ensure_dataset(source: str, raw: str | Path, out: str | Path,
                   mapping: Mapping | None = None) -> Path:
    """`out` if it already holds this source/raw/mapping; otherwise prepare it first.

    Only dataset.json is compared (cheap); `load_dataset` verifies the content hash.
    """
    out = Path(out)
    info_path = out / INFO_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError):
            info = {}
        same = (
            info.get("source") == source
            and info.get("raw") == str(Path(raw).resolve())
            and info.get("mapping") == _plain_mapping(mapping)
            and info.get("created_with", {}).get("format_version") == FORMAT_VERSION
        )
        if same:
            counts = info.get("counts", {})
            log.info("dataset %s is up to date (%s users, %s items, %s interactions)", out,
                     counts.get("users"), counts.get("items"), counts.get("interactions"))
            return out
    prepare(source, raw, out, mapping)
    return out
