"""Operations: every compute and every transfer of a run, with its causal dependencies.

Two sources produce the same operations:

* :class:`OperationTracer` observes a real run on the event bus (``ComputeEvent`` and
  ``TransferEvent``, published by the nodes in their program order);
* :func:`trace_from_plan` writes down the events the engine would publish for a cut plan,
  without training, and feeds them through the same tracer (what-if studies and cut search
  price plans this way).

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKey, MessageKind, Phase

from p2pgan.ids import SERVER_ID
from p2pgan.protocol.events import ComputeEvent, TransferEvent
from p2pgan.ids import natural_key
from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit, NetworkSplit

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


def _last_out_bytes(costs: ModelCosts, blocks: tuple[str, ...]) -> int:
    return costs[blocks[-1]].out_bytes


def _backward_blocks(split: NetworkSplit) -> tuple[str, ...]:
    """The blocks a client's first backward of a network reaches (engine: tail, or all if local)."""
    return split.tail if split.server else split.client_blocks


class _Emitter:
    """Publishes the engine's events for one plan into a tracer, in per-node program order.

    As in the engine, a message joins a node's ``consumed`` list when the node receives it, and
    that list goes with the node's next compute.
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


def trace_from_plan(splits: Mapping[str, ClientSplit], costs: ModelCosts, batch_sizes: Mapping[str, int],
                    iterations: int, include_aggregation: bool, rounds: int = 1,
                    first_round: int = 1) -> list[Operation]:
    """The operations the engine performs for ``splits``, without training.

    ``iterations`` steps per round, ``rounds`` rounds numbered from ``first_round`` (the engine
    counts rounds from 1), each followed by the parameter exchange when ``include_aggregation``.
    Clients appear in natural id order, as the engine's server orders them.
    """
    tracer = OperationTracer()
    emit = _Emitter(tracer, costs)
    clients = sorted(splits, key=natural_key)
    for rnd in range(first_round, first_round + rounds):
        for step in range(iterations):
            _Iteration(emit, clients, splits, costs, batch_sizes, rnd, step).run()
        if include_aggregation:
            _aggregation(emit, clients, splits, costs, rnd)
    return tracer.operations()


def _net(split: ClientSplit, network) -> NetworkSplit:
    return split.generator if network is GENERATOR else split.discriminator


class _Iteration:
    """One synchronous iteration (DESIGN §1.1) as the engine's client and server nodes run it."""

    def __init__(self, emit: _Emitter, clients: list[str], splits: Mapping[str, ClientSplit],
                 costs: ModelCosts, batch_sizes: Mapping[str, int], rnd: int, step: int) -> None:
        self.emit, self.clients, self.splits, self.costs = emit, clients, splits, costs
        self.batch, self.rnd, self.step = batch_sizes, rnd, step

    def compute(self, node: str, phase: Phase, direction: str, blocks: tuple[str, ...], batch: int) -> None:
        self.emit.compute(node, self.rnd, self.step, phase, direction, blocks, batch)

    def upload(self, c: str, network, phase: Phase, kind: MessageKind, nbytes: int) -> str | None:
        if not _net(self.splits[c], network).server:
            return None
        return self.emit.send(kind, c, SERVER_ID, self.rnd, self.step, phase, nbytes)

    def server(self, network, phase: Phase, direction: str, multiplier: int, uploads: dict[str, str | None],
               kind: MessageKind, size) -> dict[str, str | None]:
        """Receive every upload, run the batched compute, send each participant its slice."""
        costs, splits = self.costs, self.splits
        users = [c for c in self.clients if _net(splits[c], network).server]
        if not users:
            return {}
        for c in users:
            self.emit.receive(SERVER_ID, uploads[c])
        samples: dict[str, int] = {}
        for name in network.block_names:
            through = [c for c in users if name in _net(splits[c], network).server]
            if through:
                samples[name] = sum(multiplier * self.batch[c] for c in through)
        flops = sum(costs.flops((name,), direction) * n for name, n in samples.items())
        batch = sum(multiplier * self.batch[c] for c in users)
        self.emit.compute(SERVER_ID, self.rnd, self.step, phase, direction, tuple(samples), batch, flops)
        return {c: self.emit.send(kind, SERVER_ID, c, self.rnd, self.step, phase, size(c, _net(splits[c], network)))
                for c in users}

    def round_trip(self, network, phase: Phase, direction: str, multiplier: int,
                   before: Callable[[NetworkSplit], tuple[str, ...]], up: Callable[[NetworkSplit], tuple[str, ...]],
                   down: Callable[[NetworkSplit], tuple[str, ...]], after: Callable[[NetworkSplit], tuple[str, ...]]) -> None:
        """Clients compute ``before`` and upload (the output of ``up``'s last block); the server
        computes batched and sends each client ``down``'s output; clients then compute ``after``."""
        kind = MessageKind.ACTIVATION if direction == "fwd" else MessageKind.GRADIENT
        batch = {c: multiplier * self.batch[c] for c in self.clients}
        ups = {}
        for c in self.clients:
            part = _net(self.splits[c], network)
            self.compute(c, phase, direction, before(part), batch[c])
            ups[c] = self.upload(c, network, phase, kind, batch[c] * self.out(up(part)) if part.server else 0)
        downs = self.server(network, phase, direction, multiplier, ups, kind,
                            lambda c, part: batch[c] * self.out(down(part)))
        for c in self.clients:
            part = _net(self.splits[c], network)
            if part.server:
                self.emit.receive(c, downs[c])
                self.compute(c, phase, direction, after(part), batch[c])

    def out(self, blocks: tuple[str, ...]) -> int:
        return _last_out_bytes(self.costs, blocks)

    def run(self) -> None:
        act = MessageKind.ACTIVATION
        clients, splits, B = self.clients, self.splits, self.batch
        G, D = GENERATOR, DISCRIMINATOR

        def head(part: NetworkSplit) -> tuple[str, ...]:
            return part.head

        def server(part: NetworkSplit) -> tuple[str, ...]:
            return part.server

        def tail(part: NetworkSplit) -> tuple[str, ...]:
            return part.tail

        # 1. G forward: head -> server middle -> tail.
        self.round_trip(G, Phase.G_FWD, "fwd", 1, head, head, server, tail)

        # 2. D forward on fake and real: both heads go up before either result comes back.
        fake_ups, real_ups = {}, {}
        for c in clients:
            d = splits[c].discriminator
            self.compute(c, Phase.D_FAKE, "fwd", d.head, B[c])
            fake_ups[c] = self.upload(c, D, Phase.D_FAKE, act, B[c] * self.out(d.head))
            self.compute(c, Phase.D_REAL, "fwd", d.head, B[c])
            real_ups[c] = self.upload(c, D, Phase.D_REAL, act, B[c] * self.out(d.head))
        fake_downs = self.server(D, Phase.D_FAKE, "fwd", 1, fake_ups, act, lambda c, s: B[c] * self.out(s.server))
        real_downs = self.server(D, Phase.D_REAL, "fwd", 1, real_ups, act, lambda c, s: B[c] * self.out(s.server))
        for c in clients:
            d = splits[c].discriminator
            if d.server:
                self.emit.receive(c, fake_downs[c])
                self.compute(c, Phase.D_FAKE, "fwd", d.tail, B[c])
                self.emit.receive(c, real_downs[c])
                self.compute(c, Phase.D_REAL, "fwd", d.tail, B[c])

        # 3. D backward of both passes together (2B); 4. G's adversarial pass through D;
        # 5. its backward through D, down to the fake image; 6. G backward: tail -> middle -> head.
        self.round_trip(D, Phase.D_BWD, "bwd", 2, _backward_blocks, server, head, head)
        self.round_trip(D, Phase.G_ADV, "fwd", 1, head, head, server, tail)
        self.round_trip(D, Phase.G_ADV_BWD, "bwd", 1, _backward_blocks, server, head, head)
        self.round_trip(G, Phase.G_BWD, "bwd", 1, _backward_blocks, server, head, head)


