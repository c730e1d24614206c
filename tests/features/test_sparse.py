"""CSR arrays (features.sparse)."""

import numpy as np
import pytest

from features.sparse import Csr, csr_nbytes, index_dtype


def sparse_matrix(count=50, dim=64, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors[rng.random((count, dim)) > density] = 0
    vectors[min(3, count - 1)] = 0  # an all-zero row
    return vectors


def test_index_dtypes_are_the_smallest_that_fit():
    assert index_dtype(255) == np.uint8 and index_dtype(256) == np.uint16
    assert index_dtype(70_000) == np.uint32


def test_csr_round_trips_and_counts_its_bytes():
    dense = sparse_matrix()
    csr = Csr.from_dense(dense)
    np.testing.assert_array_equal(csr.to_dense(), dense)
    nnz = int(np.count_nonzero(dense))
    assert csr.indices.dtype == np.uint8 and len(csr.data) == nnz
    assert csr.nbytes == csr_nbytes(50, 64, nnz, 4) < 0.35 * dense.nbytes


def test_inconsistent_csr_arrays_are_refused():
    csr = Csr.from_dense(sparse_matrix())
    with pytest.raises(ValueError, match="do not fit"):
        Csr(shape=(49, 64), data=csr.data, indices=csr.indices, indptr=csr.indptr)
    with pytest.raises(ValueError, match="inconsistent"):
        Csr(shape=(50, 8), data=csr.data, indices=csr.indices, indptr=csr.indptr)
