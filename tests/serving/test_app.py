"""The HTTP app, served by a real uvicorn on a loopback port and spoken to over HTTP."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving import EmbeddingStore
from serving.app import Limits, Refresher, create_app
from serving.candidates import CandidateLookup

LIMITS = Limits(max_ids=50, max_k=10, max_dim=64, max_body_bytes=4096)
README = Path(__file__).parents[2] / "README.md"


def _vectors(seed=0):
    return np.random.default_rng(seed).normal(size=(20, 8)).astype(np.float32)


@pytest.fixture
def served(make_store, make_candidates, run_server, tmp_path):
    """(client, store) for an app over a 20 x 8 store and 7 users' candidates."""
    make_store()
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    app = create_app(store, CandidateLookup(make_candidates()), LIMITS)
    with httpx.Client(base_url=run_server(app), timeout=10) as client:
        yield client, store


def assert_ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["message"], body
    assert "Traceback" not in response.text
    return body


def test_health_meta_and_openapi(served):
    client, store = served
    assert assert_ok(client.get("/health")) == {"status": "ok", "version": store.version}
    meta = assert_ok(client.get("/meta"))
    assert {k: meta[k] for k in ("model", "run_id", "dim", "count", "version", "search")} == {
        "model": "two_tower", "run_id": "run1", "dim": 8, "count": 20,
        "version": store.version, "search": "exact"}
    assert meta["limits"]["max_ids"] == 50 and meta["candidates"]["users"] == 7
    schema = assert_ok(client.get("/openapi.json"))
    assert {"/health", "/meta", "/embeddings", "/neighbors", "/candidates/{user_id}"} <= \
        set(schema["paths"])
    ids = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]["ids"]
    assert ids["maxItems"] == 50  # the limits are in the schema


def test_embeddings_answer_duplicates_unknowns_and_empty_lists(served):
    client, store = served
    body = assert_ok(client.post("/embeddings", json={"ids": ["i3", "nope", "i3"]}))
    assert body["version"] == store.version and body["dim"] == 8
    assert body["found"] == [True, False, True]
    vectors = np.array(body["vectors"], dtype=np.float32)
    np.testing.assert_array_equal(vectors[[0, 2]], _vectors()[[3, 3]])
    np.testing.assert_array_equal(vectors[1], np.zeros(8))
    assert assert_ok(client.post("/embeddings", json={"ids": []})) == {
        "version": store.version, "dim": 8, "vectors": [], "found": []}


@pytest.mark.parametrize("body", [
    {"ids": [1, 2]}, {"ids": "i1"}, {"ids": [None]}, {"ids": [["i1"]]}, {}, {"ids": ["i1"], "x": 1},
    [], "ids", None,
])
def test_embeddings_wrong_types_are_422(served, body):
    assert_error(served[0].post("/embeddings", json=body), 422, "invalid_request")


