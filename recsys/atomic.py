"""Atomic file writes: write a temp file beside the target, then rename over it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> Path:
    """Replace `path` with `text` so readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: Path, doc: Any) -> Path:
    return write_text(path, json.dumps(doc, indent=2) + "\n")
