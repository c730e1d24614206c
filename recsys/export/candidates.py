"""Batch top-K candidates for every user (or a user list): parquet parts + a manifest, resumable.

`export_candidates(run_dir)` rebuilds the run's best model, indexes its item vectors with faiss
(only the items the allow/deny lists let through), and for each user searches the user vector of
the whole known history, drops the items the user already had, and keeps the best K. Users are
cut into fixed parts of `export.part_users`; each part is one `part-NNNNN.parquet`
(user_id, rank, item_id, score, stage), written to a temp file and renamed. `_job.json` (what is
being exported) comes first, `_manifest.json` (parts, rows, sha256) last. Rerunning the same job
skips the parts already there, so a killed export ends byte-identical to an uninterrupted one;
rerunning a finished one checks every part against the manifest's sha256 and writes again those
damaged or deleted since. The dir is held against other exports while written, and claimed only
once the index is built (a bad index spec claims nothing): `recsys.export.export_dir`.
Under torchrun, rank r writes the parts i with i % world == r and rank 0 writes the manifest.
The work on vectors (search, drop the seen, keep K) lives in `recsys.export.candidate_search`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm import tqdm

from features.ids import PAD, IdMap
from recsys.ann import index as ann
from recsys.config import ExportConfig, apply_override, config_from_dict, config_to_dict
from recsys.data.split import Split
from recsys.export.candidate_search import Catalogue, SearchedPart, build_catalogue, search_part
from recsys.export.embeddings import batch_user_vectors, full_histories
from recsys.export.export_dir import (
    MANIFEST_FILE,
    PartWriter,
    check_dir,
    claim_dir,
    hold_dir,
    part_done,
    part_entry,
)
from recsys.recipes import load_run, require
from recsys.runtime.atomic import write_json
from recsys.runtime.distributed import Worker, barrier, process_group, share
from serving.store import file_sha256

log = logging.getLogger(__name__)

PART_DELAY_ENV = "RECSYS_EXPORT_PART_DELAY"  # test-only: seconds to sleep after each part


def export_candidates(
    run_dir: str | Path, out: str | Path | None = None, *, k: int | None = None,
    users: Sequence[str] | None = None, overrides: Sequence[str] = (), **settings: Any,
) -> dict[str, Any]:
    """Write the candidates of `users` (raw ids; default all, in split order) under `out`.

    Settings: the run's `export` config section, then `overrides` ("export.key=value"), then
    keyword `settings` (ExportConfig fields), then `k`. `out` defaults to `export.out`, then
    `run_dir/candidates`. Returns a summary (rows, parts written / skipped, users/s ...).
    """
    run_dir = Path(run_dir)
    model, config, split = load_run(run_dir / "checkpoint" / "best")
    require(config, "vectors", "to search candidates with")
    cfg = resolve_settings(config.export, overrides, {**settings, "k": k})
    out = Path(out or cfg.out or run_dir / "candidates")
    rows = user_rows(split.users, users)  # (n,) user rows, in part order
    items = offered_items(split.items, cfg)  # (m,) item indices the index holds
    job = job_doc(run_dir, cfg, split, rows, items)
    parts = [(s, min(s + cfg.part_users, len(rows))) for s in range(0, len(rows), cfg.part_users)]
    with process_group() as worker, ExitStack() as held:
        # rank 0 holds and checks the dir, and claims it once the index is built; the others
        # wait for its answers, so no part is written before the claim, and every rank stops
        # with rank 0's reason
        if _on_main(worker, _hold_and_check, held, out, job) == "complete":
            return {"status": "already complete: nothing to do", "out": str(out),
                    **_totals(json.loads((out / MANIFEST_FILE).read_text()))}
        model = model.to(worker.device)
        catalogue = _catalogue(model, items, cfg)  # a bad index spec fails here, unclaimed
        _on_main(worker, claim_dir, out, job)
        summary = _write_parts(model, split, rows, catalogue, cfg, out, job, parts, worker)
        barrier()  # every part is in place
        summary["status"] = "parts written; rank 0 writes the manifest"
        if worker.is_main:
            summary.update(_totals(write_manifest(out, job, cfg, parts)), status="complete")
    return {"out": str(out), "rank": worker.rank, "world": worker.world, **summary}


def read_id_list(path: str | Path) -> list[str]:
    """Raw ids from a text file, one a line (surrounding blanks and empty lines ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]