def test_malformed_json_is_422(served):
    response = served[0].post("/embeddings", content=b'{"ids": [',
                              headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_too_many_ids_names_the_limit(served):
    body = assert_error(served[0].post("/embeddings", json={"ids": ["i1"] * 51}), 422,
                  "limit_exceeded")
    assert body["limit"] == "max_ids" and body["max"] == 50 and "max_ids" in body["message"]


def test_oversized_bodies_are_413_naming_the_limit(served):
    client, _ = served
    big = json.dumps({"ids": ["x" * 100] * 45}).encode()  # under max_ids, over 4096 bytes
    body = assert_error(client.post("/embeddings", content=big,
                              headers={"content-type": "application/json"}), 413,
                  "limit_exceeded")
    assert body["limit"] == "max_body_bytes" and body["max"] == 4096

    def chunks():  # no Content-Length: the limit is counted as the body streams
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    streamed = client.post("/embeddings", content=chunks(),
                           headers={"content-type": "application/json"})
    assert assert_error(streamed, 413, "limit_exceeded")["limit"] == "max_body_bytes"
    assert assert_ok(client.get("/health"))  # the server is still fine


def test_neighbors_by_id_and_by_vector(served):
    client, store = served
    by_id = assert_ok(client.post("/neighbors", json={"id": "i3", "k": 4, "exclude": ["i5", "zz"]}))
    expected = store.nearest("i3", k=4, exclude=["i5"])
    assert by_id["ids"] == expected.ids and "i3" not in by_id["ids"] and "i5" not in by_id["ids"]
    np.testing.assert_allclose(by_id["scores"], expected.scores, rtol=1e-6)
    q = _vectors(seed=9)[0]
    by_vector = assert_ok(client.post("/neighbors", json={"vector": q.tolist(), "k": 3}))
    assert by_vector["ids"] == store.nearest(q, k=3).ids
    assert len(assert_ok(client.post("/neighbors", json={"id": "i1"}))["ids"]) == 10  # default k
    assert by_id["found"] == 4 and by_id["short"] is None


def test_neighbors_say_when_fewer_than_k_came_back(served, make_store, tmp_path):
    """An IVF index whose probed lists hold fewer than k vectors returns -1 ids in faiss: the
    answer says how many were found and why, rather than padding or staying silent."""
    faiss = pytest.importorskip("faiss")
    client, store = served
    body = assert_ok(client.post("/neighbors", json={"id": "i1", "k": 10,
                                                     "exclude": [f"i{n}" for n in range(2, 13)]}))
    assert (body["found"], body["short"], len(body["ids"])) == (8, "excluded", 8)
    vectors = _vectors()
    index = faiss.index_factory(8, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    index.train(vectors)
    index.add(vectors)  # 20 vectors in 4 lists; one list probed holds fewer than 10
    assert index.nprobe == 1 and max(index.invlists.list_size(n) for n in range(4)) < 10
    faiss.write_index(index, str(tmp_path / "store" / store.version / "index.faiss"))
    assert store.refresh() is True
    body = assert_ok(client.post("/neighbors", json={"vector": vectors[0].tolist(), "k": 10}))
    assert body["short"] == "index" and body["found"] == len(body["ids"]) == len(body["scores"])
    assert 0 < body["found"] < 10


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_sent_as_another_type_is_a_415_saying_so(served, content_type):
    """`curl -d '{...}'` sends application/x-www-form-urlencoded: FastAPI does not parse it."""
    response = served[0].post("/neighbors", content=b'{"id": "i1", "k": 3}',
                              headers={"content-type": content_type})
    body = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in body["message"] and content_type in \
        body["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_examples_work_as_written(make_store, make_candidates, run_server,
                                                  tmp_path):
    """Each `curl -s localhost:8000/...` line of README.md, run by bash against a live server
    on a free port (the one change to the line: that port)."""
    lines = [line for line in README.read_text().splitlines()
             if line.startswith("curl -s ") and "localhost:8000/" in line]
    make_store()
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    url = run_server(create_app(store, CandidateLookup(make_candidates(users=43))))
    answers = {}
    for line in lines:
        command = line.replace("localhost:8000", url.removeprefix("http://"))
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, (line, done.stderr)
        path = line.split("localhost:8000/")[1].split("/")[0].split("?")[0].split()[0]
        answers[path] = json.loads(done.stdout)
        assert "error" not in answers[path], (line, answers[path])
    assert set(answers) == {"embeddings", "neighbors", "candidates"}, lines
    assert answers["embeddings"]["found"] == [True, True]
    assert len(answers["neighbors"]["ids"]) == 10 and "i1" not in answers["neighbors"]["ids"]
    assert answers["candidates"]["user_id"] == "u42"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"id": "nope", "k": 3}, 404, "unknown_id"),
    ({"id": "i1", "k": 0}, 422, "invalid_request"),
    ({"id": "i1", "k": -5}, 422, "invalid_request"),
    ({"id": "i1", "k": 11}, 422, "limit_exceeded"),
    ({"id": "i1", "k": 10**30}, 422, "limit_exceeded"),
    ({"id": "i1", "k": "many"}, 422, "invalid_request"),
    ({"id": "i1", "k": 2.5}, 422, "invalid_request"),
    ({"vector": ["NaN"] * 8, "k": 3}, 422, "invalid_request"),
    ({"vector": ["Infinity"] * 8, "k": 3}, 422, "invalid_request"),
    ({"vector": [1e300] * 8, "k": 3}, 422, "invalid_request"),  # inf in float32
    ({"vector": [3e38] * 8, "k": 3}, 422, "invalid_request"),  # scores overflow
    ({"vector": [1.0] * 7, "k": 3}, 422, "invalid_request"),  # wrong dim
    ({"vector": [], "k": 3}, 422, "invalid_request"),
    ({"vector": [1.0] * 65, "k": 3}, 422, "limit_exceeded"),
    ({"id": "i1", "vector": [1.0] * 8}, 422, "invalid_request"),
    ({"k": 3}, 422, "invalid_request"),
    ({"id": 5}, 422, "invalid_request"),
    ({"id": "i1", "exclude": ["i2"] * 51}, 422, "limit_exceeded"),
])
def test_bad_neighbor_queries_are_clean_4xx(served, body, status, code):
    assert_error(served[0].post("/neighbors", json=body), status, code)


