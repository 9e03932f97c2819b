"""One iteration written once, as data.

A :class:`Program` is the ordered list of what happens in one synchronous iteration and at a
round's end. Three consumers read it and nothing else:

* the nodes execute it (:mod:`p2pgan.engine.client`, :mod:`p2pgan.engine.server`, and a
  strategy's own node pair such as MD-GAN's);
* the simulator prices it (:func:`p2pgan.sim.trace.trace_from_program`, the analytic model);
* the transports check received messages against the :class:`MessageSpecs` it implies.

The vocabulary is small. An :class:`Exchange` is one or more client-first :class:`RoundTrip` s
whose uploads all leave before any download is awaited (D's fake and real passes are paired
this way). A :class:`Broadcast` is a server-first round trip (MD-GAN: the server generates,
clients answer with gradients). :class:`Local` steps are losses, gradient resets and optimizer
steps; they move nothing and cost nothing in the latency model. Which blocks a step runs is a
:class:`Part` of one network, resolved against each client's :class:`ClientSplit`, so one
program serves every cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, NetworkDef
from p2pgan.model.segments import ClientSplit, NetworkSplit
from p2pgan.protocol.messages import MessageKind, Phase
from p2pgan.protocol.specs import DOWN, UP, MessageSpec, MessageSpecs

FWD = "fwd"
BWD = "bwd"


class Part(str, Enum):
    """Which of a network's blocks a step runs on a client (or, for SERVER, on the server)."""

    HEAD = "head"
    SERVER = "server"
    TAIL = "tail"
    FIRST_BACKWARD = "first_backward"
    """What a loss's backward reaches before it needs the server: the tail, or every client block
    when the network does not pass through the server."""
    NETWORK = "network"
    """Every block of the network (a node that holds the whole network)."""

    def blocks(self, split: NetworkSplit, network: NetworkDef) -> tuple[str, ...]:
        if self is Part.HEAD:
            return split.head
        if self is Part.SERVER:
            return split.server
        if self is Part.TAIL:
            return split.tail
        if self is Part.FIRST_BACKWARD:
            return split.tail if split.server else split.client_blocks
        return network.block_names


NETWORKS_BY_NAME = {GENERATOR.name: GENERATOR, DISCRIMINATOR.name: DISCRIMINATOR}


def network_split(split: ClientSplit, network: NetworkDef) -> NetworkSplit:
    return split.generator if network is GENERATOR else split.discriminator


@dataclass(frozen=True)
class RoundTrip:
    """Client computes ``before`` and uploads; the server runs its part batched over every client
    that passes through it and sends each its slice; the client computes ``after``.

    Clients whose ``network`` does not pass through the server only compute ``before``.
    For a forward trip ``source`` names the client tensor fed into the head and ``result`` the
    name the tail's output is kept under; for a backward trip ``source`` names the loss whose
    backward starts it (or ``None`` when an earlier backward already reached it) and
    ``grad_of`` the forward phases whose server outputs and client leaves it back-propagates,
    keyed by the tensor name the gradient travels under.
    """

    phase: Phase
    network: NetworkDef
    direction: str
    before: Part
    after: Part
    up: tuple[str, ...]
    down: tuple[str, ...]
    samples: int = 1
    """Samples per client batch element (the paired D backward carries fake and real: 2)."""
    source: str | None = None
    result: str | None = None
    grad_of: tuple[tuple[str, Phase], ...] = ()
    features: bool = False
    """The server keeps its clustering feature from this pass (the last real-data D forward)."""

    @property
    def kind(self) -> MessageKind:
        return MessageKind.ACTIVATION if self.direction == FWD else MessageKind.GRADIENT

    def upload_part(self) -> Part:
        """The part whose last block's output (or input gradient) is the uploaded tensor."""
        return Part.HEAD if self.direction == FWD else Part.SERVER

    def download_part(self) -> Part:
        return Part.SERVER if self.direction == FWD else Part.HEAD


@dataclass(frozen=True)
class Exchange:
    trips: tuple[RoundTrip, ...]


