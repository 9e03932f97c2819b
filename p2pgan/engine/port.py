"""A node's traced side of the transport: every send, receive and compute becomes an event."""

from __future__ import annotations

from p2pgan.protocol.messages import Message, MessageKey, MessageKind, Phase
from p2pgan.protocol.events import ComputeEvent, NodeStateEvent, TransferEvent
from p2pgan.bus import EventBus
from p2pgan.model.costs import ModelCosts
from p2pgan.protocol.endpoint import Endpoint


class NodePort:
    """Sends and receives for one node at its current (round, step) and reports what it does.

    Receives are remembered until the node's next compute, which lists them as ``consumed``:
    the causal edges the latency engine needs between transfers and computes.
    """

    def __init__(self, node_id: str, endpoint: Endpoint, bus: EventBus, costs: ModelCosts) -> None:
        self.node_id = node_id
        self.round = 0
        self.step = 0
        self._endpoint = endpoint
        self._bus = bus
        self._costs = costs
        self._consumed: list[str] = []

    def at(self, round_: int, step: int) -> None:
        """Where in the schedule the following messages and computes belong."""
        self.round, self.step = round_, step

    def message(self, kind: MessageKind, dst: str, phase: Phase, tensors: dict, meta: dict | None = None) -> Message:
        return Message(kind, self.node_id, dst, self.round, self.step, phase, tensors, meta or {})

    async def send(self, msg: Message) -> None:
        self.state("sending")
        self._bus.publish(TransferEvent(msg.msg_id, msg.src, msg.dst, msg.kind.value, msg.round, msg.step,
                                        msg.phase.value, msg.nbytes))
        await self._endpoint.send(msg)

    async def receive(self, kind: MessageKind, src: str, phase: Phase) -> Message:
        self.state("waiting")
        msg = await self._endpoint.receive(MessageKey(kind, src, self.node_id, self.round, self.step, phase))
        self._consumed.append(msg.msg_id)
        return msg

    def computed(self, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int,
                 flops: float | None = None) -> None:
        """Report a compute; ``flops`` defaults to the blocks' measured per-sample cost x batch."""
        if flops is None:
            flops = self._costs.flops(blocks, direction) * batch if blocks else 0.0
        self._bus.publish(ComputeEvent(self.node_id, self.round, self.step, phase.value, direction, tuple(blocks),
                                       batch, float(flops), tuple(self._consumed)))
        self._consumed.clear()

    def forget_received(self) -> None:
        """Drop receives that feed no compute (the tracer orders round-end loads itself)."""
        self._consumed.clear()

    def state(self, state: str) -> None:
        self._bus.publish(NodeStateEvent(self.node_id, state))
