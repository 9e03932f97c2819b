"""The transport interface every node talks through.

A transport delivers :class:`~p2pgan.engine.messages.Message` objects between node ids. Nodes
never see each other; they hold an :class:`Endpoint` for their own id and ``send`` / ``receive``
through it. Receiving is by :class:`MessageKey`, not arrival order, so results do not depend on
which peer happened to be faster.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from p2pgan.protocol.messages import Message, MessageKey
from p2pgan.errors import PeerError

TransportTap = Callable[[Message], None]
"""Called with every message a transport accepts for delivery (audits, byte counters)."""


class Mailbox:
    """Messages delivered to one node, claimable by key in any order."""

    def __init__(self) -> None:
        self._ready: dict[MessageKey, Message] = {}
        self._waiting: dict[MessageKey, asyncio.Future[Message]] = {}
        self._failure: BaseException | None = None

    def put(self, msg: Message) -> bool:
        """Deliver ``msg``. Returns False for a duplicate (already delivered or claimed)."""
        key = msg.key
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
            return True
        if key in self._ready:
            return False
        self._ready[key] = msg
        return True

    def fail(self, error: BaseException) -> None:
        """Wake every waiter with ``error`` (a peer died, the run is aborting)."""
        self._failure = error
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)
                # Marked as seen: a waiter whose node is cancelled before it wakes (the run is
                # aborting) must not have asyncio log the error again, with its traceback, at exit.
                waiter.exception()
        self._waiting.clear()

    async def get(self, key: MessageKey, timeout: float | None = None) -> Message:
        if self._failure is not None:
            raise self._failure
        msg = self._ready.pop(key, None)
        if msg is not None:
            return msg
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[key] = waiter
        try:
            if timeout is None:
                return await waiter
            # The deadline counts slices of *responsive* waiting: if this process's event loop was
            # blocked (a long compute, a slow observer), a slice still counts only its own length,
            # so a local stall is never mistaken for a silent peer. asyncio.wait also never
            # cancels the waiter, so a delivery racing with a slice's end is not lost.
            waited, slice_s = 0.0, min(1.0, timeout)
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=slice_s)
                if done:
                    return waiter.result()
                waited += slice_s
                if waited >= timeout:
                    raise PeerError(key.src, f"no {key.kind.value} message for {key} within {timeout:g} s")
        finally:
            self._waiting.pop(key, None)


class Endpoint:
    """One node's handle on a transport."""

    def __init__(self, node_id: str, transport: "Transport", mailbox: Mailbox) -> None:
        self.node_id = node_id
        self._transport = transport
        self.mailbox = mailbox

    async def send(self, msg: Message) -> None:
        if msg.src != self.node_id:
            raise ValueError(f"endpoint {self.node_id} cannot send as {msg.src}")
        await self._transport.send(msg)

    @property
    def shares_tensors(self) -> bool:
        """See :attr:`Transport.shares_tensors`."""
        return self._transport.shares_tensors

    async def receive(self, key: MessageKey) -> Message:
        if key.dst != self.node_id:
            raise ValueError(f"endpoint {self.node_id} cannot receive for {key.dst}")
        return await self.mailbox.get(key, self._transport.receive_timeout_s)


class Transport(ABC):
    """Delivers messages between nodes. Subclasses implement :meth:`_deliver`."""

    name: ClassVar[str]
    receive_timeout_s: float | None = None
    shares_tensors: bool = False
    """Whether a receiver gets the sender's storage of activations and gradients (in process)
    instead of copies: a sender must then neither free nor overwrite what it sent, since the
    receiver reads it on (a wire's copy leaves the sender free to)."""

    def __init__(self) -> None:
        self._taps: list[TransportTap] = []
        self._mailboxes: dict[str, Mailbox] = {}

    def add_tap(self, tap: TransportTap) -> None:
        self._taps.append(tap)

    async def open(self, local_node_ids: Sequence[str]) -> dict[str, Endpoint]:
        """Create endpoints for the nodes hosted by this process."""
        endpoints = {}
        for node_id in local_node_ids:
            mailbox = self._mailboxes.setdefault(node_id, Mailbox())
            endpoints[node_id] = Endpoint(node_id, self, mailbox)
        await self._start(list(local_node_ids))
        return endpoints

    async def _start(self, local_node_ids: list[str]) -> None:
        """Hook for transports that must start servers or connect to peers."""

    async def close(self) -> None:
        """Release sockets, sessions and servers."""

    async def send(self, msg: Message) -> None:
        for tap in self._taps:
            tap(msg)
        await self._deliver(msg)

    @abstractmethod
    async def _deliver(self, msg: Message) -> None:
        """Get ``msg`` into the destination node's mailbox (possibly in another process)."""

    def fail_all(self, error: BaseException) -> None:
        """Abort every local waiter, e.g. when a node crashed."""
        for mailbox in self._mailboxes.values():
            mailbox.fail(error)
