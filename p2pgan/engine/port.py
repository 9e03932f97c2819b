"""A node's traced side of the transport: every send, receive and compute becomes an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import torch

from p2pgan.protocol.messages import Message, MessageKey, MessageKind, Phase
from p2pgan.protocol.events import ComputeEvent, NodeStateEvent, TransferEvent
from p2pgan.bus import EventBus
from p2pgan.errors import PeerError
from p2pgan.model.costs import ModelCosts
from p2pgan.protocol.endpoint import Endpoint

PeerLostHook = Callable[[str, str], None]
"""Called with (peer, problem) when a peer is dropped under ``faults.policy: continue``."""


class PeerLost(PeerError):
    """A peer dead or silent past its deadline, under ``faults.policy: continue``: the node drops
    it and goes on (with ``fail``, the default, the transport's :class:`PeerError` ends the run)."""


class _Budget:
    """Seconds of responsive waiting left to one batch of receives (a peer deadline shared by
    every peer the batch waits for, so several dead peers cost one deadline, not one each)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.left = seconds


class NodePort:
    """Sends and receives for one node at its current (round, step) and reports what it does.

    Receives are remembered until the node's next compute, which lists them as ``consumed``:
    the causal edges the latency engine needs between transfers and computes.

    ``peer_deadline_s`` (``faults.policy: continue``): a receive waits at most this long and a
    send gives up after it; the peer is then lost (:class:`PeerLost`) instead of the run failing.
    ``None`` (``policy: fail``): the transport's own deadlines, and its errors end the run.

    ``device``: where the node computes; what it receives is put there (a wire delivers host
    tensors), so the node never sees a tensor elsewhere.
    """

    def __init__(self, node_id: str, endpoint: Endpoint, bus: EventBus, costs: ModelCosts,
                 peer_deadline_s: float | None = None, wanted: Callable[[str], bool] | None = None,
                 device: torch.device | None = None) -> None:
        self.node_id = node_id
        self.round = 0
        self.step = 0
        self._endpoint = endpoint
        self._bus = bus
        self._costs = costs
        self._consumed: list[str] = []
        self._peer_deadline_s = peer_deadline_s
        self._wanted = wanted
        """False for a peer dropped meanwhile (a Ray shard that died): a receive for it gives up at once."""
        self._device = device

    @property
    def shares_sent(self) -> bool:
        """Whether receivers read this node's sent activations and gradients in its own storage
        (:attr:`~p2pgan.protocol.endpoint.Transport.shares_tensors`): then none may be released."""
        return self._endpoint.shares_tensors

    def at(self, round_: int, step: int) -> None:
        """Where in the schedule the following messages and computes belong."""
        self.round, self.step = round_, step

    def message(self, kind: MessageKind, dst: str, phase: Phase, tensors: dict, meta: dict | None = None) -> Message:
        return Message(kind, self.node_id, dst, self.round, self.step, phase, tensors, meta or {})

    async def send(self, msg: Message) -> None:
        self.state("sending")
        self._bus.publish(TransferEvent(msg.msg_id, msg.src, msg.dst, msg.kind.value, msg.round, msg.step,
                                        msg.phase.value, msg.nbytes))
        if self._peer_deadline_s is None:
            await self._endpoint.send(msg)
            return
        try:
            await asyncio.wait_for(self._endpoint.send(msg), self._peer_deadline_s)
        except asyncio.TimeoutError:
            raise PeerLost(msg.dst, f"{msg.kind.value} message not accepted within "
                                    f"{self._peer_deadline_s:g} s") from None
        except PeerLost:
            raise
        except PeerError as exc:
            if exc.peer != msg.dst:
                raise
            raise PeerLost(msg.dst, str(exc).removeprefix(f"peer {msg.dst}: ")) from None

    async def send_each(self, messages: Sequence[Message], lost: PeerLostHook) -> None:
        """Send every message in order; a peer lost meanwhile (``policy: continue``) goes to ``lost``."""
        for msg in messages:
            try:
                await self.send(msg)
            except PeerLost as exc:
                lost(exc.peer, str(exc).removeprefix(f"peer {exc.peer}: "))

    async def receive(self, kind: MessageKind, src: str, phase: Phase, budget: _Budget | None = None) -> Message:
        self.state("waiting")
        key = MessageKey(kind, src, self.node_id, self.round, self.step, phase)
        if self._peer_deadline_s is None:
            msg = await self._endpoint.receive(key)
        else:
            msg = await self._receive_within(key, budget or _Budget(self._peer_deadline_s))
        self._consumed.append(msg.msg_id)
        return msg if self._device is None else msg.on(self._device)

    async def receive_each(self, kind: MessageKind, sources: Sequence[str], phase: Phase,
                           lost: PeerLostHook) -> dict[str, Message]:
        """One message from each of ``sources``, awaited in that order (never arrival order).
        With ``policy: continue`` the batch shares one peer deadline; a peer dead or silent past
        it goes to ``lost`` and is left out of the answer."""
        got: dict[str, Message] = {}
        budget = _Budget(self._peer_deadline_s) if self._peer_deadline_s is not None else None
        for src in sources:
            try:
                got[src] = await self.receive(kind, src, phase, budget)
            except PeerLost as exc:
                lost(src, str(exc).removeprefix(f"peer {src}: "))
        return got

    async def _receive_within(self, key: MessageKey, budget: _Budget) -> Message:
        # As the mailbox's own deadline, only slices of *responsive* waiting count (a blocked
        # event loop is never mistaken for a silent peer); every receive gets one slice at least.
        getting = asyncio.ensure_future(self._endpoint.mailbox.get(key, None))
        slice_s = min(1.0, budget.seconds)
        try:
            while True:
                done, _ = await asyncio.wait({getting}, timeout=slice_s)
                if done:
                    return getting.result()
                if self._wanted is not None and not self._wanted(key.src):
                    raise PeerLost(key.src, "dropped while the server waited for it")
                budget.left -= slice_s
                if budget.left <= 0:
                    raise PeerLost(key.src, f"no {key.kind.value} message for round {key.round} step {key.step} "
                                            f"within {budget.seconds:g} s (faults.peer_deadline_s)")
        finally:
            if not getting.done():
                getting.cancel()
                await asyncio.gather(getting, return_exceptions=True)

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
