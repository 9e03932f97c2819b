"""What every node's :class:`~p2pgan.engine.port.NodePort` would publish, for a whole cohort
executed in one process without a transport.

The latency tracer prices a run from its compute and transfer events: each node's events in
its program order, each compute listing the messages the node received since its previous
compute. This port keeps one such list per node and publishes the same
:class:`ComputeEvent` and :class:`TransferEvent` values (same message ids and payload bytes) a
node engine run publishes, so both runs are priced identically.

Where the cohort computes a stretch of the program in another order than the program's (see
:meth:`CohortPort.in_program_order`), it tags what it reports with program positions and the
port publishes it sorted by them. Where it computes clients on several threads
(:class:`~p2pgan.engine.workers.ClientThreads`), each client's reports are captured on its
thread (:meth:`CohortPort.captured`) and reported again in client order (:meth:`CohortPort.replay`),
so what is published does not depend on which thread finished first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from p2pgan.bus import EventBus
from p2pgan.model.costs import ModelCosts
from p2pgan.protocol.events import ComputeEvent, TransferEvent
from p2pgan.protocol.messages import MessageKey, MessageKind, Phase


class CohortPort:
    def __init__(self, bus: EventBus, costs: ModelCosts) -> None:
        self.round = 0
        self.step = 0
        self.position: tuple[int, ...] = ()
        """Where in the program what is reported now belongs (inside :meth:`in_program_order`)."""
        self._bus = bus
        self._costs = costs
        self._consumed: dict[str, list[str]] = {}
        self._held: list[tuple[tuple[int, ...], int, Callable[[], None]]] | None = None
        self._thread = threading.local()

    def at(self, round_: int, step: int) -> None:
        self.round, self.step = round_, step

    def sent(self, kind: MessageKind, src: str, dst: str, phase: Phase, tensors: Iterable[torch.Tensor] = (),
             nbytes: int | None = None) -> str:
        """A message of ``tensors`` (or of ``nbytes``) left ``src`` for ``dst``; returns its id for
        :meth:`received`."""
        msg_id = str(MessageKey(kind, src, dst, self.round, self.step, phase))
        if nbytes is None:
            nbytes = sum(t.numel() * t.element_size() for t in tensors)
        event = TransferEvent(msg_id, src, dst, kind.value, self.round, self.step, phase.value, nbytes)
        self._report(lambda: self._bus.publish(event))
        return msg_id

    def received(self, node: str, msg_id: str) -> None:
        self._report(lambda: self._consumed.setdefault(node, []).append(msg_id))

    def computed(self, node: str, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int,
                 flops: float | None = None) -> None:
        """As :meth:`NodePort.computed`: ``flops`` defaults to the blocks' per-sample cost x batch."""
        if flops is None:
            flops = self._costs.flops(blocks, direction) * batch if blocks else 0.0
        round_, step = self.round, self.step

        def publish() -> None:
            consumed = tuple(self._consumed.pop(node, ()))
            self._bus.publish(ComputeEvent(node, round_, step, phase.value, direction, tuple(blocks), batch,
                                           float(flops), consumed))
        self._report(publish)

    def forget_received(self, node: str) -> None:
        self._consumed.pop(node, None)

    @contextmanager
    def in_program_order(self) -> Iterator[None]:
        """Hold what is reported meanwhile and publish it sorted by :attr:`position` (then by
        report order): the order the program, and a node engine, would have reported it in."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for _, _, publish in sorted(held, key=lambda entry: entry[:2]):
                publish()

    @contextmanager
    def captured(self) -> Iterator[list[Callable[[], None]]]:
        """Keep what this thread reports meanwhile in the yielded list, for :meth:`replay`."""
        reports: list[Callable[[], None]] = []
        self._thread.captured = reports
        try:
            yield reports
        finally:
            self._thread.captured = None

    def replay(self, reports: Iterable[Callable[[], None]]) -> None:
        """Report what :meth:`captured` kept, as if it were reported now on this thread."""
        for publish in reports:
            self._report(publish)

    def _report(self, publish: Callable[[], None]) -> None:
        captured = getattr(self._thread, "captured", None)
        if captured is not None:
            captured.append(publish)
        elif self._held is None:
            publish()
        else:
            self._held.append((self.position, len(self._held), publish))
