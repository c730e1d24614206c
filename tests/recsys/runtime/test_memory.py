"""keep_freed_memory: a freed large block comes back without fresh page faults (glibc)."""

import subprocess
import sys

import pytest

CHURN = """
import resource, sys
from recsys.runtime.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def churn():  # what a training step does to its big tensors: allocate, touch, free
    for _ in range(10):
        block = bytearray(64 << 20)
        block[::4096] = bytes(len(block[::4096]))
        del block
churn()  # warm-up: the first round faults in whatever it keeps
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 10 * (64 << 20) // 4096 // 2  # ~16k fresh 4 KB pages per 64 MB block
    assert kept < default / 20
