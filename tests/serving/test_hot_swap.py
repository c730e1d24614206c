"""Versions and hot swap: refresh() while threads read; every answer comes from one version."""

import gc
import os
import shutil
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from serving import EmbeddingStore, StoreError
from serving.store import write_store

IDS = [f"i{i}" for i in range(50)]


def _version(root, value, **kw):
    """A version whose every vector component is `value`, so a mixed answer shows."""
    return write_store(root, IDS, np.full((len(IDS), 16), value, dtype=np.float32), model="m",
                       run_id=f"run{value}", normalized=False, **kw)


def test_refresh_moves_to_the_new_current_and_reports_whether_it_changed(tmp_path):
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    assert store.refresh() is False and store.version == "a"
    _version(tmp_path, 2.0, version="b")
    assert store.version == "a"  # nothing moves until refresh
    assert store.refresh() is True and store.version == "b"
    assert store.get(["i0"])[0][0, 0] == 2.0 and store.meta["run_id"] == "run2.0"


def test_every_answer_is_wholly_from_one_version_while_versions_swap(tmp_path):
    """Readers hammer get and nearest while a writer publishes versions 1.0, 2.0, 3.0 ... and
    refreshes; a row or an answer mixing two versions fails."""
    _version(tmp_path, 1.0, version="v1")
    store = EmbeddingStore(tmp_path, verify=False)
    stop, errors, answers, seen = threading.Event(), [], [0], set()

    def read():
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        while not stop.is_set():
            try:
                ids = [IDS[i] for i in rng.integers(0, len(IDS), 64)]
                vectors, found = store.get(ids)
                values = np.unique(vectors)
                assert found.all() and len(values) == 1, f"mixed versions {values}"
                hits = store.nearest(np.ones(16, np.float32), k=5)
                assert np.unique(hits.scores).size == 1, f"mixed scores {hits.scores}"
                assert hits.scores[0] == 16 * float(hits.version[1:])  # matches its version
                seen.add(float(values[0]))
                answers[0] += 1
            except Exception as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)
                return

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    swaps = 0
    deadline = time.monotonic() + 60  # counts, not time, end the loop: a busy CI box is slow
    while (swaps < 10 or answers[0] < 50) and time.monotonic() < deadline and not errors:
        swaps += 1
        _version(tmp_path, float(swaps + 1), version=f"v{swaps + 1}")
        assert store.refresh() is True
        time.sleep(0.01)
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert swaps >= 10 and answers[0] >= 50 and len(seen) >= 3, (swaps, answers, seen)
    print(f"hot swap: {swaps} swaps, {answers[0]} answers, {len(seen)} versions seen")


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_the_old_snapshot_is_freed_after_a_swap(tmp_path):
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    held = store.snapshot()  # a call still in flight on the old version
    old = weakref.ref(held)
    _version(tmp_path, 2.0, version="b")
    store.refresh()
    gc.collect()
    assert old() is not None and held.get(["i1"])[0][0, 0] == 1.0
    del held
    gc.collect()
    assert old() is None and store.get(["i1"])[0][0, 0] == 2.0


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_a_live_version_truncated_on_disk_keeps_serving_its_copy(tmp_path):
    """`truncate -s 100 vectors.npy` under a memory map killed the process with SIGBUS on the
    next lookup; the store holds a copy, refresh says what is wrong and keeps it."""
    version = _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    whole = (version / "vectors.npy").read_bytes()
    os.truncate(version / "vectors.npy", 100)
    with pytest.raises(StoreError, match="vectors.npy"):
        store.refresh()  # checked before any lookup: a mapped store would die below
    assert not _mapped(version / "vectors.npy")
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0
    assert store.nearest(np.ones(16, np.float32), k=3).scores.tolist() == [16.0] * 3
    (version / "vectors.npy").write_bytes(whole)  # put back: the version opens again
    assert store.refresh() is True and store.get(["i0"])[0][0, 0] == 1.0


def test_vectors_rewritten_in_place_change_no_answer(tmp_path):
    """`cp other/vectors.npy store/a/` rewrites the live file in place: the answers stay those
    of the version that was verified, and refresh refuses the file that fails its sha256."""
    version = _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    other = _version(tmp_path / "other", 7.0, version="x")
    shutil.copyfile(other / "vectors.npy", version / "vectors.npy")
    assert store.get(["i0"])[0][0, 0] == 1.0
    with pytest.raises(StoreError, match="sha256"):
        store.refresh()
    assert store.get(["i0"])[0][0, 0] == 1.0


def test_an_index_saved_into_the_live_version_is_used_after_refresh(tmp_path):
    """`recsys index --save` writes index.faiss into the version CURRENT names; the next
    refresh (SIGHUP) reopens the version with it."""
    faiss = pytest.importorskip("faiss")
    version = _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    assert store.meta["search"] == "exact"
    index = faiss.IndexFlatIP(16)
    index.add(np.full((len(IDS), 16), 1.0, np.float32))
    faiss.write_index(index, str(version / "index.faiss"))
    assert store.refresh() is True and store.meta["search"] == "IndexFlatIP"
    assert store.refresh() is False  # nothing changed since


