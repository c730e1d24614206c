"""recsys: recommendation with text-based item representations.

Python API: `load_config(path)` -> `fit(config)` -> a run dir and an MLflow run.
"""

import os

# Back torch's CPU tensors of 2 MB and more with transparent huge pages (read by torch once, at
# its first allocation, so only if torch is not imported yet). Training frees and re-allocates
# its large tensors (a full-softmax step's logits are ~100 MB) every step, and each comes back
# as fresh pages the kernel must fault in and zero one 4 KB page at a time: with huge pages the
# quickstart's epochs ran ~20% faster (55 s -> 43 s for two), same results, no more memory.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from recsys.config import Config, load_config  # noqa: E402

__all__ = ["Config", "export_candidates", "fit", "load_config"]


def __getattr__(name: str):
    # these pull in torch, faiss and MLflow: import on first use so `import recsys` stays light
    if name == "fit":
        from recsys.train.loop import fit

        return fit
    if name == "export_candidates":
        from recsys.export.candidates import export_candidates

        return export_candidates
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