def resolve_settings(base: ExportConfig, overrides: Sequence[str],
                     settings: dict[str, Any]) -> ExportConfig:
    """`base` with "export.key=value" overrides and then keyword settings (None = keep)."""
    raw = {"export": config_to_dict(base)}
    for item in overrides:
        if not item.strip().startswith("export."):
            raise ValueError(f"override {item!r}: an export takes export.* keys only")
        apply_override(raw, item)
    raw["export"].update({key: v for key, v in settings.items() if v is not None})
    return config_from_dict(raw).export  # checks each key's type and range


def user_rows(users: IdMap, wanted: Sequence[str] | None) -> np.ndarray:
    """(n,) int64 rows of `users` to export: all in split order, or `wanted` in its order."""
    if wanted is None:
        return np.arange(len(users), dtype=np.int64)
    wanted = list(wanted)
    if not wanted:
        raise ValueError("the user list is empty: nothing to export")
    index = users.index(wanted, missing="pad")  # (n,) PAD where unknown
    unknown = [u for u, i in zip(wanted, index, strict=True) if i == PAD]
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(wanted)} user ids are not in the run's data, "
                         f"e.g. {unknown[:5]}")
    uniq, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"user ids listed twice, e.g. {list(users.lookup(uniq[counts > 1][:5]))}")
    return index - 1


def offered_items(items: IdMap, cfg: ExportConfig) -> np.ndarray:
    """(m,) sorted item indices (1-based) allowed by `allow_items` and not in `deny_items`;
    an error unless at least `k` remain."""
    keep = np.ones(items.size_with_pad, dtype=bool)  # (n_items + 1,)
    keep[PAD] = False
    for path, allow in ((cfg.allow_items, True), (cfg.deny_items, False)):
        if path is None:
            continue
        key = "export.allow_items" if allow else "export.deny_items"
        try:
            ids = read_id_list(path)
        except OSError as err:
            raise ValueError(f"{key}: cannot read {path} ({err.strerror or err})") from err
        if allow and not ids:
            raise ValueError(f"allow list {path} is empty: no item could be offered")
        index = items.index(ids, missing="pad")
        if (index == PAD).any():  # business lists often name retired items: warn, go on
            log.warning("%s: %d ids not in the catalogue, e.g. %s", path, (index == PAD).sum(),
                        [i for i, x in zip(ids, index, strict=True) if x == PAD][:5])
        listed = np.zeros_like(keep)
        listed[index[index != PAD]] = True
        keep &= listed if allow else ~listed
    offered = np.flatnonzero(keep)
    if cfg.k > len(items):
        raise ValueError(f"k={cfg.k} is larger than the catalogue ({len(items)} items)")
    if cfg.k > len(offered):
        raise ValueError(f"k={cfg.k} but the allow/deny lists leave only {len(offered)} items")
    return offered


def job_doc(run_dir: Path, cfg: ExportConfig, split: Split, rows: np.ndarray,
            items: np.ndarray) -> dict[str, Any]:
    """What this export is: run, weights, settings, users and offered items; `job` hashes it."""
    settings = config_to_dict(cfg)
    paths = {key: settings.pop(key) for key in ("out", "allow_items", "deny_items")}
    identity = {
        "run_id": run_dir.name,
        "weights_sha256": file_sha256(run_dir / "checkpoint" / "best" / "model.safetensors"),
        "settings": settings,  # the lists count through their content below, not their paths
        "users": {"count": len(rows), "sha256": _ids_sha256(split.users.ids[rows])},
        "items": {"count": len(items), "sha256": _ids_sha256(split.items.ids[items - 1])},
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"job": digest, **identity, "paths": paths}


