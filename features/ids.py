"""Raw string ids <-> dense integer indices.

Index 0 is reserved for padding, so the first real id gets index 1. The order of `ids` is the
order of first appearance in the input, which keeps indices reproducible across runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

PAD = 0


class IdMap:
    """A frozen vocabulary of string ids; `index` maps ids to ints, `ids` maps back."""

    def __init__(self, ids: Iterable[str]):
        unique = pd.unique(pd.Series(list(ids), dtype=object))
        self.ids: np.ndarray = np.asarray(unique, dtype=object)  # (n,) row i -> index i + 1
        self._lookup = pd.Index(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size_with_pad(self) -> int:
        """Rows an embedding table needs: every id plus the padding row 0."""
        return len(self.ids) + 1

    def index(self, ids: Iterable[str], *, missing: str = "raise") -> np.ndarray:
        """Map raw ids to indices (n,) int64; unknown ids raise KeyError or become PAD."""
        values = pd.Index(list(ids) if not isinstance(ids, pd.Series | np.ndarray) else ids)
        rows = self._lookup.get_indexer(values)
        unknown = rows < 0
        if unknown.any():
            if missing == "raise":
                sample = list(values[unknown][:5])
                raise KeyError(f"{int(unknown.sum())} unknown ids, e.g. {sample}")
            return np.where(unknown, PAD, rows + 1).astype(np.int64)
        return (rows + 1).astype(np.int64)

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        """Map indices (n,) back to raw ids; PAD is not a valid index here."""
        indices = np.asarray(indices)
        if (indices < 1).any() or (indices > len(self.ids)).any():
            raise IndexError("index out of range (0 is padding)")
        return self.ids[indices - 1]
