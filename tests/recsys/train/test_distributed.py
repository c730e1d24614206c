"""Training under torchrun: the two-tower on 2 CPU (gloo) processes against 1, a 2-process
checkpoint resumed in 1 process, a missing shard, a dead or hung rank, and bad requests.

The ranks are started as torchrun starts them (one process each, RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT in the environment) running `tests.recsys.train.distributed_worker`.
Tolerance: 2 ranks match 1 within 1e-4 relative on every epoch's loss and every final metric
(the sums of the gradient exchange run in another order; measured equal to the printed digits).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recsys.config import ConfigError, config_from_dict, config_to_dict
from recsys.runtime.checkpoint import read_checkpoint
from recsys.runtime.sharding import ShardingError
from recsys.train.loop import fit
from tests.conftest import tiny_config
from tests.recsys.train.distributed_worker import FAULT_EXIT, Fault

REPO = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-4
EPOCHS = 4


def _config(root: Path, data: Path, **distributed) -> Path:
    raw = config_to_dict(tiny_config(root, data))
    raw["model"] = {"name": "two_tower", "two_tower": {
        "dim": 16, "hidden": 32, "max_len": 12, "text": [], "dropout": 0.0}}
    raw["train"].update(epochs=EPOCHS, lr=0.01, batch_size=32, loss={"temperature": 0.1})
    raw["distributed"] = {"enabled": True, "timeout_s": 20, **distributed}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, world: int, *args: str) -> list[subprocess.Popen]:
    """`world` ranks of the worker, as torchrun would start them on one host."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.recsys.train.distributed_worker", str(config), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    try:
        return [(p.wait(timeout), p.stdout.read(), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _result(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_checkpoint(run_dir / "checkpoint" / "last")["state"]["history"]]


def _assert_close(a: dict, b: dict) -> None:
    for split in ("valid", "test"):
        assert a[split].keys() == b[split].keys()
        for key in a[split]:
            assert a[split][key] == pytest.approx(b[split][key], rel=TOLERANCE, abs=1e-9), key


@pytest.fixture(scope="module")
def two_ranks(successor_data, tmp_path_factory) -> tuple[Path, dict]:
    """The 2-process run: (its config, rank 0's result)."""
    root = tmp_path_factory.mktemp("two_ranks")
    config = _config(root, successor_data)
    outcomes = _finish(_launch(config, 2))
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    first, second = (_result(out) for _, out, _ in outcomes)
    assert first == second  # every rank returns rank 0's result
    return config, first


@pytest.mark.distributed
def test_two_ranks_match_one_rank_on_the_loss_curve_and_metrics(two_ranks, successor_data,
                                                               tmp_path):
    config, two = two_ranks
    run_dir = Path(two["run_dir"])
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]  # one run dir: rank 0's
    assert len(list((run_dir / "checkpoint" / "last" / "shards").glob("*.distcp"))) == 2
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoint" / "best").is_dir()

    one = fit(config_from_dict(yaml.safe_load(_config(tmp_path, successor_data).read_text())))
    assert len(_losses(run_dir)) == EPOCHS
    assert _losses(run_dir) == pytest.approx(_losses(one.run_dir), rel=TOLERANCE)
    _assert_close(two["metrics"], one.metrics)
    assert two["metrics"]["test"]["ndcg@10"] > 0.3  # it learned the successor pattern
    placed, alone = two["metrics"]["distributed"], one.metrics["distributed"]
    assert placed["world"] == 2 and alone["world"] == 1
    assert sum(placed["table_bytes"]) == alone["table_bytes"][0] > 0  # each byte on one rank
    assert max(placed["table_bytes"]) < alone["table_bytes"][0]


@pytest.mark.distributed
def test_a_two_rank_checkpoint_resumes_in_one_process_and_a_missing_shard_is_refused(
        two_ranks, successor_data, tmp_path):
    _, uninterrupted = two_ranks
    config = _config(tmp_path, successor_data)
    outcomes = _finish(_launch(config, 2, "--fault", "exit", "--at-epoch", "2", "--ranks", "0",
                               "1"))
    assert [code for code, _, _ in outcomes] == [FAULT_EXIT, FAULT_EXIT], outcomes[0][2][-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_checkpoint(run_dir / "checkpoint" / "last")["state"]["epoch"] == 2

    shard = run_dir / "checkpoint" / "last" / "shards" / "__1_0.distcp"
    shard.rename(tmp_path / "away")
    with pytest.raises(ShardingError, match=r"missing \['__1_0.distcp'\]"):
        fit(None, resume=run_dir, hooks=[Fault()])
    (tmp_path / "away").rename(shard)

    resumed = fit(None, resume=run_dir, hooks=[Fault()])  # 1 process: no torchrun environment
    assert len(_losses(run_dir)) == EPOCHS
    assert _losses(run_dir) == pytest.approx(_losses(Path(uninterrupted["run_dir"])),
                                             rel=TOLERANCE)
    _assert_close(resumed.metrics, uninterrupted["metrics"])


@pytest.mark.distributed
@pytest.mark.parametrize("fault, timeout_s", [("exit_mid_epoch", 20), ("hang", 5)])
def test_a_dead_or_hung_rank_stops_the_other_with_a_clear_error(fault, timeout_s,
                                                                successor_data, tmp_path):
    config = _config(tmp_path, successor_data, timeout_s=timeout_s)
    procs = _launch(config, 2, "--fault", fault, "--at-epoch", "1", "--ranks", "1")
    started = time.monotonic()
    try:
        code = procs[0].wait(timeout=180)
        waited = time.monotonic() - started
        err = procs[0].stderr.read()
    finally:
        for p in procs:
            p.kill()
    assert code not in (0, FAULT_EXIT)
    assert "PeerLost" in err and "distributed.timeout_s" in err, err[-2000:]
    assert waited < 120  # start-up and one epoch, plus the timeout for a hung peer


def test_torchrun_ranks_without_distributed_enabled_are_refused(config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="distributed.enabled is false"):
        fit(config)


def _tiny(config, model: dict | None = None, **distributed):
    raw = config_to_dict(config)
    raw["model"] = model or {"name": "two_tower", "two_tower": {
        "dim": 8, "hidden": 16, "max_len": 12, "text": []}}
    raw["train"]["epochs"] = 1
    raw["distributed"] = {"enabled": True, **distributed}
    return config_from_dict(raw)


def test_a_task_that_cannot_split_its_batches_is_refused(config):
    with pytest.raises(ConfigError, match="sasrec task cannot split its batches"):
        fit(_tiny(config, model=config_to_dict(config)["model"]))


@pytest.mark.parametrize("distributed, message", [
    ({"sharding_types": ["row_wise"]}, "row-wise sharding needs reduce_scatter"),
    ({"embedding_optimizer": "adam"}, "has no CPU kernel"),
    ({"memory_per_rank_gb": 1e-7}, "found no placement"),
])
def test_sharding_requests_this_machine_cannot_meet_are_refused(config, distributed, message):
    with pytest.raises(ShardingError, match=message):
        fit(_tiny(config, **distributed))


def test_a_one_process_run_keeps_a_sharded_checkpoint_and_writes_a_plain_best(config):
    result = fit(_tiny(config))
    last, best = (result.run_dir / "checkpoint" / name for name in ("last", "best"))
    assert len(list((last / "shards").glob("*.distcp"))) == 1
    assert (best / "model.safetensors").is_file()  # what export and serving read
    assert not (last / "model.safetensors").exists()
