"""recsys: recommendation with text-based item representations.

Python API: `load_config(path)` -> `fit(config)` -> a run dir and an MLflow run.
"""

from recsys.config import Config, load_config

__all__ = ["Config", "export_candidates", "fit", "load_config"]


def __getattr__(name: str):
    # these pull in torch, faiss and MLflow: import on first use so `import recsys` stays light
    if name == "fit":
        from recsys.train import fit

        return fit
    if name == "export_candidates":
        from recsys.candidates import export_candidates

        return export_candidates
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