def client_param_bytes(split: ClientSplit, costs: ModelCosts) -> int:
    """Bytes of a client's parameters and float buffers: what it sends up at round end."""
    return sum(costs[name].param_bytes for name in split.client_blocks)


def _aggregation(emit: _Emitter, clients: list[str], splits: Mapping[str, ClientSplit], costs: ModelCosts,
                 rnd: int) -> None:
    step = ROUND_LEVEL_STEP
    sizes = {c: client_param_bytes(splits[c], costs) for c in clients}
    for c in clients:
        emit.receive(SERVER_ID, emit.send(MessageKind.PARAMS, c, SERVER_ID, rnd, step, Phase.FEDERATE, sizes[c]))
    # Averaging reads every float element the clients sent once (fp32): cheap, but not free.
    elements = sum(sizes.values()) / 4
    emit.compute(SERVER_ID, rnd, step, Phase.FEDERATE, "fwd", (), len(clients), float(elements), always=True)
    for c in clients:
        # The engine's client clears its consumed list after loading the aggregate; the tracer
        # adds the dependency back (round-level messages gate the receiver's next compute).
        emit.send(MessageKind.AGGREGATE, SERVER_ID, c, rnd, step, Phase.FEDERATE, sizes[c])


__all__ = ["COMPUTE", "TRANSFER", "Operation", "OperationTracer", "client_param_bytes", "trace_from_plan"]
