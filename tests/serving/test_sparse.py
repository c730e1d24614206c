"""CSR arrays (serving.sparse) and stores written in the CSR layout."""

import json

import numpy as np
import pytest

from serving.lookup import EmbeddingStore
from serving.sparse import Csr, csr_nbytes, index_dtype
from serving.store import StoreError, read_store, write_store


def _sparse(count=50, dim=64, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors[rng.random((count, dim)) > density] = 0
    vectors[min(3, count - 1)] = 0  # an all-zero row
    return vectors


def test_index_dtypes_are_the_smallest_that_fit():
    assert index_dtype(255) == np.uint8 and index_dtype(256) == np.uint16
    assert index_dtype(70_000) == np.uint32


def test_csr_round_trips_and_counts_its_bytes():
    dense = _sparse()
    csr = Csr.from_dense(dense)
    np.testing.assert_array_equal(csr.to_dense(), dense)
    nnz = int(np.count_nonzero(dense))
    assert csr.indices.dtype == np.uint8 and len(csr.data) == nnz
    assert csr.nbytes == csr_nbytes(50, 64, nnz, 4) < 0.35 * dense.nbytes


def test_inconsistent_csr_arrays_are_refused():
    csr = Csr.from_dense(_sparse())
    with pytest.raises(ValueError, match="do not fit"):
        Csr(shape=(49, 64), data=csr.data, indices=csr.indices, indptr=csr.indptr)
    with pytest.raises(ValueError, match="inconsistent"):
        Csr(shape=(50, 8), data=csr.data, indices=csr.indices, indptr=csr.indptr)


def test_a_csr_store_holds_only_the_non_zeros_and_reads_back_dense(tmp_path):
    vectors = _sparse()
    ids = [f"i{n}" for n in range(len(vectors))]
    version = write_store(tmp_path, ids, vectors, model="sasrec", run_id="r", normalized=False,
                          layout="csr")
    meta = json.loads((version / "meta.json").read_text())
    assert meta["layout"] == "csr" and not (version / "vectors.npy").exists()
    stored = sum((version / n).stat().st_size for n in meta["sha256"] if n != "ids.parquet")
    assert stored < 0.5 * vectors.nbytes  # with the .npy headers
    data = read_store(tmp_path)
    np.testing.assert_array_equal(data.vectors, vectors)
    assert not data.vectors.flags.writeable
    store = EmbeddingStore(tmp_path)
    found, _ = store.get(["i7"])
    np.testing.assert_array_equal(found[0], vectors[7])
    assert store.nearest(vectors[7], k=1).ids == ["i7"]


def test_a_damaged_csr_file_fails_the_checksum(tmp_path):
    version = write_store(tmp_path, ["a", "b"], _sparse(2), model="m", run_id="r",
                          normalized=False, layout="csr")
    path = version / "vectors.indices.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="sha256"):
        read_store(tmp_path)
    with pytest.raises(StoreError, match="inconsistent"):  # a column past dim, unverified
        read_store(tmp_path, verify=False)
