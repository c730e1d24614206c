import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from recsys.config import config_to_dict
from recsys.recipes import evaluate_run
from recsys.train.loop import fit


def test_sasrec_learns_the_successor_pattern_and_beats_popularity(config):
    result = fit(config)
    popular = fit(dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                         name="popularity")))
    assert result.metrics["test"]["ndcg@10"] > 0.5
    assert result.metrics["test"]["ndcg@10"] > 3 * popular.metrics["test"]["ndcg@10"]
    assert popular.metrics["epochs"] == 0  # nothing to train


def test_run_dir_holds_config_checkpoint_metrics_and_curve(config):
    result = fit(config)
    run = result.run_dir
    for name in ("config.yaml", "metrics.json", "training_curve.png",
                 "checkpoint/best/model.safetensors", "checkpoint/last/optimizer.safetensors",
                 "checkpoint/last/state.json"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text()) == config_to_dict(config)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test"] == result.metrics["test"]
    assert saved["exclude_seen"] is True


def test_mlflow_run_has_params_epoch_metrics_test_metrics_and_artifacts(config):
    result = fit(config)
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.data.params["model.sasrec.dim"] == "32"
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(result.metrics["test"]["ndcg@10"])
    history = client.get_metric_history(result.run_id, "valid_ndcg_at_10")
    assert [m.step for m in history] == list(range(1, config.train.epochs + 1))
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "metrics.json", "training_curve.png"} <= artifacts
    assert run.info.run_name == "sasrec"  # the model's name unless tracking.run_name says


def test_tracking_run_name_names_the_mlflow_run(config):
    config = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking,
                                                                      run_name="variant_b"),
                                 train=dataclasses.replace(config.train, epochs=1))
    result = fit(config)
    assert MlflowClient(config.tracking.uri).get_run(result.run_id).info.run_name == "variant_b"


def test_early_stopping_keeps_the_best_epoch(config):
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=40,
                                                                    patience=2, lr=0.05))
    result = fit(config)
    assert result.metrics["epochs"] < 40
    assert result.metrics["epochs"] - result.metrics["best_epoch"] == 2


def test_evaluate_rebuilds_the_model_from_the_run_dir_alone(config):
    result = fit(config)
    assert evaluate_run(result.run_dir, "test") == result.metrics["test"]
    # the valid metrics are those measured at the best epoch, not evaluated again: the same
    assert evaluate_run(result.run_dir, "valid") == result.metrics["valid"]


def _train_until_epoch(config, tmp_path, epoch: int) -> tuple[subprocess.Popen, Path | None]:
    """`recsys train` of `config` in a subprocess, and its checkpoint's state.json once that
    holds `epoch` or later (None if training ended first or took over 120 s)."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "train", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.glob("*/checkpoint/last/state.json")) if runs.exists() else []
        try:  # a checkpoint being swapped in may vanish or be half-read for a moment
            if found and json.loads(found[0].read_text())["state"]["epoch"] >= epoch:
                return proc, found[0]
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return proc, None


def test_killed_run_resumes_to_the_same_metrics(config, tmp_path):
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=40))
    proc, state_file = _train_until_epoch(config, tmp_path, 3)
    proc.kill()  # SIGKILL; a no-op when the process already ended (the assert below says so)
    proc.wait()
    assert state_file is not None, "training finished or never checkpointed before the kill"
    run_dir = state_file.parents[2]
    killed_at = json.loads(state_file.read_text())["state"]["epoch"]
    assert killed_at < 40 and not (run_dir / "metrics.json").exists()

    resumed = fit(None, resume=run_dir)
    straight = fit(config)
    assert resumed.run_id == run_dir.name
    assert resumed.metrics["test"] == straight.metrics["test"]
    assert resumed.metrics["valid"] == straight.metrics["valid"]
    assert resumed.metrics["epochs"] == straight.metrics["epochs"] == 40


def test_a_stopped_run_is_marked_killed_in_mlflow_and_resumes(config, tmp_path):
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=40))
    proc, state_file = _train_until_epoch(config, tmp_path, 1)
    proc.terminate()  # SIGTERM, as a scheduler or torchrun stops a job
    assert proc.wait(timeout=60) == 143
    assert state_file is not None, "training finished or never checkpointed before the stop"
    run_dir = state_file.parents[2]
    client = MlflowClient(config.tracking.uri)
    assert client.get_run(run_dir.name).info.status == "KILLED"  # not left RUNNING
    assert not (run_dir / "metrics.json").exists()

    resumed = fit(None, resume=run_dir)
    assert resumed.metrics["epochs"] == 40
    assert client.get_run(run_dir.name).info.status == "FINISHED"