@pytest.mark.parametrize("raw", [b'{"vector": [NaN, 1, 1, 1, 1, 1, 1, 1]}',
                                 b'{"vector": [1e400, 1, 1, 1, 1, 1, 1, 1]}',
                                 b'{"vector": [-Infinity, 1, 1, 1, 1, 1, 1, 1]}'])
def test_non_finite_json_numbers_are_422(served, raw):
    response = served[0].post("/neighbors", content=raw,
                              headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_candidates_of_a_user(served):
    client, _ = served
    body = assert_ok(client.get("/candidates/u4", params={"k": 2}))
    assert body == {"user_id": "u4", "run_id": "run1", "candidates": [
        {"rank": 1, "item_id": "u4-r1", "score": 1.0, "stage": "retrieval"},
        {"rank": 2, "item_id": "u4-r2", "score": 0.5, "stage": "retrieval"}]}
    assert len(assert_ok(client.get("/candidates/u4"))["candidates"]) == 5
    assert assert_error(client.get("/candidates/nobody"), 404, "unknown_id")["ids"] == ["nobody"]
    assert assert_error(client.get("/candidates/u4", params={"k": 11}), 422,
                  "limit_exceeded")["limit"] == "max_k"
    assert_error(client.get("/candidates/u4", params={"k": "x"}), 422, "invalid_request")


def test_candidates_without_a_dir_and_unknown_routes(make_store, run_server, tmp_path):
    make_store()
    url = run_server(create_app(EmbeddingStore(tmp_path / "store", unknown="zeros")))
    with httpx.Client(base_url=url) as client:
        assert_error(client.get("/candidates/u1"), 404, "not_configured")
        assert_error(client.get("/nowhere"), 404, "not_found")
        assert assert_error(client.put("/embeddings"), 405, "method_not_allowed")
        assert assert_ok(client.get("/meta"))["candidates"] is None


def test_a_crash_is_a_json_500_without_a_stack_trace(make_store, run_server, tmp_path,
                                                     monkeypatch):
    make_store()
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    url = run_server(create_app(store))

    def broken():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "snapshot", broken)
    with httpx.Client(base_url=url) as client:
        body = assert_error(client.post("/embeddings", json={"ids": ["i1"]}), 500, "internal_error")
        assert "secret" not in json.dumps(body)


def test_a_new_version_is_served_after_refresh_and_kept_without_current(served, make_store,
                                                                    tmp_path):
    client, store = served
    old = store.version
    make_store(vectors=np.full((20, 8), 2.0, np.float32), version="v2")
    assert assert_ok(client.get("/health"))["version"] == old  # not before a refresh
    refresher = Refresher(store, every=0.05)
    refresher.start()
    try:
        for _ in range(200):
            if assert_ok(client.get("/health"))["version"] == "v2":
                break
            refresher.trigger()
        body = assert_ok(client.post("/embeddings", json={"ids": ["i0"]}))
        assert body["version"] == "v2" and body["vectors"] == [[2.0] * 8]
        (tmp_path / "store" / "CURRENT").unlink()  # a missing CURRENT: keep serving v2
        refresher.trigger()
        assert assert_ok(client.post("/embeddings", json={"ids": ["i0"]}))["version"] == "v2"
    finally:
        refresher.stop()
        refresher.join(timeout=5)
    assert not refresher.is_alive()


def test_candidates_follow_a_refresh_when_their_manifest_changed(make_store, make_candidates,
                                                                 run_server, tmp_path):
    make_store()
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    live = tmp_path / "live"
    live.symlink_to(make_candidates(users=7, k=5, out=tmp_path / "a"))
    candidates = CandidateLookup(live)
    url = run_server(create_app(store, candidates, LIMITS))
    (tmp_path / "link").symlink_to(make_candidates(users=9, k=3, out=tmp_path / "b"))
    (tmp_path / "link").replace(live)  # a new export switched in, the store unchanged
    refresher = Refresher(store, every=None, candidates=candidates)
    refresher.start()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert len(assert_ok(client.get("/candidates/u1"))["candidates"]) == 5  # not yet
            refresher.trigger()
            for _ in range(200):
                rows = assert_ok(client.get("/candidates/u1"))["candidates"]  # never an error
                if len(rows) == 3:
                    break
                time.sleep(0.02)
            assert [r["item_id"] for r in rows] == ["u1-r1", "u1-r2", "u1-r3"]
            assert assert_ok(client.get("/candidates/u8"))["candidates"][0]["item_id"] == "u8-r1"
            assert assert_ok(client.get("/meta"))["candidates"]["users"] == 9
    finally:
        refresher.stop()
        refresher.join(timeout=5)
