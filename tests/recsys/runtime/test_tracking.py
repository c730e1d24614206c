import dataclasses
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from recsys.config import TrackingConfig
from recsys.runtime.tracking import log_params, start_run, tracking_uri
from recsys.train.loop import fit


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(TrackingConfig()) == "http://127.0.0.1:5999"
    assert tracking_uri(TrackingConfig(uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_default_store_is_sqlite_in_the_working_directory(config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, name="popularity"),
        tracking=TrackingConfig(experiment="default-store"),
    )
    result = fit(config)
    assert (tmp_path / "mlruns.db").is_file()
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(result.run_id)
    assert run.data.metrics["test_recall_at_10"] == pytest.approx(
        result.metrics["test"]["recall@10"])


def test_a_mapping_whose_keys_mlflow_refuses_is_logged_as_one_value(tmp_path):
    uri = f"sqlite:///{tmp_path / 'params.db'}"
    with start_run(TrackingConfig(experiment="params", uri=uri)) as run:
        log_params({"train": {"lr": 0.1},
                    "sparse": {"relative_density": {"*.embedding_bags.*.weight": 0.2}}})
    params = MlflowClient(uri).get_run(run.info.run_id).data.params
    assert params == {"train.lr": "0.1",
                      "sparse.relative_density": '{"*.embedding_bags.*.weight": 0.2}'}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
                if reply.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_run_is_logged_to_a_real_mlflow_server_over_http(config, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, epochs=2),
        tracking=TrackingConfig(experiment="over-http"),
    )
    result = fit(config)
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(result.metrics["test"]["ndcg@10"])
    assert run.data.params["train.epochs"] == "2"
    artifacts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(result.run_id)}
    assert "metrics.json" in artifacts
