"""Process-wide runtime tuning, applied once at the command line's edge."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed activation buffers instead of returning them to the OS.

    Every iteration allocates and frees the same large activations and gradients. With glibc's
    defaults, blocks above the mmap threshold are unmapped on free and mapped (and zero-filled)
    again on the next allocation; split training, which keeps every client's graph alive at
    once, paid 5-15% of an iteration in page faults for it (tools/bench_step.py). Returns
    whether the tuning applied (False on a non-glibc libc).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # No mmap'd blocks at all (a threshold cannot exceed 32 MiB, below a server batch's
    # activations), and keep up to 1 GiB of freed heap for reuse.
    ok_mmap = mallopt(_M_MMAP_MAX, 0)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**30)
    return bool(ok_mmap and ok_trim)
