"""Process-wide runtime tuning, applied once at the command line's edge."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
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


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """torch's intra-op threads when ``--threads`` is not given: the cores nobody else is using.

    On a busy machine every extra thread only queues behind the other work (measured on 2 cores
    under load 2-3: 1 thread 13-16 s, 2 passive threads 16-18 s for ``scenarios/quick.yaml``);
    on an idle one all cores pay for the larger models. "Busy" is what the cores do now, sampled
    for a moment from ``/proc/stat``, not the load average: that one still counts, for a minute,
    the run that just ended, and back-to-back runs on an idle machine would get one thread
    (tools/bench_threads.py). ``P2PGAN_THREADS=N`` pins it.
    """
    pinned = os.environ.get("P2PGAN_THREADS", "")
    if pinned.isdigit() and int(pinned) >= 1:
        return int(pinned)
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else (os.cpu_count() or 1))
    if load is None:
        load = busy_cores()
    if load is None:
        load = os.getloadavg()[0]
    return max(1, min(cores, cores - int(load + 0.5)))


def busy_cores(sample_s: float = 0.15, stat: str = "/proc/stat") -> float | None:
    """How many cores other processes keep busy right now (None where ``/proc/stat`` is missing).

    The caller sleeps through the sample, so its own threads are not counted.
    """
    first = _cpu_ticks(stat)
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_ticks(stat)
    if second is None:
        return None
    busy = second[0] - first[0]
    total = second[1] - first[1]
    if total <= 0:
        return None
    return busy / total * second[2]


def _cpu_ticks(stat: str) -> tuple[int, int, int] | None:
    """(busy ticks, all ticks, CPUs) summed over the machine, from the kernel's counters."""
    try:
        with open(stat, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    head = next((line.split() for line in lines if line.startswith("cpu ")), None)
    if head is None or len(head) < 5 or not cpus:
        return None
    ticks = [int(v) for v in head[1:9]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks)
    return total - idle, total, cpus
