"""Process signals: a stopped process unwinds like an interrupted one."""

from __future__ import annotations

import signal


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's or torchrun's stop) into SystemExit(143), so the process
    unwinds as on Ctrl-C: `with` blocks close, and the MLflow run is marked KILLED instead of
    being left RUNNING. Call from the main thread."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