def test_a_version_truncated_before_a_refresh_moves_to_it_is_refused(tmp_path):
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path, verify=False)  # the size check holds without checksums
    new = _version(tmp_path, 2.0, version="b")
    os.truncate(new / "vectors.npy", (new / "vectors.npy").stat().st_size - 4)
    with pytest.raises(StoreError, match=r"vectors.npy is \d+ bytes, its header says"):
        store.refresh()
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0


@pytest.mark.parametrize(("current", "message"), [
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"../other\n", "'../other'"),
    (b".b.tmp\n", "'.b.tmp'"),
    (b"\n", "''"),
])
def test_a_current_that_names_no_version_of_this_store_is_refused(tmp_path, current, message):
    """CURRENT is read on open and on each refresh: a name outside the root, a temp dir or
    bytes that are not text are a StoreError naming CURRENT, the live version stays."""
    root = tmp_path / "store"
    _version(root, 1.0, version="a")
    _version(tmp_path, 2.0, version="other")
    (root / ".b.tmp").mkdir()
    store = EmbeddingStore(root)
    (root / "CURRENT").write_bytes(current)
    with pytest.raises(StoreError, match=message):
        store.refresh()
    with pytest.raises(StoreError, match="CURRENT"):
        EmbeddingStore(root)
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0


def test_a_missing_current_keeps_the_old_version_serving(tmp_path):
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    (tmp_path / "CURRENT").unlink()
    with pytest.raises(StoreError, match="CURRENT"):
        store.refresh()
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0
    (tmp_path / "CURRENT").write_text("nowhere\n")
    with pytest.raises(StoreError, match="'nowhere'"):
        store.refresh()
    with pytest.raises(StoreError, match="no CURRENT"):
        shutil.rmtree(tmp_path / "a")
        (tmp_path / "CURRENT").unlink()
        EmbeddingStore(tmp_path)


def test_a_broken_new_version_is_refused_and_the_old_one_kept(tmp_path):
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    new = _version(tmp_path, 2.0, version="b")
    raw = bytearray((new / "vectors.npy").read_bytes())
    raw[-1] ^= 0xFF
    (new / "vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="sha256"):
        store.refresh()
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0


def test_a_version_dir_replaced_mid_read_keeps_serving_the_old_data(tmp_path):
    """The files are deleted and a new version of the same name written: the open memory map
    still holds the old inode; refresh notices the new checksums and moves on."""
    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    shutil.rmtree(tmp_path / "a")
    assert store.get(["i3"])[0][0, 0] == 1.0
    assert store.nearest("i3", k=2).scores[0] == 16.0
    with pytest.raises(StoreError, match="'a'"):
        store.refresh()  # CURRENT names a dir that is gone for now
    _version(tmp_path / "tmp", 2.0, version="a")
    (tmp_path / "tmp" / "a").rename(tmp_path / "a")
    assert store.refresh() is True
    assert store.get(["i3"])[0][0, 0] == 2.0


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))  # in place: same inode, same size


@pytest.mark.parametrize("broken", ["a", "b"])  # the live version, or a new CURRENT one
def test_a_refused_version_is_not_read_again_until_its_files_change(tmp_path, monkeypatch,
                                                                    broken):
    """Each refresh tick re-read and re-hashed a broken version in full (count x dim allocated)
    while the same error repeated; now it reads it once and again only when a file changes."""
    import serving.lookup

    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    if broken == "b":
        _version(tmp_path, 2.0, version="b")
    vectors = tmp_path / broken / "vectors.npy"
    whole = vectors.read_bytes()
    _flip_last_byte(vectors)
    reads = []
    real = serving.lookup.read_store
    monkeypatch.setattr(serving.lookup, "read_store",
                        lambda path, **kw: reads.append(path) or real(path, **kw))
    for _ in range(5):
        with pytest.raises(StoreError, match=f"{broken}/vectors.npy.*sha256"):
            store.refresh()
    assert len(reads) == 1
    assert store.version == "a" and store.get(["i0"])[0][0, 0] == 1.0
    vectors.write_bytes(whole)  # fixed: new stamps, read again
    assert store.refresh() is True and len(reads) == 2
    assert store.version == broken and store.refresh() is False and len(reads) == 2


def test_a_refused_version_is_read_again_after_chmod(tmp_path, monkeypatch):
    """A file refused as unreadable (EACCES) is fixed by chmod, which changes no size or
    mtime, only the ctime: that counts as a change and the version is read again."""
    import serving.lookup

    _version(tmp_path, 1.0, version="a")
    store = EmbeddingStore(tmp_path)
    vectors = _version(tmp_path, 2.0, version="b") / "vectors.npy"
    _flip_last_byte(vectors)  # refused whoever runs this (root reads any mode)
    reads = []
    real = serving.lookup.read_store
    monkeypatch.setattr(serving.lookup, "read_store",
                        lambda path, **kw: reads.append(path) or real(path, **kw))
    for _ in range(2):
        with pytest.raises(StoreError, match="sha256"):
            store.refresh()
    assert len(reads) == 1
    time.sleep(0.05)  # past the file system's clock tick, so the ctime can differ
    vectors.chmod(0o600)
    with pytest.raises(StoreError, match="sha256"):
        store.refresh()
    assert len(reads) == 2
