"""Clients' independent work on a few threads, with the numbers and reports of a plain loop.

Between two server steps every client runs its own blocks on its own batch: nothing one client
computes reads another's. Where torch runs each kernel on one intra-op thread (small kernels,
:func:`p2pgan.runtime.default_threads`), a loop over clients keeps one core busy; running the
clients on a thread per core keeps them all busy, since torch lets go of the GIL inside its
kernels and autograd runs a CPU backward on the thread that calls it.

The numbers stay those of the loop, whatever the thread count and whichever client finishes
first: every kernel still runs on one intra-op thread, and each client's kernels run in the
same order on the same tensors. What the clients report (compute and transfer events) is
captured per client and reported again in client order
(:meth:`~p2pgan.engine.cohort_port.CohortPort.captured`), and the work joins the caller's
saved-tensor scope (:meth:`~p2pgan.model.recompute.ReleasableOutputs.joined`), which
autograd keeps per thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import TypeVar

import torch

from p2pgan.engine.cohort_port import CohortPort
from p2pgan.model.recompute import ReleasableOutputs

T = TypeVar("T")


class ClientThreads:
    """Runs a piece of work for each of many clients on ``count`` threads (``count`` 1: in a loop
    on the calling thread). :meth:`close` stops the threads."""

    def __init__(self, count: int, port: CohortPort) -> None:
        self.count = max(1, count)
        self._port = port
        self._pool = None
        if self.count > 1:
            self._pool = ThreadPoolExecutor(self.count, "p2pgan-client")

    def each(self, items: Sequence[T], work: Callable[[T], None]) -> None:
        """``work(item)`` for every item; what it reports is published in ``items``' order. The
        first error raised is raised here, once every item's work has ended."""
        if self._pool is None or len(items) < 2:
            for item in items:
                work(item)
            return
        scope = ReleasableOutputs.active()
        grad_enabled = torch.is_grad_enabled()
        threads = torch.get_num_threads()

        def run(item: T) -> list:
            # torch's intra-op thread count is per OS thread (OpenMP's): the caller's, now.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with self._port.captured() as reports, (scope.joined() if scope is not None else nullcontext()), \
                    torch.set_grad_enabled(grad_enabled):
                work(item)
            return reports

        futures = [self._pool.submit(run, item) for item in items]
        wait(futures)
        for future in futures:
            self._port.replay(future.result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
