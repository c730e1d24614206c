"""MLflow tracking: where runs go and what each run records.

The default store is an embedded SQLite file `mlruns.db` in the working directory;
`MLFLOW_TRACKING_URI` (or `tracking.uri` in the config) points at a real server instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

import mlflow
from mlflow.exceptions import MlflowException

from recsys.config import TrackingConfig

logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations on first use


def tracking_uri(config: TrackingConfig) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else `mlruns.db` in the working directory.

    The default is made absolute: MLflow caches one database engine per URI string, so a
    relative one would keep writing to the first working directory's file after a chdir.
    """
    explicit = config.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return explicit or f"sqlite:///{Path('mlruns.db').resolve()}"


class TrackingError(ValueError):
    """The tracking store cannot be reached or used, or has no such run."""


@contextmanager
def start_run(config: TrackingConfig, run_id: str | None = None, name: str | None = None
              ) -> Iterator[mlflow.ActiveRun]:
    """Open a new MLflow run (or reopen `run_id` to resume) for the `with` block. The run ends
    FINISHED, FAILED on an exception, or KILLED when the process is interrupted (Ctrl-C, or a
    SIGTERM after `recsys.runtime.signals.exit_on_sigterm`). A store that cannot be used is a
    TrackingError."""
    uri = tracking_uri(config)
    _check_reachable(uri)
    try:
        mlflow.set_tracking_uri(uri)
        if run_id is None:
            mlflow.set_experiment(config.experiment)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name)
    except MlflowException as err:
        problem = " ".join(str(err).split())[:300]
        raise TrackingError(f"MLflow tracking store {uri!r}: {problem}") from None
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _check_reachable(uri: str, timeout: float = 10.0) -> None:
    """An http(s) store where nothing listens fails here within seconds; MLflow itself retries
    for about four minutes (its retries are meant for rate limits of a live server)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.scheme in getproxies():
        return  # other stores fail fast on their own; through a proxy, only MLflow can tell
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise TrackingError(f"MLflow tracking store {uri!r}: cannot connect ({err})") from None


def log_params(params: dict[str, Any]) -> None:
    """Flatten nested params to dotted keys (MLflow params are flat strings)."""
    flat = _flatten(params)
    mlflow.log_params({k: str(v) for k, v in flat.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    safe = {f"{prefix}{k}".replace("@", "_at_"): float(v) for k, v in metrics.items()}
    mlflow.log_metrics(safe, step=step)


def log_file(path: Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=folder)


_KEY = re.compile(r"[\w\-. :/]+")  # what MLflow accepts in a param name


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(map(_KEY.fullmatch, map(str, value))):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, dict):  # keys MLflow refuses (a pattern, a column name): one value
            flat[name] = json.dumps(value, sort_keys=True)
        else:
            flat[name] = value
    return flat
