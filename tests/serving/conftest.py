"""Fixtures for serving tests: small stores written with the real writer."""

from __future__ import annotations

import numpy as np
import pytest

from serving.store import write_store


@pytest.fixture
def make_store(tmp_path):
    """write(vectors=None, ids=None, root=tmp_path/"store", **kw) -> version dir.

    Defaults: 20 ids "i0".."i19" with seeded (20, 8) float32 vectors.
    """

    def write(vectors=None, ids=None, root=None, **kw):
        vectors = (np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
                   if vectors is None else np.asarray(vectors))
        ids = [f"i{i}" for i in range(len(vectors))] if ids is None else ids
        kw = {"model": "two_tower", "run_id": "run1", "normalized": False, **kw}
        return write_store(root or tmp_path / "store", ids, vectors, **kw)

    return write


@pytest.fixture
def make_candidates(tmp_path):
    """write(users=7, k=5, part_users=3, row_group_size=4) -> candidates dir shaped like
    `recsys export --what candidates`: user uN gets items "uN-r1".."uN-rK", score 1/rank."""

    def write(users=7, k=5, part_users=3, row_group_size=4, out=None):
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        out = out or tmp_path / "candidates"
        out.mkdir(parents=True, exist_ok=True)
        parts = []
        for n, first in enumerate(range(0, users, part_users)):
            names = [f"u{u}" for u in range(first, min(first + part_users, users))]
            table = pa.table({
                "user_id": [u for u in names for _ in range(k)],
                "rank": pa.array([r for _ in names for r in range(1, k + 1)], pa.int32()),
                "item_id": [f"{u}-r{r}" for u in names for r in range(1, k + 1)],
                "score": pa.array([1.0 / r for _ in names for r in range(1, k + 1)],
                                  pa.float32()),
                "stage": ["retrieval"] * (len(names) * k),
            })
            path = out / f"part-{n:05d}.parquet"
            pq.write_table(table, path, row_group_size=row_group_size)
            parts.append({"file": path.name, "users": len(names), "rows": table.num_rows,
                          "short_users": 0, "sha256": _sha256(path)})
        manifest = {"run_id": "run1", "users": {"count": users}, "config": {"k": k},
                    "rows": users * k, "short_users": 0, "parts": parts}
        (out / "_manifest.json").write_text(json.dumps(manifest))
        return out

    return write


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
