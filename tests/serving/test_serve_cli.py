"""`recsys serve`: the real command in a subprocess; SIGHUP moves it to a new version."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from recsys.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(store, log, *args):
    """Start `recsys serve --store store *args` on a free loopback port, its stderr to the file
    `log` (a pipe nobody reads could fill and block it) -> (process, base URL)."""
    port = _free_port()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "serve", "--store", str(store),
             "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=err, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, f"http://127.0.0.1:{port}"


def _wait_for(url, version=None, timeout=30.0, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, log and log.read_text()
        try:
            body = httpx.get(f"{url}/health", timeout=2).json()
            if version is None or body["version"] == version:
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer with version {version} in {timeout}s")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_serve_binds_loopback_answers_and_reloads_on_sighup(make_store, make_candidates,
                                                            tmp_path):
    """SIGHUP moves to the new store version and reopens the rewritten candidates."""
    make_store(version="v1")
    log = tmp_path / "serve.log"
    proc, url = _serve(tmp_path / "store", log, "--candidates", str(make_candidates()))
    try:
        assert _wait_for(url, "v1", proc=proc, log=log)["status"] == "ok"
        got = httpx.post(f"{url}/embeddings", json={"ids": ["i0", "nope"]}).json()
        assert got["found"] == [True, False]
        assert httpx.get(f"{url}/candidates/u1").json()["candidates"][0]["item_id"] == "u1-r1"
        make_store(vectors=np.full((20, 8), 2.0, np.float32), version="v2")
        make_candidates(k=3)  # a new export over the served dir
        time.sleep(0.5)
        assert _wait_for(url)["version"] == "v1"  # no timer: nothing moves by itself
        proc.send_signal(signal.SIGHUP)
        _wait_for(url, "v2", timeout=10, proc=proc, log=log)
        assert httpx.post(f"{url}/embeddings", json={"ids": ["i0"]}).json()["vectors"] == \
            [[2.0] * 8]
        deadline = time.monotonic() + 10
        while len(httpx.get(f"{url}/candidates/u1").json()["candidates"]) != 3:
            assert time.monotonic() < deadline, "candidates were not reopened after SIGHUP"
            time.sleep(0.1)
    finally:
        _stop(proc)
    log = log.read_text()
    assert "serving store" in log and "now serving version v2" in log, log
    assert "now serving candidates" in log, log
    assert "127.0.0.1" in log and "Traceback" not in log
    assert proc.returncode == 0, log  # Ctrl-C is a clean stop


def test_serve_refreshes_on_a_timer(make_store, tmp_path):
    make_store(version="v1")
    log = tmp_path / "serve.log"
    proc, url = _serve(tmp_path / "store", log, "--refresh-seconds", "0.2")
    try:
        _wait_for(url, "v1", proc=proc, log=log)
        make_store(version="v2")
        _wait_for(url, "v2", timeout=10, proc=proc, log=log)  # no signal, no call: the timer did it
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()


def test_serve_survives_its_live_vectors_truncated(make_store, tmp_path):
    """`truncate -s 100 store/v1/vectors.npy` under a running server: with the vectors memory-
    mapped the next lookup killed it (SIGBUS, exit -7, the client got no reply). It answers
    from its copy, and the refresh on its timer logs why once, not on every tick."""
    version = make_store(version="v1")
    log = tmp_path / "serve.log"
    proc, url = _serve(tmp_path / "store", log, "--refresh-seconds", "0.1")
    failed = "refresh failed, still serving version v1"
    try:
        _wait_for(url, "v1", proc=proc, log=log)
        before = httpx.post(f"{url}/embeddings", json={"ids": ["i0", "i19"]}).json()
        os.truncate(version / "vectors.npy", 100)
        _wait_for_log(log, failed, proc)  # a refresh tick has seen it
        time.sleep(1.0)  # about ten more ticks, none of which may log it again
        after = httpx.post(f"{url}/embeddings", json={"ids": ["i0", "i19"]}, timeout=10)
        assert after.status_code == 200 and after.json() == before
        hits = httpx.post(f"{url}/neighbors", json={"id": "i0", "k": 3}, timeout=10).json()
        assert hits["version"] == "v1" and hits["found"] == 3
        assert proc.poll() is None
    finally:
        _stop(proc)
    log = log.read_text()
    assert log.count(failed) == 1, log
    assert "vectors.npy is not a readable .npy file" in log and "Traceback" not in log, log


def test_serve_without_a_store_is_a_clean_error(tmp_path, capsys):
    assert main(["serve", "--store", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "recsys serve: error: not an embedding store" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--store", str(tmp_path / "empty")]) == 2
    assert "no CURRENT" in capsys.readouterr().err


@pytest.mark.parametrize(("damage", "message"), [
    (lambda v: os.truncate(v / "vectors.npy", 100), "vectors.npy is not a readable .npy file"),
    (lambda v: os.truncate(v / "vectors.npy", 300), "vectors.npy is 300 bytes, its header says"),
    (lambda v: (v / "meta.json").unlink(), "v1/meta.json is missing"),
    (lambda v: (v.parent / "CURRENT").write_bytes(b"\xff\xfe"), "CURRENT is not a version name"),
])
def test_serve_of_a_broken_store_is_a_one_line_error(make_store, tmp_path, capsys, damage,
                                                     message):
    """A store broken before the server starts stops `serve` with one line naming the file.
    (A CURRENT naming a dir outside the root, which `serve` used to open and serve: see
    test_hot_swap.py.)"""
    damage(make_store(version="v1"))
    assert main(["serve", "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys serve: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def _wait_for_log(log, text, proc, timeout=30.0):
    """Wait until the server has written `text` to its stderr file `log`."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {timeout}s:\n{log.read_text()}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the server and wait for it; kill it if it hangs."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
