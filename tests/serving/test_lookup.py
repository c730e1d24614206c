"""EmbeddingStore: get with the unknown-id policies, nearest (exact and faiss), open checks."""

import json

import numpy as np
import pytest

from serving import EmbeddingStore, StoreError, UnknownIdError


def _vectors(seed=0, count=20, dim=8):
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


@pytest.fixture
def store_root(make_store, tmp_path):
    make_store()
    return tmp_path / "store"


def test_get_answers_each_id_in_order_with_duplicates(store_root):
    store = EmbeddingStore(store_root)
    vectors, found = store.get(["i3", "i0", "i3", "i19"])
    np.testing.assert_array_equal(vectors, _vectors()[[3, 0, 3, 19]])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 8)
    assert found.tolist() == [True] * 4
    assert not np.shares_memory(vectors, store.snapshot().matrix)  # a copy, never a view


@pytest.mark.parametrize("n", [1, 2, 100])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_get_of_n_ids_with_and_without_an_unknown_one(make_store, tmp_path, n, dtype):
    make_store(dtype=dtype)
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    rows = np.random.default_rng(n).integers(0, 20, n)
    expected = _vectors().astype(dtype).astype(np.float32)[rows]  # (n, 8)
    vectors, found = store.get([f"i{r}" for r in rows])
    np.testing.assert_array_equal(vectors, expected)
    assert vectors.dtype == np.float32 and found.all() and found.shape == (n,)
    vectors, found = store.get([f"i{r}" for r in rows[:-1]] + ["nope"])
    np.testing.assert_array_equal(vectors[:-1], expected[:-1])
    np.testing.assert_array_equal(vectors[-1], np.zeros(8))
    assert found.tolist() == [True] * (n - 1) + [False]


def test_empty_ids_give_zero_rows_of_dim(store_root):
    vectors, found = EmbeddingStore(store_root).get([])
    assert vectors.shape == (0, 8) and vectors.dtype == np.float32 and found.shape == (0,)


def test_float16_store_answers_float32(make_store, tmp_path):
    make_store(dtype="float16")
    vectors, _ = EmbeddingStore(tmp_path / "store").get(["i1"])
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], _vectors()[1].astype(np.float16).astype(np.float32))


def test_unknown_ids_raise_a_key_error_naming_them(store_root):
    store = EmbeddingStore(store_root)
    with pytest.raises(KeyError, match=r"2 unknown ids .*'nope', 'gone'") as err:
        store.get(["i1", "nope", "gone", "nope"])
    assert isinstance(err.value, UnknownIdError) and err.value.ids == ["nope", "gone"]


def test_unknown_ids_as_zeros_with_a_mask(store_root):
    vectors, found = EmbeddingStore(store_root, unknown="zeros").get(["nope", "i2", "nope"])
    assert found.tolist() == [False, True, False]
    np.testing.assert_array_equal(vectors[[0, 2]], np.zeros((2, 8)))
    np.testing.assert_array_equal(vectors[1], _vectors()[2])


