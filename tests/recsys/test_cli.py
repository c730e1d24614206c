import json
from pathlib import Path

import pytest
import yaml

from recsys.cli import main
from recsys.config import config_to_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(config, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    return path


def test_prepare_writes_a_dataset_dir(config, tmp_path, capsys):
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(config.data.mapping))
    out = tmp_path / "prepared"
    assert main(["prepare", "--source", "tabular", config.data.raw, "--out", str(out),
                 "--mapping", str(mapping)]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["items"] == 30
    assert '"interactions"' in capsys.readouterr().out


def test_train_then_evaluate_print_the_same_test_metrics(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    run_dir = out.strip().splitlines()[-1].removeprefix("run dir: ")
    trained = json.loads((Path(run_dir) / "metrics.json").read_text())
    assert trained["epochs"] == 2
    assert main(["evaluate", "--run", run_dir]) == 0
    table = capsys.readouterr().out
    assert f"{trained['test']['ndcg@10']:.4f}" in table


def test_pipeline_ends_with_a_summary_table(config_file, capsys):
    assert main(["pipeline", "--config", str(config_file), "--set", "train.epochs=2",
                 "--set", "export.k=10"]) == 0  # the tiny catalogue has 30 items
    out = capsys.readouterr().out
    assert "test metric" in out and "ndcg@10" in out and "mlflow run" in out
    assert "candidates" in out and "index" in out


def test_bad_config_key_is_a_clear_error_not_a_traceback(config_file, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.lrr=1"]) == 2
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err


def test_quickstart_runs_on_the_bundled_sample(tmp_path, monkeypatch, capsys):
    """The README's main job, shortened to one epoch (the full run is `make demo`)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    prepared = tmp_path / "prepared"
    code = main(["pipeline", "--config", str(REPO / "configs" / "quickstart.yaml"),
                 "--set", "train.epochs=1", "--set", f"data.dir={prepared}",
                 "--set", "model.sasrec.max_len=20"])
    assert code == 0
    assert json.loads((prepared / "dataset.json").read_text())["counts"]["users"] == 610
    assert "ndcg@10" in capsys.readouterr().out
    assert (tmp_path / "mlruns.db").is_file()