@dataclass(frozen=True)
class ClientCompute:
    """One compute a client runs inside a :class:`Broadcast` (its whole ``network``).

    Forward: ``source`` names the tensor fed in (a received one, or the client's ``real`` batch;
    a ``_detached`` suffix cuts it from the gradient) and ``result`` the name its output is kept
    under. Backward: ``source`` names the loss back-propagated; ``result`` names the received
    tensor whose gradient is kept (``None``: the gradients go into the network's parameters).
    """

    phase: Phase
    direction: str
    samples: int = 1
    source: str | None = None
    result: str | None = None


@dataclass(frozen=True)
class Broadcast:
    """The server computes ``network`` for every client at once and sends each its slice
    (``down`` in ``down_phase``); clients run ``client`` and answer with ``up`` in ``up_phase``;
    the server then back-propagates over everyone's answers."""

    network: NetworkDef
    client_network: NetworkDef
    down_phase: Phase
    down: tuple[str, ...]
    client: tuple[ClientCompute | Local, ...]
    """The client's computes, with the losses and optimizer steps between them."""
    up_phase: Phase
    up: tuple[str, ...]
    integer_down: tuple[str, ...] = ()
    """Integer tensors among ``down``: the labels the server generated the float ones for."""
    grad_of: tuple[tuple[str, str], ...] = ()
    """``(up name, down name)``: which received tensor's gradient each uploaded tensor carries."""

    def computes(self) -> tuple[ClientCompute, ...]:
        return tuple(step for step in self.client if isinstance(step, ClientCompute))


class LocalAction(str, Enum):
    ZERO_GRAD = "zero_grad"
    STEP = "step"
    LOSS = "loss"


@dataclass(frozen=True)
class Local:
    """A node-local action: ``ZERO_GRAD`` / ``STEP`` of ``network``'s optimizer, or a ``LOSS``
    named ``name`` summing BCE of each ``(result, target)`` term."""

    action: LocalAction
    network: NetworkDef | None = None
    name: str = ""
    terms: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Federate:
    """Round end: every client sends the parameters of the blocks it holds; the server
    aggregates (the strategy's policy) and sends each client what it loads."""


Step = Union[Exchange, Broadcast, Local]


@dataclass(frozen=True)
class Program:
    name: str
    iteration: tuple[Step, ...]
    round_end: tuple[Federate, ...] = (Federate(),)

    def round_trips(self) -> tuple[RoundTrip, ...]:
        return tuple(trip for step in self.iteration if isinstance(step, Exchange) for trip in step.trips)

    def client_blocks(self, split: ClientSplit) -> tuple[str, ...]:
        """The blocks a client with ``split`` holds under this program (what it sends at round
        end): its part of every network an :class:`Exchange` runs, and every :class:`Broadcast`'s
        whole client network."""
        held: list[str] = []
        for step in self.iteration:
            if isinstance(step, Exchange):
                for trip in step.trips:
                    held.extend(network_split(split, trip.network).client_blocks)
            elif isinstance(step, Broadcast):
                held.extend(step.client_network.block_names)
        return tuple(dict.fromkeys(held))

    def trip(self, phase: Phase) -> RoundTrip:
        for trip in self.round_trips():
            if trip.phase is phase:
                return trip
        raise KeyError(phase)

    def message_specs(self) -> MessageSpecs:
        specs: list[MessageSpec] = []
        for step in self.iteration:
            if isinstance(step, Exchange):
                for trip in step.trips:
                    specs.append(MessageSpec(trip.kind, trip.phase, UP, frozenset(trip.up)))
                    specs.append(MessageSpec(trip.kind, trip.phase, DOWN, frozenset(trip.down)))
            elif isinstance(step, Broadcast):
                specs.append(MessageSpec(MessageKind.ACTIVATION, step.down_phase, DOWN, frozenset(step.down),
                                         frozenset(step.integer_down)))
                specs.append(MessageSpec(MessageKind.GRADIENT, step.up_phase, UP, frozenset(step.up)))
        if self.round_end:
            specs.append(MessageSpec(MessageKind.PARAMS, Phase.FEDERATE, UP, None))
            specs.append(MessageSpec(MessageKind.AGGREGATE, Phase.FEDERATE, DOWN, None))
        return MessageSpecs(tuple(specs))


