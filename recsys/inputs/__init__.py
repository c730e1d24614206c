"""Per-model inputs built from a dataset and its split: the two-tower's and the reranker's item and
user feature tables, catalogue text vectors (+ their cache), the reranker's candidate lists.
May use `models` (their input dataclasses), `data`, `ann`, `runtime` and the leaves."""
