"""Synthetic catalogues for benchmarks: clustered item vectors, users, Zipf histories, item text.

    cat = synthetic_catalogue(100_000, 100_000, 64, seed=0)
    cat.item_vectors                 # (n_items, dim) float32, unit norm, in clusters
    users = cat.users(0, 10_000)     # vectors (B, dim), CSR histories, raw ids of users 0..9999
    cat.attributes()                 # DataFrame: item_id, title, brand, category, price

Items fall into clusters of ~100 (so an ANN index has structure to find); a user sits near
a home cluster and a second one. Item popularity is a power law (Zipf, exponent 1) over a random
order of the items; a history has a log-normal length (mean ~20, long tail) and draws half its
items from the global popularity and half from the popular items of the home cluster, so seen
items are often among the user's best matches (dropping them matters). Item indices are 1-based
like the real data (0 = padding). Users are made on demand in fixed blocks, each from its own
seed, so 1M users never sit in memory at once and any slice is the same whatever the batching.
Everything is deterministic by `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

USER_BLOCK = 4096  # users made together from one seed
_CHUNK = 65_536  # item rows made at once, to bound temporaries
ZIPF_EXPONENT = 1.0
HISTORY_MEAN, HISTORY_SIGMA = 20.0, 1.0  # log-normal lengths: mean ~20, median ~12
ITEM_NOISE, USER_NOISE = 1.0, 0.5  # spread around the cluster centres (unit vectors)
CLUSTER_ITEMS = 100  # items per cluster, on average
_ADJECTIVES = ("compact", "digital", "heavy-duty", "precision", "portable", "sterile", "premium",
               "adjustable", "stainless", "wireless", "industrial", "mini", "professional",
               "reusable", "clear", "high-temp", "lab-grade", "ergonomic", "magnetic", "analog")
_NOUNS = ("pipette", "beaker", "multimeter", "caliper", "thermometer", "scale", "microscope",
          "glove", "clamp", "funnel", "centrifuge", "timer", "flask", "sensor", "soldering iron",
          "goggles", "stirrer", "burette", "tweezers", "label printer", "respirator", "cable")
_SYLLABLES = ("ka", "zen", "tri", "lo", "mex", "vo", "sta", "ri", "on", "qua", "bel", "dyn",
              "ar", "ix", "pro", "tek", "sol", "vi", "na", "cor")
_DEPARTMENTS = ("Lab Supplies", "Test & Measurement", "Safety", "Electronics", "Tools",
                "Janitorial", "Packaging", "Medical")


@dataclass(frozen=True)
class SyntheticUsers:
    """Users start..stop-1: vectors (B, dim) float32, histories as CSR, raw ids (B,)."""

    vectors: np.ndarray  # (B, dim) float32
    offsets: np.ndarray  # (B + 1,) int64: user i saw items[offsets[i]:offsets[i + 1]]
    items: np.ndarray  # (nnz,) int64 item indices, 1-based
    ids: np.ndarray  # (B,) object raw user ids

    def __len__(self) -> int:
        return len(self.vectors)

    def histories(self) -> list[np.ndarray]:
        """Per user, the seen item indices (views into `items`)."""
        return np.split(self.items, self.offsets[1:-1])


@dataclass(frozen=True)
class SyntheticCatalogue:
    n_items: int
    n_users: int
    dim: int
    seed: int
    item_vectors: np.ndarray  # (n_items, dim) float32 unit rows; row i = item index i + 1
    item_cluster: np.ndarray  # (n_items,) int32 cluster of each item
    centers: np.ndarray  # (n_clusters, dim) float32 unit rows
    popular: np.ndarray  # (n_items,) int64 item rows (0-based), most popular first
    cluster_start: np.ndarray  # (n_clusters + 1,) members of c: by_cluster[start[c]:start[c+1]]
    by_cluster: np.ndarray  # (n_items,) item rows grouped by cluster, popular first in each

    @property
    def n_clusters(self) -> int:
        return len(self.centers)

    @cached_property
    def _zipf_cdf(self) -> np.ndarray:  # (n_items,) float64 cumulative popularity by rank
        weights = np.arange(1, self.n_items + 1, dtype=np.float64) ** -ZIPF_EXPONENT
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    def item_ids(self) -> np.ndarray:
        """(n_items,) object raw ids "i0000001" ... of item indices 1..n_items."""
        return np.array([f"i{i:07d}" for i in range(1, self.n_items + 1)], dtype=object)

    def users(self, start: int, stop: int) -> SyntheticUsers:
        """Users start..stop-1, made from the seeded blocks that cover them."""
        if not 0 <= start <= stop <= self.n_users:
            raise ValueError(f"users {start}..{stop} not within 0..{self.n_users}")
        first, last = start // USER_BLOCK, (stop - 1) // USER_BLOCK if stop > start else -1
        blocks = [self._user_block(b) for b in range(first, last + 1)]
        if not blocks:
            return SyntheticUsers(np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64),
                                  np.zeros(0, np.int64), np.zeros(0, object))
        lo, hi = start - first * USER_BLOCK, stop - first * USER_BLOCK
        vectors = np.concatenate([b.vectors for b in blocks])[lo:hi]
        lengths = np.concatenate([np.diff(b.offsets) for b in blocks])
        seen = np.concatenate([b.items for b in blocks])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.concatenate([b.ids for b in blocks])[lo:hi]
        return SyntheticUsers(np.ascontiguousarray(vectors), offsets[lo:hi + 1] - offsets[lo],
                              seen[offsets[lo]:offsets[hi]], ids)

    def _user_block(self, block: int) -> SyntheticUsers:
        rng = np.random.default_rng([self.seed, 1, block])
        start = block * USER_BLOCK
        n = min(USER_BLOCK, self.n_users - start)
        home = rng.integers(self.n_clusters, size=n)
        other = rng.integers(self.n_clusters, size=n)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        vectors = 0.8 * self.centers[home] + 0.4 * self.centers[other] + USER_NOISE * noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        mu = np.log(HISTORY_MEAN) - HISTORY_SIGMA**2 / 2
        cap = max(1, min(1000, self.n_items // 4))
        lengths = np.clip(np.rint(rng.lognormal(mu, HISTORY_SIGMA, size=n)), 1, cap)
        lengths = lengths.astype(np.int64)
        ranks = np.searchsorted(self._zipf_cdf, rng.random(lengths.sum()))  # (nnz,) Zipf ranks
        ranks = np.minimum(ranks, self.n_items - 1)
        cluster = np.repeat(home, lengths)  # (nnz,) the home cluster of each draw's user
        size = np.diff(self.cluster_start)[cluster]
        local = (rng.random(len(ranks)) < 0.5) & (size > 0)
        rows = self.popular[ranks]  # global draws
        rows[local] = self.by_cluster[self.cluster_start[cluster[local]]
                                      + ranks[local] % size[local]]
        ids = np.array([f"u{u:08d}" for u in range(start, start + n)], dtype=object)
        return SyntheticUsers(vectors.astype(np.float32), np.concatenate([[0], np.cumsum(lengths)]),
                              rows + 1, ids)

    def attributes(self) -> pd.DataFrame:
        """Text-like item attributes: item_id, title, brand, category (per cluster), price."""
        rng = np.random.default_rng([self.seed, 2])
        n = self.n_items
        syl = np.array(_SYLLABLES, dtype=object)
        brands = np.unique(syl[rng.integers(len(syl), size=300)]
                           + syl[rng.integers(len(syl), size=300)]
                           + syl[rng.integers(len(syl), size=300)])
        brands = np.array([b.capitalize() for b in brands], dtype=object)
        brand_cdf = np.cumsum(np.arange(1, len(brands) + 1, dtype=np.float64) ** -1.0)
        brand = brands[np.searchsorted(brand_cdf / brand_cdf[-1], rng.random(n))]
        adjectives, nouns = np.array(_ADJECTIVES, object), np.array(_NOUNS, object)
        subject = nouns[self.item_cluster % len(nouns)]  # items of a cluster share their kind
        departments = np.array(_DEPARTMENTS, dtype=object)
        category = departments[self.item_cluster % len(departments)] + " > " + np.char.capitalize(
            subject.astype(str)).astype(object) + "s"
        letters = np.array(list("ABCDEFGHKMNPRSTX"))[rng.integers(16, size=n)]
        numbers = rng.integers(100, 9999, size=n)
        model = np.array([f"{c}-{m}" for c, m in zip(letters, numbers, strict=True)], object)
        title = (brand + " " + adjectives[rng.integers(len(adjectives), size=n)] + " " + subject
                 + " " + model)
        price = np.round(rng.lognormal(3.0, 1.0, size=n), 2).astype(np.float32)
        return pd.DataFrame({
            "item_id": self.item_ids(), "title": title,
            "brand": pd.Categorical(brand), "category": pd.Categorical(category), "price": price})


def synthetic_catalogue(n_items: int, n_users: int, dim: int = 64,
                        seed: int = 0) -> SyntheticCatalogue:
    """A catalogue of `n_items` clustered unit item vectors (float32) and `n_users` users made
    on demand (`.users(start, stop)`); see the module docstring for the shape of the data."""
    if n_items < 1 or n_users < 0 or dim < 1:
        raise ValueError(f"need n_items >= 1, n_users >= 0, dim >= 1; got {n_items}, "
                         f"{n_users}, {dim}")
    rng = np.random.default_rng([seed, 0])
    n_clusters = max(8, n_items // CLUSTER_ITEMS)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    item_cluster = rng.integers(n_clusters, size=n_items).astype(np.int32)
    vectors = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, _CHUNK):
        part = item_cluster[start:start + _CHUNK]
        noise = rng.standard_normal((len(part), dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        rows = centers[part] + np.float32(ITEM_NOISE) * noise
        vectors[start:start + len(part)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    popular = rng.permutation(n_items)  # popularity rank r -> item row
    rank = np.empty(n_items, dtype=np.int64)
    rank[popular] = np.arange(n_items)
    by_cluster = np.lexsort((rank, item_cluster))  # by cluster, then most popular first
    cluster_start = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters + 1))
    return SyntheticCatalogue(n_items, n_users, dim, seed, vectors, item_cluster, centers,
                              popular, cluster_start.astype(np.int64), by_cluster)
