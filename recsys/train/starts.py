"""Runs that start from another run: a model section's `init_from` may name the config of the
run to start from (a YAML file) instead of its run dir.

`resolve_starts` finds a finished run of exactly that config in its `train.runs_dir` (one whose
config.yaml equals it but for `train.threads`, which changes speed and not what is trained, and
whose metrics.json was written), or trains it first, and returns the
config with `init_from` set to that run's dir, so the run's own config.yaml records the run it
started from. Recformer fine-tuning names its pre-training this way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from recsys.config import (
    Config,
    ConfigError,
    config_to_dict,
    load_config,
    read_yaml,
    stored_config,
)
from recsys.recipes import model_section

log = logging.getLogger(__name__)


def resolve_starts(config: Config, train: Callable[[Config], Path]) -> Config:
    """`config` with a YAML `init_from` replaced by the dir of a finished run of that config,
    trained with `train(config) -> run dir` when there is none yet."""
    section = model_section(config)
    start = getattr(section, "init_from", None)
    if start is None or Path(start).suffix not in (".yaml", ".yml"):
        return config  # nothing to start from, or a run dir already
    first = load_config(start)
    run = finished_run(first)
    if run is None:
        log.info("no finished run of %s in %s: training it first", start, first.train.runs_dir)
        run = train(first)
    else:
        log.info("starting from %s, a finished run of %s", run, start)
    named = {config.model.name: dataclasses.replace(section, init_from=str(run))}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **named))


def finished_run(config: Config) -> Path | None:
    """The newest run dir under `config.train.runs_dir` that trained exactly `config` (any
    `train.threads`) to the end (its metrics.json written), or None."""
    wanted = _experiment(config)
    runs = [d for d in Path(config.train.runs_dir).glob("*/")
            if (d / "metrics.json").is_file() and (d / "config.yaml").is_file()]
    matching = [d for d in runs if _run_experiment(d) == wanted]
    return max(matching, key=lambda d: (d / "metrics.json").stat().st_mtime, default=None)


def _run_experiment(run_dir: Path) -> dict | None:
    """The experiment a run dir's config.yaml describes, read as this code reads it (keys added
    since it was written at their defaults), or None when this code cannot read it."""
    try:
        return _experiment(stored_config(read_yaml(run_dir / "config.yaml", "run config")))
    except ConfigError:
        return None


def _experiment(config: Config) -> dict:
    """The config as a dict without the keys that do not change what a run trains."""
    raw = config_to_dict(config)
    raw["train"].pop("threads")
    return raw
