"""recsys: recommendation with text-based item representations.

Python API: `load_config(path)` -> `fit(config)` -> a run dir and an MLflow run.
"""

from recsys.config import Config, load_config

__all__ = ["Config", "fit", "load_config"]


def __getattr__(name: str):
    # `fit` pulls in torch and MLflow; import it on first use so `import recsys` stays light.
    if name == "fit":
        from recsys.train import fit

        return fit
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
