import faiss
import numpy as np
import pytest

from recsys.ann.index import build_index, prepare_queries, probe_lists, search, set_search_params
from recsys.ann.ivf_scan import ListScanner
from tests.recsys.ann.test_index import clustered

faiss.omp_set_num_threads(1)  # tests share a small machine


@pytest.mark.parametrize(("spec", "nprobe", "k", "holes"), [
    ("IVF64,Flat", 1, 10, False),  # one round only
    ("IVF64,Flat", 3, 30, False),  # two rounds
    ("IVF64,Flat", 16, 120, False),  # three rounds
    ("IVF64,Flat", 64, 300, False),  # every list: the exact top k
    ("IVF256,Flat", 2, 200, True),  # fewer candidates than k: rows -1 where faiss has them
])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_the_list_scan_finds_what_faiss_finds(spec, nprobe, k, holes, metric):
    items, queries = clustered(seed=1, n=3000, d=24, m=150)
    index = build_index(items, spec, metric)
    set_search_params(index, nprobe=nprobe)
    lists, distances = probe_lists(index, queries, metric)
    scores, rows = ListScanner.of(index).search(prepare_queries(index, queries, metric), k, lists)
    want_scores, want_rows = search(index, queries, k, metric=metric, probes=(lists, distances))
    assert_same_results(prepare_queries(index, queries, metric), prepare_queries(
        index, items, metric), (scores, rows), (want_scores, want_rows))
    assert (rows == -1).any() == holes


def assert_same_results(queries, items, got, want, tol=1e-5):
    """The same results up to float rounding: where an item differs it ties (within `tol`)
    with the one it replaces, so the exact scores of both lists agree position by position."""
    (scores, rows), (want_scores, want_rows) = got, want
    np.testing.assert_array_equal(rows == -1, want_rows == -1)
    found = rows >= 0
    np.testing.assert_allclose(scores[found], want_scores[found], rtol=tol, atol=tol)
    for query, ours, theirs in zip(queries.astype(np.float64), rows, want_rows, strict=True):
        exact = [np.sort(items[r[r >= 0]].astype(np.float64) @ query) for r in (ours, theirs)]
        np.testing.assert_allclose(*exact, rtol=tol, atol=tol)
    assert (rows == want_rows).mean() > 0.999


def test_a_missing_list_is_skipped():
    """faiss marks a probe it could not fill with -1; the scan skips it as faiss does."""
    items, queries = clustered(seed=2, n=2000, d=16, m=40)
    index = build_index(items, "IVF32,Flat")
    set_search_params(index, nprobe=4)
    lists, distances = probe_lists(index, queries)
    lists[:, 2:] = -1
    want = index.search_preassigned(queries, 30, lists, distances)
    assert_same_results(queries, items, ListScanner(index).search(queries, 30, lists), want)


@pytest.mark.parametrize(("spec", "scans"), [
    ("IVF16,Flat", True), ("Flat", False), ("HNSW16", False), ("IVF16,PQ4", False)])
def test_only_inverted_lists_of_whole_vectors_are_scanned(spec, scans):
    items, _ = clustered(seed=3, n=2000, d=16)
    assert (ListScanner.of(build_index(items, spec)) is not None) == scans
