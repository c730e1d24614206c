import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from serving.lookup import EmbeddingStore
from serving.store import StoreError, _new_version, read_store, switch_current, write_store
from tests.features.test_sparse import sparse_matrix


def _vectors(count=5, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def _write(root, ids=("a", "b", "c", "d", "e"), vectors=None, **kw):
    vectors = _vectors(len(ids)) if vectors is None else vectors
    return write_store(root, list(ids), vectors, model="sasrec", run_id="r1", normalized=False,
                       **kw)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_keeps_ids_vectors_and_meta(tmp_path, dtype):
    vectors = _vectors(5, 4)
    version = _write(tmp_path / "store", vectors=vectors, dtype=dtype, version="v1")
    assert version == tmp_path / "store" / "v1"
    assert (tmp_path / "store" / "CURRENT").read_text().strip() == "v1"

    data = read_store(tmp_path / "store")
    assert data.path == version
    assert list(data.ids) == ["a", "b", "c", "d", "e"]
    assert isinstance(data.vectors, np.memmap) and data.vectors.dtype == np.dtype(dtype)
    assert not data.vectors.flags.writeable
    np.testing.assert_array_equal(data.vectors, vectors.astype(dtype))
    meta = json.loads((version / "meta.json").read_text())
    assert meta == data.meta
    assert {k: meta[k] for k in ("dim", "dtype", "count", "normalized", "model", "run_id",
                                 "version")} == {"dim": 4, "dtype": dtype, "count": 5,
                                                 "normalized": False, "model": "sasrec",
                                                 "run_id": "r1", "version": "v1"}
    assert set(meta["sha256"]) == {"vectors.npy", "ids.parquet"}
    assert meta["created"].endswith("+00:00")
    # a version dir reads the same as its root; no temp files left behind
    assert list(read_store(version).ids) == list(data.ids)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["CURRENT", "v1"]


def test_current_switches_to_the_newest_version_and_old_ones_stay_readable(tmp_path):
    first = _write(tmp_path, vectors=_vectors(seed=1))
    second = _write(tmp_path, vectors=_vectors(seed=2))
    assert first != second and re.fullmatch(r"\d{8}T\d{6}Z(-[0-9a-f]{4})?", first.name)
    assert second.name[:16] >= first.name[:16]
    assert read_store(tmp_path).path == second
    np.testing.assert_array_equal(read_store(tmp_path).vectors, _vectors(seed=2))
    np.testing.assert_array_equal(read_store(first).vectors, _vectors(seed=1))


def test_a_version_not_made_current_goes_live_on_switch_current(tmp_path):
    first = _write(tmp_path, version="v1")
    second = _write(tmp_path, vectors=_vectors(seed=2), version="v2", make_current=False)
    assert read_store(tmp_path).path == first  # readers still get v1
    np.testing.assert_array_equal(read_store(second).vectors, _vectors(seed=2))
    switch_current(tmp_path, "v2")
    assert read_store(tmp_path).path == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v1", "v2"]


@pytest.mark.parametrize(("version", "make"), [("v9", False), ("..", False), (".v2.tmp", True),
                                               ("v2/x", True), ("CURRENT", False)])
def test_switch_current_refuses_a_name_that_is_no_version_of_the_store(tmp_path, version, make):
    _write(tmp_path, version="v1")
    if make:
        (tmp_path / version).mkdir(parents=True)
    with pytest.raises(ValueError, match="version"):
        switch_current(tmp_path, version)
    assert (tmp_path / "CURRENT").read_text() == "v1\n"


def test_a_taken_timestamp_gets_a_unique_suffix(tmp_path):
    now = datetime(2026, 11, 26, 19, 5, 1, tzinfo=UTC)
    assert _new_version(tmp_path, now) == "20261126T190501Z"
    (tmp_path / "20261126T190501Z").mkdir()
    assert re.fullmatch(r"20261126T190501Z-[0-9a-f]{4}", _new_version(tmp_path, now))


def test_an_existing_version_name_is_refused(tmp_path):
    _write(tmp_path, version="v1")
    with pytest.raises(ValueError, match="already exists"):
        _write(tmp_path, version="v1")


def test_one_flipped_byte_in_vectors_fails_the_checksum(tmp_path):
    version = _write(tmp_path)
    path = version / "vectors.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="sha256"):
        read_store(tmp_path)


def test_truncated_vectors_are_an_error_with_or_without_verification(tmp_path):
    version = _write(tmp_path)
    path = version / "vectors.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(StoreError, match="sha256"):
        read_store(tmp_path)
    with pytest.raises(StoreError, match="vectors.npy"):
        read_store(tmp_path, verify=False)


def test_missing_current_or_file_is_a_clear_error(tmp_path):
    version = _write(tmp_path / "store")
    (tmp_path / "store" / "CURRENT").unlink()
    with pytest.raises(StoreError, match="no CURRENT"):
        read_store(tmp_path / "store")
    with pytest.raises(StoreError, match="no such directory"):
        read_store(tmp_path / "nowhere")
    (version / "ids.parquet").unlink()
    with pytest.raises(StoreError, match="ids.parquet is missing"):
        read_store(version)


def test_current_naming_a_missing_version_is_an_error(tmp_path):
    _write(tmp_path)
    (tmp_path / "CURRENT").write_text("gone\n")
    with pytest.raises(StoreError, match="'gone'"):
        read_store(tmp_path)


def test_meta_disagreeing_with_the_vectors_is_an_error(tmp_path):
    version = _write(tmp_path)
    meta = json.loads((version / "meta.json").read_text())
    (version / "meta.json").write_text(json.dumps({**meta, "dim": 5}))
    with pytest.raises(StoreError, match="meta.json says"):
        read_store(tmp_path)


@pytest.mark.parametrize(
    ("ids", "vectors", "dtype", "message"),
    [
        (["a", "b", "a"], _vectors(3), "float32", "unique.*'a'"),
        ([], np.zeros((0, 4), np.float32), "float32", "no ids"),
        (["a", "b"], _vectors(3), "float32", "2 ids but 3 vectors"),
        (["a", "b", "c"], np.zeros(3, np.float32), "float32", "2-D"),
        (["a", "b", "c"], np.array([[0.0], [np.nan], [1.0]]), "float32", "rows \\[1\\].*'b'"),
        (["a", "b"], np.array([[0.0], [np.inf]]), "float32", "finite"),
        (["a", "b"], np.array([[0.0], [1e6]]), "float16", "finite in float16"),
        (["a", "b"], _vectors(2), "float64", "dtype must be"),
    ],
)
def test_bad_input_raises_and_writes_nothing(tmp_path, ids, vectors, dtype, message):
    root = tmp_path / "store"
    with pytest.raises(ValueError, match=message):
        write_store(root, ids, vectors, model="m", run_id="r", normalized=False, dtype=dtype)
    assert not root.exists()


def test_importing_the_store_does_not_import_torch():
    code = "import serving.store, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_csr_store_holds_only_the_non_zeros_and_reads_back_dense(tmp_path):
    vectors = sparse_matrix()
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
    version = write_store(tmp_path, ["a", "b"], sparse_matrix(2), model="m", run_id="r",
                          normalized=False, layout="csr")
    path = version / "vectors.indices.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"^\S*vectors\.indices\.npy does not match its sha256"):
        read_store(tmp_path)
    with pytest.raises(StoreError, match="inconsistent"):  # a column past dim, unverified
        read_store(tmp_path, verify=False)
