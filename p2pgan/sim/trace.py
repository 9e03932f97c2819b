"""Operations: every compute and every transfer of a run, with its causal dependencies.

Two sources produce the same operations:

* :class:`OperationTracer` observes a real run on the event bus (``ComputeEvent`` and
  ``TransferEvent``, published by the nodes in their program order);
* :func:`trace_from_program` walks a strategy's :class:`~p2pgan.plan.program.Program` and writes
  down the events its nodes would publish for a plan, without training, and feeds them through
  the same tracer (latency files, what-if studies and cut search price plans this way). The
  iteration exists only in the program; this module only knows what each kind of step publishes.

Dependencies (what :func:`p2pgan.sim.engine.simulate` enforces):

* a node runs its computes one at a time, in the order it published them (program order is the
  order of a node's compute operations in the list; it is not repeated in ``deps``);
* a compute depends on the transfers it consumed (``ComputeEvent.consumed``), and on the
  aggregated parameters (AGGREGATE) sent to its node since its previous compute: the engine's
  client loads those outside any compute, yet cannot start the next round before it has;
* a transfer depends on the sender's last compute before it.

The list is canonical: sorted by round, step, node and per-node sequence, so two runs
whose coroutines interleaved differently give equal lists (and equal simulated times).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pgan.ids import SERVER_ID, natural_key
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.program import (BWD, FWD, U_SHAPED, Broadcast, ClientCompute, Exchange, Program, RoundTrip,
                                 network_split)
from p2pgan.protocol.events import ComputeEvent, TransferEvent
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKey, MessageKind, Phase

COMPUTE = "compute"
TRANSFER = "transfer"

@dataclass(frozen=True)
class Operation:
    """One compute (``flops`` on ``node``) or one transfer (``nbytes`` from ``node`` to ``dst``).

    ``deps`` are indices of operations in the same list that must finish first (besides the
    node's previous compute, which program order implies).
    """

    index: int
    kind: str
    node: str
    round: int
    step: int
    phase: str
    flops: float = 0.0
    nbytes: int = 0
    dst: str = ""
    deps: tuple[int, ...] = ()
    direction: str = ""
    blocks: tuple[str, ...] = ()
    batch: int = 0
    msg_kind: str = ""
    msg_id: str = ""

    @property
    def is_compute(self) -> bool:
        return self.kind == COMPUTE

    def describe(self) -> str:
        where = f"r{self.round}/" + ("round" if self.step == ROUND_LEVEL_STEP else f"s{self.step}") + f"/{self.phase}"
        if self.is_compute:
            blocks = ",".join(self.blocks) if self.blocks else "aggregate"
            return f"{self.node} {self.direction} [{blocks}] x{self.batch} ({self.flops:.3g} FLOP) {where}"
        return f"{self.node}->{self.dst} {self.msg_kind} ({self.nbytes} B) {where}"


@dataclass
class _Record:
    kind: str
    node: str
    seq: int
    round: int
    step: int
    phase: str
    flops: float = 0.0
    nbytes: int = 0
    dst: str = ""
    direction: str = ""
    blocks: tuple[str, ...] = ()
    batch: int = 0
    msg_kind: str = ""
    msg_id: str = ""
    dep_keys: list[object] = field(default_factory=list)


class OperationTracer:
    """An event-bus observer that turns compute and transfer events into :class:`Operation` s.

    Only records; never blocks the run. Other event types are ignored.
    """

    def __init__(self) -> None:
        self._records: list[_Record] = []
        self._seq: dict[str, int] = {}
        self._last_compute: dict[str, tuple[str, int]] = {}
        self._pending_round_level: dict[str, list[str]] = {}
        self.unknown_messages: set[str] = set()

    def __call__(self, event: object) -> None:
        if isinstance(event, ComputeEvent):
            self._compute(event)
        elif isinstance(event, TransferEvent):
            self._transfer(event)

    def _next_seq(self, node: str) -> int:
        seq = self._seq.get(node, 0)
        self._seq[node] = seq + 1
        return seq

    def _compute(self, event: ComputeEvent) -> None:
        seq = self._next_seq(event.node)
        deps: list[object] = list(event.consumed)
        for msg_id in self._pending_round_level.pop(event.node, []):
            if msg_id not in deps:
                deps.append(msg_id)
        self._records.append(_Record(COMPUTE, event.node, seq, event.round, event.step, event.phase,
                                     flops=float(event.flops), direction=event.direction,
                                     blocks=tuple(event.blocks), batch=int(event.batch), dep_keys=deps))
        self._last_compute[event.node] = ("compute", len(self._records) - 1)

    def _transfer(self, event: TransferEvent) -> None:
        seq = self._next_seq(event.src)
        last = self._last_compute.get(event.src)
        self._records.append(_Record(TRANSFER, event.src, seq, event.round, event.step, event.phase,
                                     nbytes=int(event.nbytes), dst=event.dst, msg_kind=event.kind,
                                     msg_id=event.msg_id, dep_keys=[last] if last else []))
        if event.kind == MessageKind.AGGREGATE.value:
            # The engine's client loads the aggregate outside any compute (its consumed list is
            # cleared), yet cannot start the next round before it has: keep that edge.
            self._pending_round_level.setdefault(event.dst, []).append(event.msg_id)

    def operations(self) -> list[Operation]:
        """The trace so far in canonical order, dependencies as list indices."""
        records = self._records
        order = sorted(range(len(records)), key=lambda i: self._sort_key(records[i]))
        position = {old: new for new, old in enumerate(order)}
        by_msg = {r.msg_id: i for i, r in enumerate(records) if r.kind == TRANSFER}
        ops = []
        for new, old in enumerate(order):
            r = records[old]
            deps = []
            for key in r.dep_keys:
                if isinstance(key, tuple):
                    deps.append(position[key[1]])
                elif key in by_msg:
                    deps.append(position[by_msg[key]])
                else:
                    self.unknown_messages.add(str(key))
            ops.append(Operation(new, r.kind, r.node, r.round, r.step, r.phase, r.flops, r.nbytes, r.dst,
                                 tuple(sorted(set(deps))), r.direction, r.blocks, r.batch, r.msg_kind, r.msg_id))
        return ops

    @staticmethod
    def _sort_key(r: _Record) -> tuple:
        step = r.step if r.step != ROUND_LEVEL_STEP else float("inf")
        # Per-node sequence order is kept (it is program order); nodes in natural id order.
        return (r.round, step, r.node == SERVER_ID, natural_key(r.node), r.seq)


# -- synthetic traces ---------------------------------------------------------------------------

LABEL_BYTES = 8
"""Bytes of one integer label on the wire (int64, what ``torch.randint`` and the datasets give)."""


def _out_bytes(costs: ModelCosts, blocks: tuple[str, ...], what: str) -> int:
    """Bytes per sample of the tensor ``blocks``' last block outputs (an activation, or the
    gradient with respect to it, which has its shape)."""
    if not blocks:
        raise ValueError(f"{what}: nothing computes the tensor this message carries (no blocks)")
    return costs[blocks[-1]].out_bytes


class _Emitter:
    """Publishes the nodes' events into a tracer, in per-node program order.

    As on a node's port, a message joins the node's ``consumed`` list when the node receives it,
    and that list goes with the node's next compute.
    """

    def __init__(self, tracer: OperationTracer, costs: ModelCosts) -> None:
        self.tracer = tracer
        self.costs = costs
        self.pending: dict[str, list[str]] = {}

    def compute(self, node: str, rnd: int, step: int, phase: Phase, direction: str,
                blocks: tuple[str, ...], batch: int, flops: float | None = None, always: bool = False) -> None:
        if not blocks and not always:
            return
        if flops is None:
            flops = self.costs.flops(blocks, direction) * batch
        consumed = tuple(self.pending.pop(node, []))
        self.tracer(ComputeEvent(node, rnd, step, phase.value, direction, tuple(blocks), batch, flops, consumed))

    def send(self, kind: MessageKind, src: str, dst: str, rnd: int, step: int, phase: Phase, nbytes: int) -> str:
        msg_id = str(MessageKey(kind, src, dst, rnd, step, phase))
        self.tracer(TransferEvent(msg_id, src, dst, kind.value, rnd, step, phase.value, int(nbytes)))
        return msg_id

    def receive(self, node: str, msg_id: str | None) -> None:
        if msg_id is not None:
            self.pending.setdefault(node, []).append(msg_id)


def trace_from_program(program: Program, splits: Mapping[str, ClientSplit], costs: ModelCosts,
                       batch_sizes: Mapping[str, int], iterations: int, include_aggregation: bool,
                       rounds: int = 1, first_round: int = 1, server_batch: int | None = None,
                       faults: FaultPlan | None = None) -> list[Operation]:
    """The operations ``program``'s nodes perform for ``splits``, without training.

    ``iterations`` steps per round, ``rounds`` rounds numbered from ``first_round`` (nodes count
    rounds from 1), each followed by the program's round end when ``include_aggregation``.
    ``server_batch``: how many samples a :class:`~p2pgan.plan.program.Broadcast` server generates
    per client (MD-GAN: the schedule's batch size); default each client's own batch. Clients
    appear in natural id order, as the server orders them.

    ``faults``: only the clients present at an iteration take part in it (the server batches
    over them); at a round's end only those at its federation send their parameters, and the
    aggregate goes to them and to the clients that rejoin the next round (their cluster's weights).
    """
    tracer = OperationTracer()
    emit = _Emitter(tracer, costs)
    clients = sorted(splits, key=natural_key)
    generated = {c: server_batch if server_batch is not None else batch_sizes[c] for c in clients}
    for rnd in range(first_round, first_round + rounds):
        for step in range(iterations):
            present = clients if faults is None else [c for c in clients if c in faults.present(rnd, step)]
            _IterationTrace(emit, present, splits, costs, batch_sizes, generated, rnd, step).run(program)
        if include_aggregation and program.round_end:
            if faults is None:
                _federate(emit, program, clients, clients, splits, costs, rnd)
            else:
                federated = faults.at_federation(rnd)
                receivers = federated | faults.rejoining(rnd + 1)
                _federate(emit, program, [c for c in clients if c in federated],
                          [c for c in clients if c in receivers], splits, costs, rnd)
    return tracer.operations()


def trace_from_plan(splits: Mapping[str, ClientSplit], costs: ModelCosts, batch_sizes: Mapping[str, int],
                    iterations: int, include_aggregation: bool, rounds: int = 1,
                    first_round: int = 1) -> list[Operation]:
    """:func:`trace_from_program` of the U-shaped split (every strategy but md-gan)."""
    return trace_from_program(U_SHAPED, splits, costs, batch_sizes, iterations, include_aggregation,
                              rounds=rounds, first_round=first_round)


class _IterationTrace:
    """One iteration of a program: what each step makes the client and server nodes publish.

    Mirrors :mod:`p2pgan.engine.client` / :mod:`p2pgan.engine.server` (Exchange) and
    :mod:`p2pgan.strategies.mdgan` (Broadcast); :class:`~p2pgan.plan.program.Local` steps publish
    nothing.
    """

    def __init__(self, emit: _Emitter, clients: list[str], splits: Mapping[str, ClientSplit], costs: ModelCosts,
                 batch: Mapping[str, int], generated: Mapping[str, int], rnd: int, step: int) -> None:
        self.emit, self.clients, self.splits, self.costs = emit, clients, splits, costs
        self.batch, self.generated, self.rnd, self.step = batch, generated, rnd, step

    def run(self, program: Program) -> None:
        for step in program.iteration:
            if isinstance(step, Exchange):
                self.exchange(step)
            elif isinstance(step, Broadcast):
                self.broadcast(step)

    def compute(self, node: str, phase: Phase, direction: str, blocks: tuple[str, ...], batch: int,
                flops: float | None = None) -> None:
        self.emit.compute(node, self.rnd, self.step, phase, direction, blocks, batch, flops)

    def send(self, kind: MessageKind, src: str, dst: str, phase: Phase, nbytes: int) -> str:
        return self.emit.send(kind, src, dst, self.rnd, self.step, phase, nbytes)

    # -- Exchange: client-first round trips, uploads paired ------------------------------------

    def exchange(self, exchange: Exchange) -> None:
        ups = {trip.phase: {c: self.client_before(c, trip) for c in self.clients} for trip in exchange.trips}
        downs = {trip.phase: self.server_trip(trip, ups[trip.phase]) for trip in exchange.trips}
        for trip in exchange.trips:
            for c in self.clients:
                self.client_after(c, trip, downs[trip.phase])

    def client_batch(self, c: str, trip: RoundTrip) -> int:
        # A forward runs the client's batch; a backward every pass it back-propagates (D: 2).
        return self.batch[c] if trip.direction == FWD else trip.samples * self.batch[c]

    def client_before(self, c: str, trip: RoundTrip) -> str | None:
        """Compute ``before``; upload when the network passes through the server."""
        split = network_split(self.splits[c], trip.network)
        self.compute(c, trip.phase, trip.direction, trip.before.blocks(split, trip.network), self.client_batch(c, trip))
        if not split.server:
            return None
        per_tensor = self.batch[c] * _out_bytes(self.costs, trip.upload_part().blocks(split, trip.network),
                                               f"{c} {trip.phase.value} upload")
        return self.send(trip.kind, c, SERVER_ID, trip.phase, len(trip.up) * per_tensor)

    def server_trip(self, trip: RoundTrip, uploads: Mapping[str, str | None]) -> dict[str, str]:
        """Receive every upload, run the batched compute, send each participant its slice."""
        net = trip.network
        users = [c for c in self.clients if network_split(self.splits[c], net).server]
        if not users:
            return {}
        for c in users:
            self.emit.receive(SERVER_ID, uploads[c])
        samples: dict[str, int] = {}
        for name in net.block_names:
            through = [c for c in users if name in network_split(self.splits[c], net).server]
            if through:
                samples[name] = sum(trip.samples * self.batch[c] for c in through)
        flops = sum(self.costs.flops((name,), trip.direction) * n for name, n in samples.items())
        batch = sum(trip.samples * self.batch[c] for c in users)
        self.compute(SERVER_ID, trip.phase, trip.direction, tuple(samples), batch, flops)
        downs = {}
        for c in users:
            split = network_split(self.splits[c], net)
            per_tensor = self.batch[c] * _out_bytes(self.costs, trip.download_part().blocks(split, net),
                                                   f"{c} {trip.phase.value} download")
            downs[c] = self.send(trip.kind, SERVER_ID, c, trip.phase, len(trip.down) * per_tensor)
        return downs

    def client_after(self, c: str, trip: RoundTrip, downs: Mapping[str, str]) -> None:
        """Download (when via the server), then compute ``after``: a forward's tail always runs,
        a backward's head only when the server sent the gradient on."""
        split = network_split(self.splits[c], trip.network)
        if split.server:
            self.emit.receive(c, downs[c])
        elif trip.direction == BWD:
            return
        self.compute(c, trip.phase, trip.direction, trip.after.blocks(split, trip.network), self.client_batch(c, trip))

    # -- Broadcast: server-first (MD-GAN) -------------------------------------------------------

    def broadcast(self, step: Broadcast) -> None:
        # The server runs its whole network, each client its whole client network.
        net_blocks, client_blocks = step.network.block_names, step.client_network.block_names
        out = _out_bytes(self.costs, net_blocks, f"{step.network.name} broadcast")
        total = sum(self.generated[c] for c in self.clients)
        self.compute(SERVER_ID, step.down_phase, FWD, net_blocks, total)
        downs = {}
        for c in self.clients:
            n = self.generated[c]
            nbytes = sum(n * (LABEL_BYTES if name in step.integer_down else out) for name in step.down)
            downs[c] = self.send(MessageKind.ACTIVATION, SERVER_ID, c, step.down_phase, nbytes)
        ups = {}
        for c in self.clients:
            self.emit.receive(c, downs[c])
            for compute in step.computes():
                self.compute(c, compute.phase, compute.direction, client_blocks, self._broadcast_batch(c, step, compute))
            # Every uploaded tensor is the gradient of a generated (float) tensor: its shape.
            ups[c] = self.send(MessageKind.GRADIENT, c, SERVER_ID, step.up_phase, len(step.up) * self.generated[c] * out)
        for c in self.clients:
            self.emit.receive(SERVER_ID, ups[c])
        self.compute(SERVER_ID, step.up_phase, BWD, net_blocks, total)

    def _broadcast_batch(self, c: str, step: Broadcast, compute: ClientCompute) -> int:
        if compute.direction == BWD:
            return compute.samples * self.batch[c]
        source = (compute.source or "").removesuffix("_detached")
        return self.generated[c] if source in step.down else self.batch[c]


def client_param_bytes(split: ClientSplit, costs: ModelCosts, program: Program = U_SHAPED) -> int:
    """Bytes of a client's parameters and float buffers under ``program``: what it sends up at
    round end (and, as every strategy's aggregate has the shape of what was sent, receives)."""
    return sum(costs[name].param_bytes for name in program.client_blocks(split))


def _federate(emit: _Emitter, program: Program, clients: list[str], receivers: list[str],
              splits: Mapping[str, ClientSplit], costs: ModelCosts, rnd: int) -> None:
    """``clients`` send their parameters; ``receivers`` get the aggregate (their own share)."""
    step = ROUND_LEVEL_STEP
    sizes = {c: client_param_bytes(splits[c], costs, program) for c in {*clients, *receivers}}
    for c in clients:
        emit.receive(SERVER_ID, emit.send(MessageKind.PARAMS, c, SERVER_ID, rnd, step, Phase.FEDERATE, sizes[c]))
    # Aggregating reads every float element the clients sent once (fp32): cheap, but not free.
    elements = sum(sizes[c] for c in clients) / 4
    emit.compute(SERVER_ID, rnd, step, Phase.FEDERATE, FWD, (), len(clients), float(elements), always=True)
    for c in receivers:
        # A client loads the aggregate outside any compute (its consumed list is cleared); the
        # tracer adds the dependency back (round-level messages gate the receiver's next compute).
        emit.send(MessageKind.AGGREGATE, SERVER_ID, c, rnd, step, Phase.FEDERATE, sizes[c])


__all__ = ["COMPUTE", "LABEL_BYTES", "TRANSFER", "Operation", "OperationTracer", "client_param_bytes",
           "trace_from_plan", "trace_from_program"]
