"""The cohort's client threads (p2pgan/engine/workers.py): what they run joins the caller's
saved-tensor scope and intra-op threads, reports in client order, and fails as a loop would.
That they change no number is tests/test_cohort.py's."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from p2pgan.bus import EventBus
from p2pgan.engine.cohort_port import CohortPort
from p2pgan.engine.execution import default_client_threads
from p2pgan.engine.workers import ClientThreads
from p2pgan.model.recompute import ReleasableOutputs, normalize_activate
from p2pgan.protocol.messages import MessageKind, Phase

CPU = torch.device("cpu")


def test_threads_follow_the_intra_op_count_and_the_device():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_client_threads(CPU, cores=4) == 4  # one kernel thread each: a thread per core
        assert default_client_threads(torch.device("cuda"), cores=4) == 1  # one stream
        torch.set_num_threads(2)
        assert default_client_threads(CPU, cores=4) == 1  # torch splits each kernel itself
    finally:
        torch.set_num_threads(previous)


def test_reports_come_in_item_order_whoever_finishes_first():
    published: list = []
    bus = EventBus()
    bus.subscribe(published.append)
    port = CohortPort(bus, costs=None)
    threads = ClientThreads(3, port)
    try:
        seen = set()

        def work(i: int) -> None:
            time.sleep(0.02 * (5 - i))  # the last item finishes first
            seen.add(threading.get_ident())
            port.sent(MessageKind.ACTIVATION, f"c{i}", "server", Phase.G_FWD, nbytes=i)

        threads.each(list(range(6)), work)
        assert [e.src for e in published] == [f"c{i}" for i in range(6)]
        assert [e.nbytes for e in published] == list(range(6))
        assert threading.get_ident() not in seen and len(seen) > 1
    finally:
        threads.close()


def test_an_error_is_raised_once_every_item_has_ended():
    threads = ClientThreads(2, CohortPort(EventBus(), costs=None))
    ended = []
    try:
        def work(i: int) -> None:
            if i == 0:
                raise ValueError("client 0 failed")
            time.sleep(0.05)
            ended.append(i)

        with pytest.raises(ValueError, match="client 0 failed"):
            threads.each([0, 1, 2, 3], work)
        assert sorted(ended) == [1, 2, 3]  # nothing still runs on the threads after the raise
    finally:
        threads.close()


def test_work_on_a_thread_joins_the_callers_released_outputs():
    """A BatchNorm output sent to two clients is released after the forward; both clients'
    backwards, on two threads, refill it once and get the gradients of the forward as it was."""
    torch.manual_seed(0)
    norm, act = nn.BatchNorm2d(3), nn.ReLU(inplace=True)
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    weights = [torch.randn(4, 3, 5, 5) for _ in range(2)]

    def grads(release: bool) -> list[torch.Tensor]:
        leaf = x.detach().requires_grad_(True)
        threads = ClientThreads(2, CohortPort(EventBus(), costs=None))
        seen = []
        try:
            with ReleasableOutputs() as scope:
                y = normalize_activate(leaf, norm, act)
                parts = [y[:4], y[4:]]
                outs: dict[int, torch.Tensor] = {}

                def forward(i: int) -> None:
                    seen.append(ReleasableOutputs.active() is scope)
                    outs[i] = (parts[i] * weights[i]).sum()
                threads.each([0, 1], forward)
            if release:
                assert scope.release() > 0
            threads.each([0, 1], lambda i: outs[i].backward(retain_graph=True))
            return [leaf.grad.clone(), *(w.clone() for w in weights)]
        finally:
            threads.close()
            assert seen == [True, True]

    kept, released = grads(release=False), grads(release=True)
    for a, b in zip(kept, released):
        assert torch.equal(a, b)


def test_work_runs_with_the_callers_intra_op_threads_of_the_moment():
    """torch's thread count is per OS thread: a worker made while the caller ran two threads must
    not keep them once the caller runs one (its kernels would split, and the numbers move)."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threads = ClientThreads(2, CohortPort(EventBus(), costs=None))
        counts: list[int] = []
        threads.each([0, 1, 2, 3], lambda i: counts.append(torch.get_num_threads()))
        torch.set_num_threads(1)
        threads.each([0, 1, 2, 3], lambda i: (time.sleep(0.01), counts.append(torch.get_num_threads())))
        assert counts == [2] * 4 + [1] * 4
    finally:
        threads.close()
        torch.set_num_threads(previous)
