"""Replace a whole directory atomically: build it in a temp dir beside it, then rename.

Temp dirs are named `.<name>.tmp-<pid>@<host>-<random>` (the old copy moved aside while the new
one goes in: `.<name>.old-<pid>@<host>-<random>`). A process killed mid-write cannot remove its
own temp dir; the next writer of the same directory does, once that pid is gone. The pid tells
a dir still being written by another process from a dead one; the host keeps a writer on another
machine sharing the disk (whose pids mean nothing here) from being judged.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = socket.gethostname()


def _owner_tag() -> str:
    return f"{os.getpid()}@{HOST}"


@contextmanager
def replacing(out_dir: Path) -> Iterator[Path]:
    """Yield a new temp dir beside `out_dir`; it replaces `out_dir` when the block succeeds.

    On any error (or KeyboardInterrupt) the temp dir is removed and `out_dir` stays as it was.
    Stale temp dirs of `out_dir` left by killed processes are removed first.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{_owner_tag()}-",
                                dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """rename() is atomic per directory; the old copy is moved aside until the new one is in."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{_owner_tag()}-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(out_dir: Path) -> list[Path]:
    """Remove the temp / old dirs of `out_dir` whose writer (a pid on this host) is dead.

    Dirs of a live pid, of another host, or named otherwise (older versions: no pid) are kept:
    they may still be in use. Returns the removed paths.
    """
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)@(.+)-[^-@]+")
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    for path in sorted(out_dir.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and match[2] == HOST and not _alive(int(match[1])) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists here (a reused pid counts as alive: safe side)."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe on Windows: never judge
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process; an absurd pid is no proof of death either
    return True
