"""In-process transport over asyncio: the fast path for simulation and tests."""

from __future__ import annotations

import asyncio

from p2pgan.protocol.messages import Message
from p2pgan.errors import PeerError
from p2pgan.protocol.endpoint import Transport


class MemoryTransport(Transport):
    """Delivers into the destination's mailbox in the same event loop.

    The receiver gets detached copies, exactly what it would get from a real wire, so code
    that works here cannot silently rely on shared autograd graphs or shared storage.
    """

    name = "memory"

    def __init__(self, receive_timeout_s: float | None = None) -> None:
        super().__init__()
        self.receive_timeout_s = receive_timeout_s

    async def _deliver(self, msg: Message) -> None:
        mailbox = self._mailboxes.get(msg.dst)
        if mailbox is None:
            raise PeerError(msg.dst, "unknown node on the memory transport")
        mailbox.put(msg.detached_copy())
        # Yield so that a send is a scheduling point, as on a real network.
        await asyncio.sleep(0)
