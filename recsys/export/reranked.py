"""Reranked batch candidates: a retriever's exported top K, reordered by a listwise reranker.

    recsys export --run RETRIEVAL_RUN --what candidates --rerank RERANK_RUN [--k N]

First the retrieval export writes each user's top K (K = the reranker's `candidates`, the list
length it was trained on) to `<retrieval run>/candidates-top<K>` (resumable as any export). Then
each of its parts is reranked into `part-NNNNN.parquet` of the output dir (default
`<rerank run>/candidates`): per user, the reranker scores the K candidates from the user's whole
known history (as the retrieval export reads it) and the retrieval features (score minus the
user's top score, log1p(rank - 1)) and, with `recent_popularity_days`, each candidate's recent
popularity at the end of the data (after the last interaction); the best N are kept with
`stage` = "rerank" and the final score (reranker logit + the blend weight picked on valid times
the retrieval score feature).
**Users the reranker cannot know** (absent from its data) keep their first N retrieval rows
unchanged, `stage` = "retrieval", and are counted as `unknown_users` in the manifest. The output
dir is held, checked and claimed as the candidates export's (`recsys.export.export_dir`):
parts are written atomically, a rerun skips parts already written for the same job and writes
again those damaged since, and `_manifest.json` (rows and sha256 per part) comes last. A user
list or settings of the retrieval export get a retrieval dir of their own
(`candidates-top<K>-<hash>`), so one list's export does not hold the dir another needs.
Single process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from features.ids import PAD
from features.sequences import pad_left
from recsys.data.split import Split
from recsys.eval.rerank import choose_blend
from recsys.export.candidate_search import SCHEMA
from recsys.export.candidates import export_candidates
from recsys.export.embeddings import full_histories
from recsys.export.export_dir import (
    MANIFEST_FILE,
    check_dir,
    claim_dir,
    hold_dir,
    part_done,
    part_entry,
    write_part,
)
from recsys.inputs.rerank_lists import retrieval_inputs
from recsys.models.reranker import N_RETRIEVAL
from recsys.recipes import load_run, require
from recsys.runtime.atomic import write_json
from serving.store import file_sha256

log = logging.getLogger(__name__)
STAGE = "rerank"


def export_reranked(retrieval_run: str | Path, rerank_run: str | Path,
                    out: str | Path | None = None, *, n: int | None = None,
                    users: list[str] | None = None,
                    overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Export the retriever's top K for `users` (default all), rerank every part, keep the best
    `n` (default the reranker config's export.k); returns a summary."""
    rerank_run = Path(rerank_run)
    model, config, data = load_run(rerank_run / "checkpoint" / "best")
    require(config, "lists", f"to rerank with ({rerank_run} is not a listwise reranker run)")
    k = config.model.reranker.candidates
    n = config.export.k if n is None else n
    if n < 1:
        raise ValueError(f"--k must be >= 1, got {n}: the reranked candidates kept per user")
    if n > k:
        raise ValueError(f"keeping {n} per user needs at least that many candidates; the "
                         f"reranker reorders its top {k} (model.reranker.candidates)")
    source = Path(retrieval_run) / _source_name(k, users, overrides)
    export_candidates(retrieval_run, source, k=k, users=users,
                      overrides=[*overrides, "export.metric=ip"])  # the score it trained on
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    out = Path(out or rerank_run / "candidates")
    job = {"job": "", "run_id": rerank_run.name, "retrieval_job": manifest["job"],
           "retrieval_run_id": manifest["run_id"], "k": n, "candidates": k,
           "weights_sha256": file_sha256(rerank_run / "checkpoint" / "best" / "model.safetensors")}
    job["job"] = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    summary = {"out": str(out), "retrieval_candidates": str(source)}
    with hold_dir(out):
        if check_dir(out, job) == "complete":
            return {**summary, "status": "already complete: nothing to do",
                    **_totals(json.loads((out / MANIFEST_FILE).read_text()))}
        started = time.perf_counter()
        histories = full_histories(data.split)
        blend = choose_blend(model, data)  # the weight of the retrieval score, picked on valid
        claim_dir(out, job)
        entries = []
        for part in manifest["parts"]:
            path = out / part["file"]
            if not part_done(path, job["job"]):
                table = rerank_table(model, data.split, histories,
                                     pq.read_table(source / part["file"]), n,
                                     config.model.reranker.retrieval_features, blend,
                                     popularity=data.popularity)
                write_part(path, table, job["job"])
            entries.append(part_entry(path, part["users"], "unknown_users"))
        doc = {**job, "config": {"k": n}, "rows": sum(e["rows"] for e in entries),
               "unknown_users": sum(e["unknown_users"] for e in entries), "parts": entries}
        write_json(out / MANIFEST_FILE, doc)
    return {**summary, "status": "complete", **_totals(doc),
            "seconds": round(time.perf_counter() - started, 3)}


