"""Benchmark scripts run as `python benchmarks/X.py`, with benchmarks/ first on sys.path, where
benchmarks/serving.py would hide the serving package from any recsys module that imports it."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["retrieval.py", "sparse.py", "recformer.py", "distributed.py"])
def test_the_benchmark_scripts_start(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
