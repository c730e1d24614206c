"""Working with finished runs: rebuild the data split and the model, evaluate again."""

from __future__ import annotations

from pathlib import Path

from recsys.checkpoint import load_model
from recsys.config import Config
from recsys.data import ensure_dataset, load_dataset
from recsys.data.split import Split, leave_one_out
from recsys.evaluate import evaluate


def load_split(config: Config) -> Split:
    """Prepare the dataset if needed, load and validate it, and split it leave-one-out."""
    data = config.data
    dataset = load_dataset(ensure_dataset(data.source, data.raw, data.dir, data.mapping))
    return leave_one_out(dataset.interactions, dataset.items["item_id"])


def evaluate_run(run_dir: str | Path, which: str = "test") -> dict[str, float]:
    """Metrics of a run's best checkpoint on `which` ("valid" or "test"), from the run dir alone."""
    model, config = load_model(Path(run_dir) / "checkpoint" / "best")
    return evaluate(model, load_split(config), which, config.eval)
