"""Artifacts of a finished run for serving: item / user embedding stores, batch top-K candidates
(resumable parts + manifest, torchrun-sharded) and reranked candidates. Rebuilds a model from a run
dir through `recipes`; never imports the training loop."""
