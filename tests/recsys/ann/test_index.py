import faiss
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from recsys.ann.index import (
    build_index,
    exact_search,
    index_report,
    load_index,
    probe_lists,
    recall_at_k,
    sample_rows,
    save_index,
    search,
)
from recsys.cli import main
from serving.store import read_store, write_store

faiss.omp_set_num_threads(1)  # tests share a small machine


def clustered(seed: int, n: int = 5000, d: int = 32, m: int = 200, clusters: int = 50):
    """(n, d) items and (m, d) queries around shared Gaussian centres, unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    items = centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d))
    queries = centres[rng.integers(clusters, size=m)] + rng.normal(size=(m, d))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    items, queries = clustered(seed=0)
    return items, queries, exact_search(items, queries, 100)[1]


def numpy_top_k(items, queries, k):
    scores = queries.astype(np.float64) @ items.astype(np.float64).T  # (m, n)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def test_recall_at_k_by_hand():
    approx = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[1, 2, 9], [7, 8, 4]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(approx, exact, 2) == pytest.approx((1.0 + 0.0) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.5)
    assert recall_at_k(np.array([[3, 2, 1]]), np.array([[1, 2, 3]]), 3) == 1.0  # order-free
    assert recall_at_k(np.array([[-1, -1]]), np.array([[-1, 5]]), 2) == 0.0  # -1 = no result
    with pytest.raises(ValueError, match="k=4"):
        recall_at_k(approx, exact, 4)
    with pytest.raises(ValueError, match="same m"):
        recall_at_k(approx, exact[:1], 2)


def test_flat_equals_exact_search(data):
    items, queries, _ = data
    want_scores, want_rows = numpy_top_k(items, queries, 20)
    for scores, rows in (search(build_index(items, "Flat"), queries, 20),
                         exact_search(items, queries, 20)):
        assert scores.dtype == np.float32 and rows.dtype == np.int64
        assert scores.shape == rows.shape == (200, 20)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("spec", "params", "bound"), [
    ("IVF32,Flat", {"nprobe": 8}, 0.9),  # measured 0.978-0.985 over 3 seeds
    ("HNSW32", {"ef_search": 64}, 0.95),  # measured 0.996-0.999
    ("IVF32,PQ8", {"nprobe": 8}, 0.45),  # measured 0.629-0.676
])
def test_approximate_index_recall_against_exact(data, spec, params, bound):
    items, queries, exact = data
    _, rows = search(build_index(items, spec), queries, 10, **params)
    assert rows.shape == (200, 10)
    assert recall_at_k(rows, exact, 10) >= bound


def test_nprobe_changes_ivf_results(data):
    items, queries, exact = data
    index = build_index(items, "IVF32,Flat")
    one = recall_at_k(search(index, queries, 10, nprobe=1)[1], exact, 10)
    every = recall_at_k(search(index, queries, 10, nprobe=32)[1], exact, 10)
    assert one < 0.95 < 0.99 <= every  # measured 0.84 and 1.0


def test_train_size_limits_the_training_sample(data):
    items, queries, exact = data
    small = build_index(items, "IVF32,Flat", train_size=1000, seed=3)
    again = build_index(items, "IVF32,Flat", train_size=1000, seed=3)
    assert small.ntotal == len(items)  # trained on a sample, but every vector is added
    np.testing.assert_array_equal(search(small, queries, 10, nprobe=4)[1],
                                  search(again, queries, 10, nprobe=4)[1])
    with pytest.raises(ValueError, match="32 inverted lists but only 20 training vectors"):
        build_index(items, "IVF32,Flat", train_size=20)


def test_cosine_ranks_by_cosine_not_inner_product():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(500, 16)) * rng.uniform(0.1, 10, size=(500, 1))  # varied norms
    queries = rng.normal(size=(30, 16)) * 3
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    want_scores, want_rows = numpy_top_k(unit, queries / np.linalg.norm(queries, axis=1,
                                                                          keepdims=True), 10)
    scores, rows = search(build_index(items, "Flat", "cosine"), queries, 10, metric="cosine")
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
    assert np.abs(scores).max() <= 1 + 1e-5
    assert not np.array_equal(exact_search(items, queries, 10, "ip")[1], rows)
    np.testing.assert_array_equal(exact_search(items, queries, 10, "cosine")[1], rows)


def test_search_in_batches_matches_one_batch(data):
    items, queries, _ = data
    index = build_index(items, "HNSW32")
    whole = search(index, queries, 10, ef_search=32)
    batched = search(index, queries, 10, ef_search=32, batch_size=7)
    np.testing.assert_array_equal(whole[1], batched[1])
    np.testing.assert_array_equal(whole[0], batched[0])


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_searching_with_chosen_probes_equals_a_plain_search(data, metric):
    """The export picks each query's IVF lists once, to order queries by them: searching
    with those lists must give exactly what a plain search gives, in any query order."""
    items, queries, _ = data
    index = build_index(items, "IVF64,Flat", metric)
    plain = search(index, queries, 20, nprobe=4, metric=metric)
    lists, distances = probe_lists(index, queries, metric)
    assert lists.shape == distances.shape == (len(queries), 4)
    order = np.argsort(lists[:, 0], kind="stable")
    scores, rows = search(index, queries[order], 20, metric=metric,
                          probes=(lists[order], distances[order]), batch_size=37)
    np.testing.assert_array_equal(rows, plain[1][order])
    np.testing.assert_array_equal(scores, plain[0][order])


@pytest.mark.parametrize("spec", ["Flat", "HNSW32"])
def test_indexes_without_inverted_lists_have_no_probes(data, spec):
    items, queries, _ = data
    assert probe_lists(build_index(items, spec), queries) is None


def test_save_load_round_trip(data, tmp_path):
    items, queries, _ = data
    index = build_index(items, "IVF32,Flat")
    path = save_index(index, tmp_path)
    assert path == tmp_path / "index.faiss"
    save_index(index, tmp_path)  # replaces the file in place
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left
    loaded = load_index(tmp_path, use_gpu=False)
    for want, got in zip(search(index, queries, 10, nprobe=4),
                         search(loaded, queries, 10, nprobe=4), strict=True):
        np.testing.assert_array_equal(want, got)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.faiss")
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a readable faiss index"):
        load_index(tmp_path / "bad.faiss")


def test_bad_input_is_a_clear_error():
    items = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    index = build_index(items)
    cases = [
        (lambda: build_index(np.empty((0, 8), np.float32)), "empty"),
        (lambda: build_index(items[0]), "2-D"),
        (lambda: build_index(np.where(np.arange(8) == 3, np.nan, items)), "row 0 holds NaN"),
        (lambda: build_index(items, "Bogus42"), "faiss rejects index spec 'Bogus42'"),
        (lambda: build_index(items, "IVF64,Flat"), "64 inverted lists"),
        (lambda: build_index(items, metric="l2"), "metric must be one of"),
        (lambda: search(index, items[:, :4], 5), "queries have dim 4, index has 8"),
        (lambda: search(index, items, 51), r"k must be in 1\.\.50"),
        (lambda: search(index, items, 0), r"k must be in 1\.\.50"),
        (lambda: search(index, np.full((2, 8), np.inf), 5), "queries must be finite"),
    ]
    if faiss.get_num_gpus() == 0:
        cases.append((lambda: build_index(items, use_gpu=True), "no GPU"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_index_report_rows(data):
    items, _, _ = data
    queries = sample_rows(items, 100, seed=5)
    assert queries.shape == (100, 32)
    np.testing.assert_array_equal(queries, sample_rows(items, 100, seed=5))
    rows = index_report(items, queries, ["Flat", "IVF32,Flat"], nprobe=2, ef_search=16)
    assert [r["spec"] for r in rows] == ["Flat", "IVF32,Flat"]
    assert list(rows[0]) == ["spec", "build_s", "recall@10", "recall@100", "queries_per_s",
                             "memory_mb"]
    assert rows[0]["recall@10"] == rows[0]["recall@100"] == 1.0
    assert rows[1]["recall@100"] < 1.0
    assert rows[0]["memory_mb"] == pytest.approx(5000 * 32 * 4 / 2**20, rel=0.01)
    assert all(r["queries_per_s"] > 0 and r["build_s"] >= 0 for r in rows)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        index_report(items[:50], queries, ["Flat"])


@pytest.fixture
def store(tmp_path):
    items, _ = clustered(seed=2, n=2000, d=16)
    return write_store(tmp_path / "store", [f"i{i}" for i in range(2000)], items,
                       model="test", run_id="r0", normalized=False)


def test_cli_report_and_save(store, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(["index", "--store", str(store.parent), "--spec", "Flat", "--spec", "IVF16,Flat",
                 "--nprobe", "4", "--queries", "50", "--report", "--save"])
    assert code == 0
    out = capsys.readouterr().out
    assert "IVF16,Flat" in out and "recall@100" in out and "queries_per_s" in out
    saved = load_index(store / "index.faiss", use_gpu=False)
    assert saved.ntotal == 2000 and isinstance(saved, faiss.IndexFlat)  # the first spec
    assert read_store(store.parent).path == store  # the store still verifies

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("index-report").experiment_id])
    assert run.data.params["specs.1"] == "IVF16,Flat"
    history = client.get_metric_history(run.info.run_id, "recall_at_10")
    assert [m.step for m in history] == [0, 1] and history[0].value == 1.0


def test_cli_index_errors(store, capsys):
    assert main(["index", "--store", str(store)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["index", "--store", str(store), "--spec", "Nope", "--save"]) == 2
    assert "Nope" in capsys.readouterr().err
