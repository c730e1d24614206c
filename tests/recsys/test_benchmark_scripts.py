"""Benchmark scripts run as `python benchmarks/X.py`, with benchmarks/ first on sys.path, where
benchmarks/serving.py would hide the serving package from any recsys module that imports it."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.config import config_to_dict
from recsys.train.loop import fit

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["retrieval.py", "sparse.py", "recformer.py", "distributed.py"])
def test_the_benchmark_scripts_start(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_sparse_benchmark_trains_its_dense_runs_at_the_dense_baseline(config, tmp_path,
                                                                         monkeypatch):
    spec = importlib.util.spec_from_file_location("sparse_benchmark", BENCHMARKS / "sparse.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    trained = []

    def recording_fit(cfg):
        trained.append((cfg.sparse.enabled, cfg.model.sasrec.dropout))
        return fit(cfg)

    monkeypatch.setattr(benchmark, "fit", recording_fit)
    raw = config_to_dict(config)
    raw["train"].update(epochs=2, patience=2)
    raw["sparse"] = {"params": ["item_emb.weight"], "density": 0.5,
                     "dense_baseline": ["model.sasrec.dropout=0.3"]}
    path = tmp_path / "sparse.yaml"
    path.write_text(yaml.safe_dump(raw))
    summary = benchmark.main(["--config", str(path), "--densities", "0.5",
                              "--set", f"data.raw={config.data.raw}",
                              "--set", f"data.dir={config.data.dir}"])
    assert trained == [(False, 0.3), (False, 0.3), (True, 0.1), (True, 0.1), (True, 0.1)]
    assert summary["dense_baseline"] == ["model.sasrec.dropout=0.3"]
    assert 0 < summary["param_bytes_ratio@0.5"] < 1