def _source_name(k: int, users: list[str] | None, overrides: tuple[str, ...]) -> str:
    """The retrieval export's dir name in the retrieval run: `candidates-top<K>`, with a hash
    of the user list and settings where given (each list an export of its own)."""
    if users is None and not overrides:
        return f"candidates-top{k}"
    given = json.dumps({"users": list(users or []), "overrides": list(overrides)})
    return f"candidates-top{k}-{hashlib.sha256(given.encode()).hexdigest()[:12]}"


def _totals(manifest: dict[str, Any]) -> dict[str, Any]:
    """The summary lines a manifest answers."""
    return {"parts": len(manifest["parts"]), "rows": manifest["rows"],
            "unknown_users": manifest["unknown_users"]}


@torch.inference_mode()
def rerank_table(model: nn.Module, split: Split, histories: list[np.ndarray], table: pa.Table,
                 n: int, retrieval_features: bool = True, blend: float = 0.0,
                 batch_size: int = 256,
                 popularity: Callable[[np.ndarray], np.ndarray] | None = None) -> pa.Table:
    """One retrieval part (user_id, rank 1..K, item_id, score, stage) -> the best `n` per user.

    Users of `split` are reranked (stage "rerank", score = reranker logit + `blend` * (retrieval
    score - the user's top retrieval score), as in `recsys.eval.rerank`); the others keep
    their first `n` retrieval rows (stage "retrieval"). Users stay in the part's order.
    `popularity` maps candidates (U, K) to the extra inputs (U, K, P) after the retrieval
    features (`RerankData.popularity`: at the end of the data); None adds none.
    """
    model.eval()
    frame = table.to_pandas()
    user_ids = frame["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])  # (U,) first row per user
    sizes = np.diff(np.r_[starts, len(frame)])  # (U,) K, or fewer where the catalogue ran out
    rows = split.users.index(user_ids[starts], missing="pad") - 1  # (U,) -1 = unknown user
    grid = starts[:, None] + np.arange(sizes.max(initial=1))[None, :]  # (U, K) frame rows
    present = np.arange(grid.shape[1])[None, :] < sizes[:, None]  # (U, K)
    grid = np.where(present, grid, 0)
    items = np.where(present, split.items.index(frame["item_id"].to_numpy(),
                                                missing="pad")[grid], PAD)  # (U, K)
    if (items[present] == PAD).any():
        raise ValueError("retrieval candidates name items outside the reranker's catalogue")
    extra = retrieval_inputs(frame["score"].to_numpy(np.float32)[grid], present)  # (U, K, 2)
    extra_score = extra[..., 0]  # (U, K) retrieval score - top score
    extra = extra[..., : N_RETRIEVAL * retrieval_features]  # (U, K, F)
    if popularity is not None:
        extra = np.concatenate([extra, popularity(items)], axis=-1)  # (U, K, F + P)
    logits = np.full(items.shape, -np.inf, np.float32)  # (U, K); unknown users stay -inf
    known = np.flatnonzero(rows >= 0)
    for s in range(0, len(known), batch_size):
        b = known[s:s + batch_size]
        history = pad_left([histories[r] for r in rows[b]], model.max_len)
        out = model.score_lists(*map(torch.as_tensor, (rows[b], items[b], history, extra[b])))
        out = out.float().numpy() + blend * extra_score[b]
        logits[b] = np.where(present[b], out, -np.inf)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :n]  # unknown users: retrieval order
    keep = np.take_along_axis(present, order, 1)  # (U, n)
    picked = np.take_along_axis(grid, order, 1)[keep]  # frame rows, user by user
    reranked = np.repeat(rows >= 0, keep.sum(1))
    ranks = (np.cumsum(keep, 1) * keep)[keep].astype(np.int32)
    out = pa.table({
        "user_id": pa.array(user_ids[picked], pa.string()), "rank": pa.array(ranks),
        "item_id": pa.array(frame["item_id"].to_numpy()[picked], pa.string()),
        "score": pa.array(np.where(reranked, np.take_along_axis(logits, order, 1)[keep],
                                   frame["score"].to_numpy(np.float32)[picked]), pa.float32()),
        "stage": pa.array(np.where(reranked, STAGE, "retrieval"), pa.string())}, schema=SCHEMA)
    return out.replace_schema_metadata({"recsys.unknown_users": str(int((rows < 0).sum()))})
