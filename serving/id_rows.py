"""Id -> row of one store version, looked up by the ids' 64-bit hashes in a C hash table.

A dict lookup of a str id touches the dict's index slot, its entry, the stored key (compared
unless it is the very same object) and the int holding the row: on a store too large for the
cache that is three or four memory misses per id, about 3x numpy's gather of the rows themselves.
pandas' Int64HashTable keyed by `hash(id)` touches one bucket per id and returns all rows as one
int64 array, without a Python object per row.

The price: an unknown id whose 64-bit hash equals a stored id's hash is taken for that id. For
str ids Python's hash is a keyed SipHash, so the chance is about count / 2**64 per unknown id
(5e-15 at 100k ids). Two stored ids with one hash (about count**2 / 2**65 per version) would
make the table ambiguous: then this falls back to a plain dict, exact at the dict's speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
from pandas._libs.hashtable import Int64HashTable  # private but long stable; pandas is pinned


class IdRows:
    """Rows of ids: `row(id)` -> int or -1, `rows(ids)` (n,) int64 with -1 where unknown."""

    def __init__(self, ids: Sequence[str]):
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))  # (count,)
        table = Int64HashTable(len(ids))
        table.map_locations(hashes)
        self.hashed = len(table) == len(ids)  # else colliding hashes (or repeated ids)
        self._table = table if self.hashed else None
        self._dict = None if self.hashed else dict(zip(ids, range(len(ids)), strict=True))

    def row(self, id_: str) -> int:
        """The row of one id, -1 if unknown. TypeError: an unhashable id."""
        if self._dict is not None:
            return self._dict.get(id_, -1)
        try:
            return self._table.get_item(hash(id_))
        except KeyError:
            return -1

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 rows of `ids`, -1 where unknown. TypeError: an unhashable id."""
        if self._dict is not None:
            return np.fromiter(map(self._dict.get, ids, repeat(-1)), dtype=np.int64,
                               count=len(ids))
        return self._table.lookup(np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)))
