"""Messages between Ray actors: a send is an actor method call on the destination's host.

Every actor of a Ray run (the server's, each shard of clients) holds one :class:`RayTransport`
for the nodes it hosts and a route table ``node id -> actor handle``. A message for a node
hosted here goes straight into its mailbox (as on the memory transport); one for a node hosted
elsewhere becomes a :class:`Parcel` (plain fields and numpy arrays) for the destination actor's
``deliver`` method, so its tensors travel through Ray's object store, zero-copy on the same
machine.

Parcels for one actor are sent together: a send puts its parcel in that actor's outbox and
returns; the outbox goes out as one call once this event loop has run everything that was ready
(the server answering every client of a shard, a shard's clients each sending their
activations), or at once when it holds :data:`OUTBOX_BYTES`. A few actor calls per destination
and phase instead of one per message: a call costs both sides far more CPU than a small parcel's
bytes (tools/bench_ray.py). Receivers claim
messages by key, so the order calls arrive in does not matter. A call that fails (the receiving
actor is gone, or refused a message) fails every local waiter and every later send with a
:class:`PeerError` naming the node.

The receiving actor hands the parcels to :meth:`RayTransport.receive`, which rebuilds each
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


def to_arrays(tensors: Mapping[str, torch.Tensor], copy: bool = True) -> dict[str, Any]:
    """Named tensors as Ray carries them best: numpy arrays (torch tensors where numpy has no dtype).
    ``copy``: not views of the caller's tensors (a parcel waits in its outbox while the sender goes on)."""
    arrays: dict[str, Any] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu", copy=copy).contiguous()
        arrays[name] = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor
    return arrays


def from_arrays(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`to_arrays` undone, into tensors this process owns (Ray hands out read-only views)."""
    return {name: torch.from_numpy(np.array(array, copy=True)) if isinstance(array, np.ndarray)
            else torch.as_tensor(array).clone() for name, array in arrays.items()}


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
        return cls(msg.kind.value, msg.src, msg.dst, msg.round, msg.step, msg.phase.value, to_arrays(msg.tensors),
                   dict(msg.meta))

    def message(self) -> Message:
        """The message with tensors of its own (Ray hands out read-only views of the object store)."""
        tensors = from_arrays(self.arrays)
        return Message(MessageKind(self.kind), self.src, self.dst, self.round, self.step, Phase(self.phase),
                       tensors, dict(self.meta))


OUTBOX_BYTES = 16 * 2**20
"""An outbox this full goes out at once: one call stays well inside the object store (a shard of
hundreds of clients would otherwise send hundreds of MB in one object, which Ray spills to disk)."""


@dataclass
class _Outbox:
    """Parcels waiting for one destination actor."""

    handle: Any
    parcels: list[Parcel] = field(default_factory=list)
    nbytes: int = 0

    def add(self, parcel: Parcel) -> None:
        self.parcels.append(parcel)
        self.nbytes += sum(int(getattr(a, "nbytes", 0)) for a in parcel.arrays.values())


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
        self._outboxes: dict[int, _Outbox] = {}
        self._calls: set[asyncio.Task] = set()
        self._failure: PeerError | None = None

    async def _start(self, local_node_ids: list[str]) -> None:
        self._local.update(local_node_ids)

    async def _deliver(self, msg: Message) -> None:
        if self._failure is not None:
            raise self._failure
        if msg.dst in self._local:
            self._mailboxes[msg.dst].put(msg.detached_copy())
            await asyncio.sleep(0)  # a send is a scheduling point, as on a real network
            return
        handle = self._routes.get(msg.dst)
        if handle is None:
            raise PeerError(msg.dst, "unknown node on the ray transport")
        # No yield here: the outbox goes out once the loop has run what is ready (see the module).
        key = id(handle)
        outbox = self._outboxes.get(key)
        if outbox is None:
            outbox = self._outboxes[key] = _Outbox(handle)
            asyncio.get_running_loop().call_soon(self._flush, key, outbox)
        outbox.add(Parcel.of(msg))
        if outbox.nbytes >= OUTBOX_BYTES:  # a full one goes now (the scheduled flush finds it gone)
            self._flush(key, outbox)

    def _flush(self, key: int, outbox: "_Outbox") -> None:
        """Submit the outbox's call now; a task watches its answer."""
        if self._outboxes.get(key) is not outbox:
            return
        del self._outboxes[key]
        dst = outbox.parcels[0].dst
        try:
            answer = outbox.handle.deliver.remote(outbox.parcels)
        except ray.exceptions.RayError as exc:  # not even submitted (the driver let go of Ray)
            self._fail(PeerError(dst, f"not delivered: {type(exc).__name__}"))
            return
        call = asyncio.ensure_future(self._watch(answer, dst))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _watch(self, answer: Any, dst: str) -> None:
        try:
            await answer
        except ray.exceptions.RayActorError as exc:
            where = self._names.get(dst, "its actor")
            self._fail(PeerError(dst, f"{where} is gone ({type(exc).__name__})"))
        except ray.exceptions.RayTaskError as exc:  # the receiver refused one (see receive)
            cause = exc.cause if exc.cause is not None else exc
            self._fail(cause if isinstance(cause, PeerError) else PeerError(dst, f"refused: {cause}"))
        except ray.exceptions.RayError as exc:
            self._fail(PeerError(dst, f"not delivered: {type(exc).__name__}"))

    def _fail(self, error: PeerError) -> None:
        if self._failure is None:
            self._failure = error
            self.fail_all(error)

    async def close(self) -> None:
        """Wait for the calls still on their way (the last round's answers)."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=self.receive_timeout_s)

    def receive(self, parcels: Parcel | Sequence[Parcel]) -> None:
        """Called on the destination's actor: check each message and put it in its mailbox."""
        refused: PeerError | None = None
        for parcel in [parcels] if isinstance(parcels, Parcel) else parcels:
            msg = parcel.message()
            mailbox = self._mailboxes.get(msg.dst)
            if mailbox is None or msg.dst not in self._local:
                refused = refused or PeerError(msg.dst, "not hosted by this actor")
                continue
            try:
                check_protocol(msg, msg.dst, self._routes, self._specs, SERVER_ID)
            except WireError as exc:
                refused = refused or PeerError(msg.src, f"sent a message that does not fit the protocol: {exc.reason}")
                continue
            mailbox.put(msg)
        if refused is not None:
            raise refused

    def hosted(self) -> Sequence[str]:
        return sorted(self._local)
