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
    trained, results = [], []

    def recording_fit(cfg):
        trained.append((cfg.sparse.enabled, cfg.model.sasrec.dropout, cfg.train.seed,
                        cfg.sparse.seed))
        results.append(fit(cfg))
        return results[-1]

    monkeypatch.setattr(benchmark, "fit", recording_fit)
    raw = config_to_dict(config)
    raw["train"].update(epochs=2, patience=2)
    raw["sparse"] = {"params": ["item_emb.weight"], "density": 0.5,
                     "dense_baseline": ["model.sasrec.dropout=0.3"]}
    path = tmp_path / "sparse.yaml"
    path.write_text(yaml.safe_dump(raw))
    summary = benchmark.main(["--config", str(path), "--densities", "0.5", "--repeats", "2",
                              "--set", f"data.raw={config.data.raw}",
                              "--set", f"data.dir={config.data.dir}"])
    seed = config.train.seed
    assert trained == [(False, 0.3, seed, 0), (False, 0.3, seed, 0), (True, 0.1, seed, 0),
                       (True, 0.1, seed, 0), (True, 0.1, seed, 0),
                       (False, 0.3, seed + 1, 1), (False, 0.3, seed + 1, 1),
                       (True, 0.1, seed + 1, 1), (True, 0.1, seed + 1, 1),
                       (True, 0.1, seed + 1, 1)]
    assert summary["dense_baseline"] == ["model.sasrec.dropout=0.3"]
    assert 0 < summary["param_bytes_ratio@0.5"] < 1
    ndcg = [r.metrics["test"]["ndcg@10"] for r in results]  # dense, half, dynamic ... per repeat
    mean_dense, mean_dynamic = (ndcg[0] + ndcg[5]) / 2, (ndcg[2] + ndcg[7]) / 2
    assert summary["dense_ndcg@10"] == pytest.approx(mean_dense, abs=1e-5)
    assert summary["ndcg_ratio_vs_dense@0.5"] == pytest.approx(mean_dynamic / mean_dense,
                                                              rel=1e-3)
    assert summary["ndcg_ratio_vs_dense@0.5_by_repeat"] == [
        pytest.approx(ndcg[2] / ndcg[0], rel=1e-3), pytest.approx(ndcg[7] / ndcg[5], rel=1e-3)]