def _on_main(worker: Worker, step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)` on rank 0 only; every rank gets its result, or raises its error (so no
    rank waits forever for an answer rank 0 will not give). Rank 0 raises the error itself,
    the others `_shared(error)`."""
    result, error = None, None
    if worker.is_main:
        try:
            result = step(*args)
        except Exception as err:  # any error: one the others did not hear of would hang them
            error = err
    result, shared = share((result, None if error is None else _shared(error)))
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def _shared(error: Exception) -> Exception:
    """`error` as a built-in error with its message, which every rank can unpickle: a
    ValueError or OSError (the CLI's one-line errors) stays one, anything else is a
    RuntimeError naming its type."""
    for kind in (ValueError, OSError):
        if isinstance(error, kind):
            return kind(f"rank 0: {error}")
    return RuntimeError(f"rank 0: {type(error).__name__}: {error}")


def _hold_and_check(held: ExitStack, out: Path, job: dict[str, Any]) -> str:
    held.enter_context(hold_dir(out))
    return check_dir(out, job)


def _catalogue(model: nn.Module, items: np.ndarray, cfg: ExportConfig) -> Catalogue:
    """The offered `items` (m,) of the model's item vectors, indexed as `cfg` says."""
    with torch.inference_mode():
        vectors = model.item_vectors()[1:].float().cpu().numpy()  # (n_items, dim)
    return build_catalogue(vectors, items, cfg)


def _write_parts(model: nn.Module, split: Split, rows: np.ndarray, catalogue: Catalogue,
                 cfg: ExportConfig, out: Path, job: dict[str, Any],
                 parts: list[tuple[int, int]], worker: Worker) -> dict[str, Any]:
    """Write this rank's missing parts; return what it did."""
    histories = full_histories(split)
    item_ids = pa.array(split.items.ids, pa.string())  # (n_items,) converted once, taken per row
    mine = [i for i in range(len(parts)) if i % worker.world == worker.rank]
    delay = float(os.environ.get(PART_DELAY_ENV, "0"))
    done = {"parts_written": 0, "parts_skipped": 0, "users_searched": 0}
    bar = tqdm(total=sum(parts[i][1] - parts[i][0] for i in mine), unit=" users",
               desc=f"candidates rank {worker.rank}/{worker.world}")
    start = time.perf_counter()
    concurrent = ann.search_threads(catalogue.index) > 1
    with PartWriter(job["job"]) as writer:
        for i in mine:
            path, part = out / f"part-{i:05d}.parquet", rows[parts[i][0]:parts[i][1]]
            if part_done(path, job["job"]):
                done["parts_skipped"] += 1
                bar.update(len(part))
                continue
            searched = _search_part(model, split, histories, part, catalogue, cfg, bar)
            # the table's second search may share the index with the next part's only on a CPU
            writer.write(path, partial(searched.table, item_ids) if concurrent
                         else searched.table(item_ids))
            done["parts_written"] += 1
            done["users_searched"] += len(part)
            time.sleep(delay)
    bar.close()
    seconds = time.perf_counter() - start
    return {**done, "seconds": round(seconds, 3),
            "users_per_s": round(done["users_searched"] / max(seconds, 1e-9), 1)}


def _search_part(model: nn.Module, split: Split, histories: list[np.ndarray], part: np.ndarray,
                 catalogue: Catalogue, cfg: ExportConfig, bar: tqdm) -> SearchedPart:
    """The users `part` (user rows) searched, their table yet to make."""

    def batches():  # the model forward happens here, one batch at a time
        for start in range(0, len(part), cfg.batch_users):
            batch = part[start:start + cfg.batch_users]  # (B,) user rows
            seen = [histories[r] for r in batch]
            yield batch_user_vectors(model, seen, batch), seen, split.users.ids[batch]

    return search_part(batches(), catalogue, cfg, bar)


def write_manifest(out: Path, job: dict[str, Any], cfg: ExportConfig,
                   parts: list[tuple[int, int]]) -> dict[str, Any]:
    """Rank 0, after every part is written: `_manifest.json` with per-part rows and sha256."""
    entries = []
    for i, (start, stop) in enumerate(parts):
        path = out / f"part-{i:05d}.parquet"
        if not part_done(path, job["job"]):
            raise ValueError(f"{path} is missing or not of this job: the manifest is not written")
        entries.append(part_entry(path, stop - start, "short_users"))
    identity = {key: v for key, v in job.items() if key not in ("settings", "paths")}
    doc = {**identity, "config": config_to_dict(cfg), "rows": sum(e["rows"] for e in entries),
           "short_users": sum(e["short_users"] for e in entries), "parts": entries,
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    write_json(out / MANIFEST_FILE, doc)
    return doc


def _totals(manifest: dict[str, Any]) -> dict[str, Any]:
    """The summary lines a manifest answers; short_users > 0 means a catalogue ran out."""
    return {"run_id": manifest["run_id"], "k": manifest["config"]["k"],
            "users": manifest["users"]["count"], "parts": len(manifest["parts"]),
            "rows": manifest["rows"], "short_users": manifest["short_users"]}


def _ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()
