"""Compressed sparse row (CSR) matrices in numpy: how sparse tables and vectors are stored, by
the training side (a sparse run's weights, parameter bytes) and by serving (sparse stores).

A (rows, cols) matrix with nnz non-zeros is three arrays, each in the smallest unsigned integer
type its values fit (a 64-column table needs one byte per column index, not four):

    data     (nnz,)       the non-zeros, row by row
    indices  (nnz,)       the column of each, uint8 / uint16 / uint32 / uint64 by cols
    indptr   (rows + 1,)  row r holds data[indptr[r]:indptr[r + 1]], typed by nnz

`save_arrays` / `load_arrays` keep a model's weights this way in one safetensors file (a
sparse-trained run's `model.sparse.safetensors`). No torch here: serving reads sparse stores
and sparse model exports with numpy alone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)
CSR_PARTS = ("data", "indices", "indptr")


def index_dtype(bound: int) -> np.dtype:
    """The smallest unsigned integer dtype holding every value in [0, bound]."""
    for dtype in UNSIGNED:
        if bound <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{bound} does not fit 64 bits")


def csr_nbytes(rows: int, cols: int, nnz: int, itemsize: int) -> int:
    """Bytes of a (rows, cols) matrix's CSR arrays with nnz values of `itemsize` bytes."""
    return nnz * (itemsize + index_dtype(max(cols - 1, 0)).itemsize) + \
        (rows + 1) * index_dtype(nnz).itemsize


@dataclass(frozen=True, eq=False)
class Csr:
    """A (rows, cols) matrix as CSR arrays (see the module doc)."""

    shape: tuple[int, int]
    data: np.ndarray  # (nnz,)
    indices: np.ndarray  # (nnz,)
    indptr: np.ndarray  # (rows + 1,)

    def __post_init__(self):
        rows, cols = self.shape
        if self.indptr.shape != (rows + 1,) or self.data.shape != self.indices.shape:
            raise ValueError(f"CSR arrays do not fit shape {self.shape}: indptr "
                             f"{self.indptr.shape}, data {self.data.shape}, indices "
                             f"{self.indices.shape}")
        if len(self.data) and (int(self.indptr[-1]) != len(self.data)
                               or int(self.indices.max()) >= cols
                               or np.any(np.diff(self.indptr.astype(np.int64)) < 0)):
            raise ValueError("CSR arrays are inconsistent (row pointers or column indices "
                             "out of range)")

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> Csr:
        """The CSR form of a 2-D array (its exact zeros dropped)."""
        if dense.ndim != 2:
            raise ValueError(f"CSR needs a 2-D array, got shape {dense.shape}")
        rows, cols = np.nonzero(dense)
        counts = np.bincount(rows, minlength=dense.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype(len(rows)))
        return cls(shape=tuple(dense.shape), data=np.ascontiguousarray(dense[rows, cols]),
                   indices=cols.astype(index_dtype(max(dense.shape[1] - 1, 0))), indptr=indptr)

    def to_dense(self) -> np.ndarray:
        """The (rows, cols) array, zeros filled in."""
        dense = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr.astype(np.int64)))
        dense[rows, self.indices.astype(np.int64)] = self.data
        return dense

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> int:
    """Write named arrays to one safetensors file, each as CSR parts (`<name>.data`,
    `.indices`, `.indptr`; a 1-D array as one row) where that is smaller than the array; the
    write is atomic. Returns the bytes of the arrays as stored."""
    path, tensors, shapes = Path(path), {}, {}
    for name, array in arrays.items():
        matrix = array.reshape(array.shape[0] if array.ndim >= 2 else 1, -1)
        csr = Csr.from_dense(matrix)
        if csr.nbytes < array.nbytes:
            tensors.update({f"{name}.{part}": getattr(csr, part) for part in CSR_PARTS})
            shapes[name] = list(array.shape)
        else:
            tensors[name] = np.array(array, order="C")  # (ascontiguousarray makes 0-D 1-D)
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors.numpy.save_file(tensors, tmp, metadata={"csr_shapes": json.dumps(shapes)})
    os.replace(tmp, path)
    return sum(t.nbytes for t in tensors.values())


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays `save_arrays` wrote, dense again."""
    with safetensors.safe_open(str(path), "np") as f:
        shapes = json.loads((f.metadata() or {}).get("csr_shapes", "{}"))
        stored = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    arrays = {}
    for name, shape in shapes.items():
        rows = shape[0] if len(shape) >= 2 else 1
        parts = {part: stored.pop(f"{name}.{part}") for part in CSR_PARTS}
        matrix = Csr(shape=(rows, math.prod(shape) // max(rows, 1)), **parts).to_dense()
        arrays[name] = matrix.reshape(shape)
    return {**stored, **arrays}
