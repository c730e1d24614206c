"""Approximate nearest neighbours over item vectors: faiss index specs, build / save / load, recall
reports, and the list-by-list scan of IVF,Flat catalogues. Imports only `runtime` below it."""
