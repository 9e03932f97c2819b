"""In-process transport over asyncio: the fast path for simulation and tests."""

from __future__ import annotations

import asyncio

from p2pgan.protocol.messages import Message, MessageKind
from p2pgan.errors import PeerError
from p2pgan.protocol.endpoint import Transport


HANDED_OVER = frozenset({MessageKind.ACTIVATION, MessageKind.GRADIENT})
"""What the receiver gets as the sender's own storage: the tensors a split iteration passes on."""


class MemoryTransport(Transport):
    """Delivers into the destination's mailbox in the same event loop.

    The receiver never shares an autograd graph with the sender: every tensor arrives detached.
    Activations and gradients keep the sender's storage (:attr:`shares_tensors`): in one
    process a copy of each would double what a split iteration holds (the sender's output
    and the receiver's input both wait for their backwards: one s6 iteration on the node engine
    peaked at 10,037 MiB with copies, 8,700 MiB without; tools/bench_memory.py).
    Parameters and aggregates arrive as copies, as a wire gives them: the sender's are live
    tensors its optimizer and the strategy's results go on changing. ``share=False``: every
    message a copy, as over a wire.
    """

    name = "memory"

    def __init__(self, receive_timeout_s: float | None = None, share: bool = True) -> None:
        super().__init__()
        self.receive_timeout_s = receive_timeout_s
        self.shares_tensors = share

    async def _deliver(self, msg: Message) -> None:
        mailbox = self._mailboxes.get(msg.dst)
        if mailbox is None:
            raise PeerError(msg.dst, "unknown node on the memory transport")
        mailbox.put(msg.detached_alias() if self.shares_tensors and msg.kind in HANDED_OVER else msg.detached_copy())
        # Yield so that a send is a scheduling point, as on a real network.
        await asyncio.sleep(0)