def test_unknown_ids_take_the_fallback_vector(store_root):
    fallback = np.arange(8, dtype=np.float32)
    store = EmbeddingStore(store_root, unknown="fallback", fallback=fallback)
    vectors, found = store.get(["i2", "nope"])
    assert found.tolist() == [True, False]
    np.testing.assert_array_equal(vectors[1], fallback)
    np.testing.assert_array_equal(vectors[0], _vectors()[2])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"unknown": "ignore"}, "unknown must be one of"),
    ({"unknown": "fallback"}, "fallback vector exactly when"),
    ({"fallback": np.zeros(8)}, "fallback vector exactly when"),
    ({"unknown": "fallback", "fallback": [np.nan] * 8}, "finite"),
    ({"metric": "l2"}, "metric must be one of"),
])
def test_bad_options_are_value_errors(store_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingStore(store_root, **kwargs)


def test_a_fallback_of_the_wrong_dim_is_refused(store_root):
    with pytest.raises(StoreError, match="fallback has 3 values .* dim 8"):
        EmbeddingStore(store_root, unknown="fallback", fallback=[0.0, 0.0, 0.0])


def test_ids_are_matched_as_strings_like_the_writer_stored_them(make_store, tmp_path):
    make_store(ids=[str(i) for i in range(20)])
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    vectors, found = store.get([3, np.int64(4), "5", [1]])
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(vectors[:3], _vectors()[[3, 4, 5]])
    vectors, found = store.get(str(i) for i in (1, 2))  # any iterable
    assert found.tolist() == [True, True]
    with pytest.raises(TypeError, match="not one string"):
        store.get("12")


def test_meta_names_model_run_dim_count_and_version(store_root):
    meta = EmbeddingStore(store_root).meta
    assert {k: meta[k] for k in ("model", "run_id", "dim", "count", "dtype")} == {
        "model": "two_tower", "run_id": "run1", "dim": 8, "count": 20, "dtype": "float32"}
    assert meta["version"] == (store_root / "CURRENT").read_text().strip()
    assert meta["search"] == "exact"


def _exact(vectors, q, k):
    scores = vectors @ q
    top = np.argsort(-scores, kind="stable")[:k]
    return [f"i{r}" for r in top], scores[top]


def test_nearest_by_vector_is_exact_inner_product_search(store_root):
    store = EmbeddingStore(store_root)
    q = _vectors(seed=5, count=1)[0]
    hits = store.nearest(q, k=5)
    ids, scores = _exact(_vectors(), q, 5)
    assert hits.ids == ids and hits.version == store.version
    np.testing.assert_allclose(hits.scores, scores, rtol=1e-5)
    assert hits.scores.dtype == np.float32


def test_nearest_by_id_leaves_the_id_and_exclusions_out(store_root):
    store = EmbeddingStore(store_root)
    ids, _ = _exact(_vectors(), _vectors()[3], 20)
    assert store.nearest("i3", k=4).ids == [i for i in ids if i != "i3"][:4]
    assert store.nearest("i3", k=4, exclude_self=False).ids == ids[:4]
    skip = ids[1:3]
    assert store.nearest("i3", k=4, exclude=skip + ["unknown"]).ids == \
        [i for i in ids if i not in ["i3", *skip]][:4]
    assert len(store.nearest("i3", k=20).ids) == 19  # every other vector, none repeated


def test_nearest_cosine_matches_normalised_search(store_root):
    store = EmbeddingStore(store_root, metric="cosine")
    unit = _vectors() / np.linalg.norm(_vectors(), axis=1, keepdims=True)
    q = np.full(8, 3.0, dtype=np.float32)
    ids, scores = _exact(unit, q / np.linalg.norm(q), 6)
    hits = store.nearest(q, k=6)
    assert hits.ids == ids
    np.testing.assert_allclose(hits.scores, scores, rtol=1e-5)
    with pytest.raises(ValueError, match="non-zero"):
        store.nearest(np.zeros(8), k=1)


@pytest.mark.parametrize(("query", "k", "error", "message"), [
    ("i1", 0, ValueError, r"k must be an integer in 1\.\.20"),
    ("i1", -3, ValueError, "k must be"),
    ("i1", 21, ValueError, "k must be"),
    ("i1", 2.0, ValueError, "k must be"),
    ("i1", True, ValueError, "k must be"),
    ([np.nan] + [0.0] * 7, 3, ValueError, "finite"),
    ([np.inf] + [0.0] * 7, 3, ValueError, "finite"),
    ([1e39] + [0.0] * 7, 3, ValueError, "finite in float32"),
    ([3e38] * 8, 3, ValueError, "overflow"),
    ([0.0] * 7, 3, ValueError, r"shape \(8,\)"),
    (["a"] * 8, 3, ValueError, "numbers"),
    ("nope", 3, KeyError, "'nope'"),
])
def test_nearest_bad_queries(store_root, query, k, error, message):
    with pytest.raises(error, match=message):
        EmbeddingStore(store_root).nearest(query, k)


def test_nearest_goes_through_a_saved_faiss_index(make_store):
    faiss = pytest.importorskip("faiss")
    version = make_store()
    index = faiss.IndexHNSWFlat(8, 8, faiss.METRIC_INNER_PRODUCT)
    index.add(_vectors())
    faiss.write_index(index, str(version / "index.faiss"))
    store = EmbeddingStore(version.parent)
    assert store.meta["search"] == "IndexHNSWFlat"
    q = _vectors(seed=7, count=1)[0]
    hits = store.nearest(q, k=5)
    ids, scores = _exact(_vectors(), q, 5)
    assert hits.ids == ids  # tiny HNSW graph: exact
    np.testing.assert_allclose(hits.scores, scores, rtol=1e-5)
    assert "i0" not in store.nearest("i0", k=5).ids


def test_an_index_of_other_vectors_is_refused(make_store):
    faiss = pytest.importorskip("faiss")
    version = make_store()
    index = faiss.IndexFlatIP(8)
    index.add(_vectors(count=10))
    faiss.write_index(index, str(version / "index.faiss"))
    with pytest.raises(StoreError, match="holds 10 vectors .* has 20"):
        EmbeddingStore(version.parent)
    (version / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(StoreError, match="not a readable faiss index"):
        EmbeddingStore(version.parent)


def test_an_ivf_index_that_finds_fewer_than_k_says_so(make_store):
    """faiss pads an IVF answer with -1 when the probed lists hold fewer than k vectors: the
    answer keeps the ones found and says why it is short."""
    faiss = pytest.importorskip("faiss")
    vectors = _vectors(count=200)
    version = make_store(vectors=vectors)
    index = faiss.index_factory(8, "IVF20,Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # 200 points for 20 lists: no warning
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 1  # about 10 vectors in the one list probed
    faiss.write_index(index, str(version / "index.faiss"))
    store = EmbeddingStore(version.parent)
    hits = store.nearest(vectors[0], k=50)
    assert hits.short == "index" and 0 < len(hits.ids) < 50
    assert len(set(hits.ids)) == len(hits.ids) == len(hits.scores)
    assert "i0" in hits.ids  # its own list is the one probed
    rows = [int(i[1:]) for i in hits.ids]
    np.testing.assert_allclose(hits.scores, vectors[rows] @ vectors[0], rtol=1e-5)
    assert (np.diff(hits.scores) <= 0).all()
    index.nprobe = 20  # every list: all 200 are found
    faiss.write_index(index, str(version / "index.faiss"))
    store.refresh()
    full = store.nearest(vectors[0], k=50)
    assert full.short is None and full.ids == _exact(vectors, vectors[0], 50)[0]


def test_an_exact_search_left_short_by_exclusions_says_so(store_root):
    store = EmbeddingStore(store_root)
    assert store.nearest("i3", k=5).short is None
    hits = store.nearest("i3", k=20, exclude=["i4"])
    assert len(hits.ids) == 18 and hits.short == "excluded"


def test_an_index_whose_ids_are_not_rows_of_the_store_is_a_store_error(make_store):
    faiss = pytest.importorskip("faiss")
    version = make_store()
    index = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    index.add_with_ids(_vectors(), np.arange(20) + 15)  # 20 vectors, ids 15..34
    faiss.write_index(index, str(version / "index.faiss"))
    store = EmbeddingStore(version.parent)
    with pytest.raises(StoreError, match="returned row 3[0-4], the store has 20 vectors"):
        store.nearest(_vectors()[19], k=3)


def test_a_truncated_or_mismatched_store_is_refused(make_store):
    version = make_store()
    meta = json.loads((version / "meta.json").read_text())
    (version / "meta.json").write_text(json.dumps({**meta, "count": 19}))
    with pytest.raises(StoreError, match="meta.json says"):
        EmbeddingStore(version, verify=False)
    (version / "meta.json").write_text(json.dumps(meta))
    raw = (version / "vectors.npy").read_bytes()
    (version / "vectors.npy").write_bytes(raw[:-10])
    with pytest.raises(StoreError, match="truncated or modified"):
        EmbeddingStore(version.parent)
    with pytest.raises(StoreError, match=r"vectors.npy is \d+ bytes, its header says"):
        EmbeddingStore(version.parent, verify=False)


def test_a_version_dir_opens_pinned(make_store):
    first = make_store(version="v1")
    make_store(vectors=_vectors(seed=1), version="v2")
    store = EmbeddingStore(first)
    assert store.version == "v1" and store.refresh() is False
    np.testing.assert_array_equal(store.get(["i0"])[0][0], _vectors()[0])


def test_importing_serving_loads_neither_torch_nor_faiss():
    import subprocess
    import sys

    code = ("import serving, serving.lookup, sys; "
            "assert not {'torch', 'faiss'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
