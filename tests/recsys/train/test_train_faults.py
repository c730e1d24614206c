"""Training under bad input and faults: a diverged model never scores, a changed dataset or a
copied run dir is refused, a failed check leaves no run dir behind."""

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from recsys.cli import main
from recsys.config import config_to_dict
from recsys.recipes import evaluate_run
from recsys.runtime.checkpoint import read_checkpoint
from recsys.tasks.retrieval import NextItemTask
from recsys.train.loop import Diverged, fit


def _with(config, **train):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def _mlflow_runs(config):
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_diverging_run_stops_naming_epoch_and_step_and_mlflow_marks_it_failed(config):
    with pytest.raises(Diverged, match=r"training loss is nan at epoch 1, step \d+ \(batch"):
        fit(_with(config, lr=1e8))
    (run,) = _mlflow_runs(config)
    assert run.info.status == "FAILED"
    (run_dir,) = Path(config.train.runs_dir).iterdir()
    assert not (run_dir / "metrics.json").exists()  # no numbers reported
    assert not (run_dir / "checkpoint" / "best").exists()


def test_skip_step_skips_a_non_finite_step_and_goes_on(config, monkeypatch):
    calls = []
    loss = NextItemTask.forward

    def second_is_nan(self, batch):  # and the fourth has a finite loss, inf gradients
        calls.append(1)
        value = loss(self, batch)
        if len(calls) == 4:
            value.register_hook(lambda grad: grad * float("inf"))
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(NextItemTask, "forward", second_is_nan)
    result = fit(_with(config, epochs=2, on_nan="skip_step"))
    history = read_checkpoint(result.run_dir / "checkpoint" / "last")["state"]["history"]
    assert [r.get("skipped_steps", 0) for r in history] == [2, 0]
    assert result.metrics["test"]["ndcg@10"] > 0
    with pytest.raises(Diverged, match=r"training loss is nan at epoch 1, step 2"):
        calls.clear()
        fit(_with(config, epochs=2))  # the default stops


def test_skip_step_still_stops_when_no_step_is_finite(config):
    with pytest.raises(Diverged, match="not finite at any step of epoch"):
        fit(_with(config, lr=1e8, on_nan="skip_step"))


@pytest.mark.private_data  # it edits events.csv
def test_a_run_refuses_a_dataset_that_changed_under_it(config):
    result = fit(_with(config, epochs=2))
    events = config.data.raw + "/events.csv"
    frame = pd.read_csv(events)
    frame.loc[len(frame)] = ["u_new", "i1", 5_000]  # one more user: every user row moves
    frame.to_csv(events, index=False)
    with pytest.raises(ValueError, match=r"content sha256 [0-9a-f]{64}, which now holds "
                                         r"[0-9a-f]{64}: the dataset changed"):
        evaluate_run(result.run_dir)
    (result.run_dir / "metrics.json").unlink()
    with pytest.raises(ValueError, match="the dataset changed under the run"):
        fit(None, resume=result.run_dir)


def test_a_copied_run_dir_is_refused_on_resume(config):
    result = fit(_with(config, epochs=2))
    copy = result.run_dir.with_name("copy-of-run")
    shutil.copytree(result.run_dir, copy)
    with pytest.raises(ValueError, match=rf"holds run {result.run_id} \(a copied or renamed"):
        fit(None, resume=copy)
    with pytest.raises(ValueError, match="a copied or renamed"):  # exports name it by its dir
        evaluate_run(copy)


def test_cli_user_mistakes_are_one_line_exit_2_and_leave_no_run(config, tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    cases = {
        ("train", "--config", str(path), "--set", "train.batch_size=0"):
            "config key 'train.batch_size': 0 is out of range",
        ("train", "--config", str(path), "--set", "train.lr=[1"): "invalid YAML value",
        ("train", "--config", str(path), "--set", "tracking.uri=foo://bar"):
            "MLflow tracking store 'foo://bar'",
        ("train", "--config", str(path), "--set", "tracking.uri=http://127.0.0.1:9"):
            "'http://127.0.0.1:9': cannot connect",  # in seconds, not after MLflow's retries
        ("train", "--resume", str(tmp_path), "--set", "train.lr=1"):
            "--set does not apply to --resume",
        ("evaluate", "--run", str(tmp_path / "no-such-run")): "no checkpoint at",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() and _mlflow_runs(config) == []
    path.write_text("train: [1,\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--store", str(tmp_path), "--port", "70000"])
    assert exit_.value.code == 2 and "not a port number" in capsys.readouterr().err
