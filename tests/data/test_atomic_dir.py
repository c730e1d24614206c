"""Temp dirs of killed prepares are removed by the next prepare of the same dir, and only those."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from recsys.data import load_dataset, prepare
from recsys.runtime.atomic_dir import HOST

REPO = Path(__file__).resolve().parents[2]

# a prepare that dies by SIGKILL right after writing its first parquet file
KILLED_PREPARE = """
import os, signal
from recsys.data import prepare, schema
real = schema._write_table
def write_and_die(table, path):
    real(table, path)
    os.kill(os.getpid(), signal.SIGKILL)
schema._write_table = write_and_die
prepare("movielens-1m", {raw!r}, {out!r})
"""


def test_next_prepare_removes_temp_dirs_of_a_killed_prepare(raw_copy, tmp_path):
    raw, out = raw_copy("ml-1m"), tmp_path / "data" / "ml"
    code = textwrap.dedent(KILLED_PREPARE.format(raw=str(raw), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    (stale,) = out.parent.iterdir()  # what a killed prepare leaves
    assert stale.name.startswith(".ml.tmp-") and (stale / "interactions.parquet").is_file()
    assert not out.exists()

    # in use or not ours to judge: a live pid (this one), another host, an old-style name
    kept = [f".ml.tmp-{os.getpid()}@{HOST}-abc", ".ml.tmp-1@elsewhere.example-abc",
            ".ml.tmp-k2j4x9a_", f".other.tmp-999999999@{HOST}-abc"]
    for name in kept:
        (out.parent / name).mkdir()
    prepare("movielens-1m", raw, out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["ml", *kept])
    assert load_dataset(out).info["counts"]["interactions"] == 3


def test_old_copy_left_by_a_killed_swap_is_removed(raw_copy, tmp_path):
    raw, out = raw_copy("ml-1m"), tmp_path / "ml"
    prepare("movielens-1m", raw, out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    old = out.with_name(f".ml.old-{int(dead.stdout)}@{HOST}-1a2b3c4d")
    out.rename(old)  # killed between moving the old copy aside and moving the new one in
    prepare("movielens-1m", raw, out)
    assert [p.name for p in tmp_path.iterdir() if p.name != "raw"] == ["ml"]