G, D = GENERATOR, DISCRIMINATOR

U_SHAPED = Program(
    name="u-shaped split",
    iteration=(
        # 1. G forward: head -> server middle -> tail; the fake image never leaves the client.
        Exchange((RoundTrip(Phase.G_FWD, G, FWD, Part.HEAD, Part.TAIL, ("act",), ("act",),
                            source="noise", result="fake"),)),
        # 2. D on fake.detach() and on real: both heads go up before either answer comes back.
        Exchange((
            RoundTrip(Phase.D_FAKE, D, FWD, Part.HEAD, Part.TAIL, ("act",), ("act",),
                      source="fake_detached", result="d_fake"),
            RoundTrip(Phase.D_REAL, D, FWD, Part.HEAD, Part.TAIL, ("act",), ("act",),
                      source="real", result="d_real", features=True),
        )),
        Local(LocalAction.LOSS, name="d_loss", terms=(("d_fake", 0.0), ("d_real", 1.0))),
        Local(LocalAction.ZERO_GRAD, D),
        Exchange((RoundTrip(Phase.D_BWD, D, BWD, Part.FIRST_BACKWARD, Part.HEAD, ("fake", "real"), ("fake", "real"),
                            samples=2, source="d_loss",
                            grad_of=(("fake", Phase.D_FAKE), ("real", Phase.D_REAL))),)),
        Local(LocalAction.STEP, D),
        # 3. G step: D(fake) with target 1, back through D (its gradients are discarded) into G.
        Local(LocalAction.ZERO_GRAD, G),
        Exchange((RoundTrip(Phase.G_ADV, D, FWD, Part.HEAD, Part.TAIL, ("act",), ("act",),
                            source="fake", result="g_adv"),)),
        Local(LocalAction.LOSS, name="g_loss", terms=(("g_adv", 1.0),)),
        Exchange((RoundTrip(Phase.G_ADV_BWD, D, BWD, Part.FIRST_BACKWARD, Part.HEAD, ("grad",), ("grad",),
                            source="g_loss", grad_of=(("grad", Phase.G_ADV),)),)),
        Exchange((RoundTrip(Phase.G_BWD, G, BWD, Part.FIRST_BACKWARD, Part.HEAD, ("grad",), ("grad",),
                            grad_of=(("grad", Phase.G_FWD),)),)),
        Local(LocalAction.STEP, G),
    ),
)
"""HuSCF-GAN's iteration and every strategy that shares its node pair (FedAvg-GAN's full-local
clients are the case where no network passes through the server)."""

MD_GAN = Program(
    name="md-gan",
    iteration=(
        Local(LocalAction.ZERO_GRAD, G),
        Broadcast(G, D, Phase.G_FWD, ("images", "labels"), (
            # D on the received fakes (target 0) and the client's real batch (target 1), one step.
            ClientCompute(Phase.D_FAKE, FWD, source="images_detached", result="d_fake"),
            ClientCompute(Phase.D_REAL, FWD, source="real", result="d_real"),
            Local(LocalAction.LOSS, name="d_loss", terms=(("d_fake", 0.0), ("d_real", 1.0))),
            Local(LocalAction.ZERO_GRAD, D),
            ClientCompute(Phase.D_BWD, BWD, samples=2, source="d_loss"),
            Local(LocalAction.STEP, D),
            # The generator's feedback: d BCE(D(fake), 1) / d fake, sent up as "grad".
            ClientCompute(Phase.G_ADV, FWD, source="images", result="g_adv"),
            Local(LocalAction.LOSS, name="g_loss", terms=(("g_adv", 1.0),)),
            ClientCompute(Phase.G_ADV_BWD, BWD, source="g_loss", result="images"),
        ), Phase.G_BWD, ("grad",), integer_down=("labels",), grad_of=(("grad", "images"),)),
        Local(LocalAction.STEP, G),
    ),
)
"""One generator on the server, a whole discriminator per client (MD-GAN)."""
