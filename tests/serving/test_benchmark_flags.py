"""Every benchmark takes the common `--data-root DIR` (DESIGN.md, "Benchmarks")."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "ArgumentParser(" in p.read_text())


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_script_declares_data_root(script):
    # read, not run: most scripts train on a real dataset before they print anything
    assert re.search(r"add_argument\(\s*\"--data-root\"", script.read_text()), script.name


def test_the_serving_benchmark_runs_with_data_root_on_its_synthetic_store(tmp_path, capsys):
    serving_bench = _load(BENCHMARKS / "serving.py")
    result = serving_bench.main(["--data-root", str(tmp_path / "unused"), "--items", "50",
                                 "--dim", "4", "--calls", "5", "--nearest-calls", "3",
                                 "--connections"])
    assert result["items"] == 50 and result["dim"] == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
