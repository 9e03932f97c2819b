"""Process-wide runtime tuning, applied once at the command line's edge."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping, MutableMapping

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Let glibc's malloc reuse freed activation buffers instead of returning them to the OS.

    Every iteration allocates and frees the same large activations and gradients. With glibc's
    defaults, blocks above the mmap threshold are unmapped on free and mapped (and zero-filled)
    again on the next allocation; split training, which keeps every client's graph alive at
    once, paid 5-15% of an iteration in page faults for it (tools/bench_step.py).

    The price is memory: one heap for every block fragments, the more so the larger the server's
    batches (tools/bench_memory.py, 2-core VM: the cohort at 16 clients, width 1, batch 64 holds
    97 MB per client at its peak and takes 157 MB/client of RSS tuned, 118 MB/client with glibc's
    defaults for +16% CPU time in page faults; s6, 80 clients: 7.8 GB held, 12.4 GB RSS tuned,
    9.8 GB with the defaults for +19%). ``P2PGAN_MALLOC=lean`` keeps glibc's defaults. Returns
    whether the tuning applied (False on a non-glibc libc, or when asked to stay lean).
    """
    if environ.get("P2PGAN_MALLOC", "") == "lean":
        return False
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


def passive_thread_waits(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Make idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    With the default (active) wait policy, torch's intra-op threads spin between the many small
    kernels of a split iteration; on a 2-core machine that is also running anything else they
    steal the cores the work needs: ``scenarios/quick.yaml`` took 52 s with 2 threads against
    15 s with 1 thread on a busy 2-core machine, and 18 s with 2 passive threads.
    It must run before torch (and its OpenMP runtime) is first imported; returns whether it did.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


SMALL_KERNEL_FLOPS = 5e8
"""Below this many FLOPs in a run's largest client-side kernel call, one intra-op thread is
faster than several even on an idle machine: the kernels are too small to split
(tools/bench_threads.py)."""


def default_threads(cores: int | None = None, kernel_flops: float | None = None) -> int:
    """torch's intra-op threads when ``--threads`` is not given.

    It depends on the machine's cores and the run's model only, never on the load at the moment:
    float sums split over a different number of threads round differently, and the same scenario
    and seed must give the same numbers run after run (and after a resume) on one machine. So one
    thread where the largest kernel call is small (``kernel_flops`` < :data:`SMALL_KERNEL_FLOPS`),
    otherwise every core, with passive OpenMP waits (:func:`passive_thread_waits`) so that the
    extra threads sleep rather than spin when the machine is busy. ``P2PGAN_THREADS=N`` pins it.
    """
    pinned = os.environ.get("P2PGAN_THREADS", "")
    if pinned.isdigit() and int(pinned) >= 1:
        return int(pinned)
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else (os.cpu_count() or 1))
    if kernel_flops is not None and kernel_flops < SMALL_KERNEL_FLOPS:
        return 1
    return max(1, cores)
