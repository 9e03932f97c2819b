"""Messages between Ray actors: a send is an actor method call on the destination's host.

Every actor of a Ray run (the server's, each shard of clients) holds one :class:`RayTransport`
for the nodes it hosts and a route table ``node id -> actor handle``. A message for a node
hosted here goes straight into its mailbox (as on the memory transport); one for a node hosted
elsewhere becomes a :class:`Parcel` (plain fields and numpy arrays) passed to the destination
actor's ``deliver`` method, so its tensors travel through Ray's object store, zero-copy on the
same machine. The caller awaits the call: a send returns once the receiver holds the message,
and a dead receiver is a :class:`PeerError` naming the node.

The receiving actor hands the parcel to :meth:`RayTransport.receive`, which rebuilds the
message with tensors it owns and checks it against the program's message specs before delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray.exceptions
import torch

from p2pgan.errors import PeerError
from p2pgan.ids import SERVER_ID
from p2pgan.protocol.endpoint import Transport
from p2pgan.protocol.messages import Message, MessageKind, Phase
from transports.wire import WireError, check_protocol


@dataclass(frozen=True)
class Parcel:
    """A message as it crosses between actors: plain fields, tensors as numpy arrays.

    Tensors numpy cannot hold (bfloat16) travel as torch tensors, which Ray also serialises.
    """

    kind: str
    src: str
    dst: str
    round: int
    step: int
    phase: str
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str | int | float] = field(default_factory=dict)

    @classmethod
    def of(cls, msg: Message) -> "Parcel":
        arrays: dict[str, Any] = {}
        for name, tensor in msg.tensors.items():
            tensor = tensor.detach().cpu().contiguous()
            arrays[name] = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor.clone()
        return cls(msg.kind.value, msg.src, msg.dst, msg.round, msg.step, msg.phase.value, arrays, dict(msg.meta))

    def message(self) -> Message:
        """The message with tensors of its own (Ray hands out read-only views of the object store)."""
        tensors = {}
        for name, array in self.arrays.items():
            tensors[name] = torch.from_numpy(np.array(array, copy=True)) if isinstance(array, np.ndarray) \
                else torch.as_tensor(array).clone()
        return Message(MessageKind(self.kind), self.src, self.dst, self.round, self.step, Phase(self.phase),
                       tensors, dict(self.meta))


class RayTransport(Transport):
    """Delivers between the nodes of one Ray run; ``routes`` names the actor hosting each node."""

    name = "ray"

    def __init__(self, routes: Mapping[str, Any], receive_timeout_s: float | None = None,
                 message_specs=None, actor_names: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.receive_timeout_s = receive_timeout_s
        self._routes = dict(routes)
        self._names = dict(actor_names or {})
        self._specs = message_specs
        self._local: set[str] = set()

    async def _start(self, local_node_ids: list[str]) -> None:
        self._local.update(local_node_ids)

    async def _deliver(self, msg: Message) -> None:
        if msg.dst in self._local:
            self._mailboxes[msg.dst].put(msg.detached_copy())
            await asyncio.sleep(0)  # a send is a scheduling point, as on a real network
            return
        handle = self._routes.get(msg.dst)
        if handle is None:
            raise PeerError(msg.dst, "unknown node on the ray transport")
        try:
            await handle.deliver.remote(Parcel.of(msg))
        except ray.exceptions.RayActorError as exc:
            where = self._names.get(msg.dst, "its actor")
            raise PeerError(msg.dst, f"{where} is gone ({type(exc).__name__})") from None
        except ray.exceptions.RayTaskError as exc:  # the receiver refused it (see receive)
            raise PeerError(msg.dst, f"refused {msg.key}: {exc.cause if exc.cause else exc}") from None

    def receive(self, parcel: Parcel) -> None:
        """Called on the destination's actor: check the message and put it in its mailbox."""
        msg = parcel.message()
        mailbox = self._mailboxes.get(msg.dst)
        if mailbox is None or msg.dst not in self._local:
            raise PeerError(msg.dst, "not hosted by this actor")
        try:
            check_protocol(msg, msg.dst, self._routes, self._specs, SERVER_ID)
        except WireError as exc:
            raise PeerError(msg.src, f"sent a message that does not fit the protocol: {exc.reason}") from None
        mailbox.put(msg)

    def hosted(self) -> Sequence[str]:
        return sorted(self._local)
