"""Fixtures of the data tests: fixture copies, gzip, failure checks, the real-data folder."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from recsys.data import DataError, prepare

FIXTURES = Path(__file__).parent / "fixtures"
# <repo>/../shared/data holds the real datasets (never committed into the repo)
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def raw_copy(tmp_path):
    """raw_copy('ml-100k') -> a writable copy of tests/data/fixtures/ml-100k."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(FIXTURES / name, tmp_path / "raw" / name))

    return copy


@pytest.fixture
def gzip_in_place():
    """Replace a file by its .gz (the real sources ship gzipped; fixtures stay readable)."""

    def compress(path: Path) -> Path:
        target = path.with_name(path.name + ".gz")
        target.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
        return target

    return compress


@pytest.fixture
def assert_fails_cleanly(tmp_path):
    """prepare() raises a DataError holding every fragment and leaves nothing behind."""

    def check(source: str, raw: Path, *fragments: str, mapping=None) -> str:
        out = tmp_path / "out"
        before = set(tmp_path.iterdir())
        with pytest.raises(DataError) as caught:
            prepare(source, raw, out, mapping)
        message = str(caught.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        assert not out.exists()
        assert set(tmp_path.iterdir()) == before  # no temp dir either
        return message

    return check


@pytest.fixture
def real_data():
    """real_data('ml-100k') -> the shared folder, or skip when this machine lacks it."""

    def folder(name: str) -> Path:
        path = REAL_DATA / name
        if not path.is_dir():
            pytest.skip(f"real dataset not available: {path}")
        return path

    return folder
