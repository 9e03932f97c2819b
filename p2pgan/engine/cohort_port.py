"""What every node's :class:`~p2pgan.engine.port.NodePort` would publish, for a whole cohort
executed in one process without a transport.

The latency tracer prices a run from its compute and transfer events: each node's events in
its program order, each compute listing the messages the node received since its previous
compute. This port keeps one such list per node and publishes the same
:class:`ComputeEvent` and :class:`TransferEvent` values (same message ids and payload bytes) a
node engine run publishes, so both runs are priced identically.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from p2pgan.bus import EventBus
from p2pgan.model.costs import ModelCosts
from p2pgan.protocol.events import ComputeEvent, TransferEvent
from p2pgan.protocol.messages import MessageKey, MessageKind, Phase


class CohortPort:
    def __init__(self, bus: EventBus, costs: ModelCosts) -> None:
        self.round = 0
        self.step = 0
        self._bus = bus
        self._costs = costs
        self._consumed: dict[str, list[str]] = {}

    def at(self, round_: int, step: int) -> None:
        self.round, self.step = round_, step

    def sent(self, kind: MessageKind, src: str, dst: str, phase: Phase, tensors: Iterable[torch.Tensor]) -> str:
        """A message of ``tensors`` left ``src`` for ``dst``; returns its id for :meth:`received`."""
        msg_id = str(MessageKey(kind, src, dst, self.round, self.step, phase))
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._bus.publish(TransferEvent(msg_id, src, dst, kind.value, self.round, self.step, phase.value, nbytes))
        return msg_id

    def received(self, node: str, msg_id: str) -> None:
        self._consumed.setdefault(node, []).append(msg_id)

    def computed(self, node: str, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int,
                 flops: float | None = None) -> None:
        """As :meth:`NodePort.computed`: ``flops`` defaults to the blocks' per-sample cost x batch."""
        if flops is None:
            flops = self._costs.flops(blocks, direction) * batch if blocks else 0.0
        consumed = tuple(self._consumed.pop(node, ()))
        self._bus.publish(ComputeEvent(node, self.round, self.step, phase.value, direction, tuple(blocks),
                                       batch, float(flops), consumed))

    def forget_received(self, node: str) -> None:
        self._consumed.pop(node, None)
