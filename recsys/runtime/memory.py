"""Let a training process keep the memory it frees, so large tensors reuse it (glibc only).

glibc's malloc hands every block above 32 MB straight to mmap and unmaps it on free. A training
step allocates its big tensors anew each time (a full-softmax step's logits are ~100 MB), so
every step faults in and zeroes fresh pages, much of an epoch spent in the kernel. Serving all
blocks from the heap and never trimming it lets the next step reuse the same pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """From now on, for the whole process: no mmap'ed blocks, no trimming of the heap, one
    arena. Measured through `train.keep_freed_memory` on the quickstart (SASRec on
    ml-latest-small, 2 epochs): 46.7 s -> 30.9 s, peak RSS 1.37 -> 1.88 GB, the same losses.
    False, with nothing changed, without glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))
    return all(mallopt(option, value) == 1 for option, value in settings)


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
