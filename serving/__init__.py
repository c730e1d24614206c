"""Serving: the embedding store format, lookups by id and an HTTP app. Never imports torch."""

from serving.lookup import EmbeddingStore, Neighbors, UnknownIdError
from serving.store import StoreError

__all__ = ["EmbeddingStore", "Neighbors", "StoreError", "UnknownIdError"]
