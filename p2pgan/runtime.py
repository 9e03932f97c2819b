"""Process-wide runtime tuning, applied once at the command line's edge."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping, MutableMapping

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

MMAP_THRESHOLD = 32 * 2**20
"""Blocks of this size and more are mapped on their own and returned on free: glibc's largest
threshold, above every per-client activation of the reference model at batch 64 (g3's output is
12.25 MiB) and below a server block's batch over a few clients."""

TRIM_THRESHOLD = 256 * 2**20
"""Freed memory at the heap's top kept for reuse before it goes back to the OS."""


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Let glibc's malloc reuse freed activation buffers, except the server's batched ones.

    Every iteration allocates and frees the same activations and gradients. With glibc's defaults
    the mmap threshold rises with every large block freed, the heap is trimmed at 2x that, and
    blocks move between the heap and their own mappings from one iteration to the next, each
    move paid in page faults (mapped and zero-filled again). Keeping everything in the heap
    (``P2PGAN_MALLOC=fast``: no mmap at all, 1 GiB kept) saves those faults but fragments it: a
    server block's batch (80 clients at width 1: 0.25-1 GiB per tensor) fits no hole that
    per-client tensors left, so the heap grows past what is held (tools/bench_memory.py, 2-core
    VM: s6 cohort 9.1 GB peak against 7.6 GB with this policy).

    The policy: a fixed :data:`MMAP_THRESHOLD` (32 MiB, so the threshold no longer drifts) maps
    exactly the server's batched blocks on their own, returned when freed; everything per client
    reuses the heap, of which :data:`TRIM_THRESHOLD` stays at the top. ``P2PGAN_MALLOC=lean``
    keeps glibc's defaults; ``fast`` the all-heap setting above. Returns whether a tuning applied
    (False on a non-glibc libc, or when asked to stay lean).
    """
    mode = environ.get("P2PGAN_MALLOC", "")
    if mode == "lean":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if mode == "fast":
        return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**30))
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _mallopt():
    """glibc's ``mallopt``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt


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
    cores = cores if cores is not None else available_cores()
    if kernel_flops is not None and kernel_flops < SMALL_KERNEL_FLOPS:
        return 1
    return max(1, cores)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
