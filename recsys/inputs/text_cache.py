"""Cache of text encodings: (model fingerprint, text) -> float32 vector, on disk, never pickled.

Layout: `<root>/<fingerprint[:32]>/part-<uuid>.safetensors`, each part holding `keys` (n, 16)
uint8 (blake2b of the UTF-8 text) and `vectors` (n, dim) float32. A part is written to a temp file
and renamed, so readers see whole parts only; writers never touch each other's parts. When parts
pile up they are merged into one (the merged part is written before the old ones are removed).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from recsys.runtime.atomic import atomic_path

log = logging.getLogger(__name__)

KEY_BYTES = 16
MAX_PARTS = 8  # merge beyond this many parts


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """(n, 16) uint8: a 128-bit blake2b digest per text."""
    raw = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"),
                                   digest_size=KEY_BYTES).digest() for t in texts)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), KEY_BYTES).copy()


class EncodingCache:
    """Vectors of one model (identified by `fingerprint`) keyed by text digest."""

    def __init__(self, root: Path, fingerprint: str, dim: int):
        self.folder = Path(root) / fingerprint[:32]
        self.fingerprint, self.dim = fingerprint, dim

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.safetensors")) if self.folder.is_dir() else []

    def _read(self) -> tuple[list[Path], np.ndarray, np.ndarray]:
        """All readable parts -> (paths, keys (m, 16), vectors (m, dim))."""
        paths, keys, vectors = [], [], []
        for path in self._parts():
            try:
                part = load_file(path)
            except (FileNotFoundError, SafetensorError, OSError) as err:  # merged away / damaged
                log.warning("text cache: skipping %s (%s)", path, err)
                continue
            if part["vectors"].shape[1:] != (self.dim,) or part["keys"].shape[1:] != (KEY_BYTES,):
                log.warning("text cache: skipping %s (shape does not match dim %d)", path, self.dim)
                continue
            paths.append(path)
            keys.append(part["keys"])
            vectors.append(part["vectors"])
        if not paths:
            return [], np.empty((0, KEY_BYTES), np.uint8), np.empty((0, self.dim), np.float32)
        return paths, np.concatenate(keys), np.concatenate(vectors)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """keys (n, 16) -> (vectors (n, dim) float32, found (n,) bool); rows not found are 0."""
        _, stored_keys, stored = self._read()
        index = {bytes(k): i for i, k in enumerate(stored_keys)}
        rows = np.array([index.get(bytes(k), -1) for k in keys], dtype=np.int64)
        found = rows >= 0
        vectors = np.zeros((len(keys), self.dim), dtype=np.float32)
        vectors[found] = stored[rows[found]]
        return vectors, found

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store a new part with these rows, then merge the parts if there are too many."""
        if len(keys):
            self._write(keys, np.asarray(vectors, dtype=np.float32))
        if len(self._parts()) > MAX_PARTS:
            paths, all_keys, all_vectors = self._read()
            _, first = np.unique(all_keys, axis=0, return_index=True)
            self._write(all_keys[np.sort(first)], all_vectors[np.sort(first)])
            for path in paths:
                path.unlink(missing_ok=True)

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{uuid.uuid4().hex}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"keys": np.ascontiguousarray(keys, dtype=np.uint8),
                       "vectors": np.ascontiguousarray(vectors)}, str(tmp),
                      metadata={"fingerprint": self.fingerprint, "dim": str(self.dim)})
        return path
