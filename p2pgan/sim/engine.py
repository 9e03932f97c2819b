"""Virtual time: a SimPy model that prices a trace of operations on a topology.

Resources: every node's CPU (one computation at a time, at ``clock_hz * flops_per_cycle * cores``
FLOP/s), every client's access link per direction, every shared segment per direction. A node
runs its computes in program order, each once its consumed messages have arrived. A transfer
starts once the sender's last compute before it finished, then crosses its hops in order: at each
hop it queues (FIFO) for the hop, holds it for ``bytes * 8 / bps`` seconds, releases it, and
travels ``latency_s`` more without holding anything (so back-to-back messages pipeline).

A dedicated link is used by one sender only, in that sender's program order, so it never delays
anything beyond what the analytic model already counts; only shared segments (and the server's
one CPU, which the analytic model also counts) produce contention.

Faults (``conditions``, a :class:`~p2pgan.plan.faults.FaultPlan`): a straggler's computes take
``compute_factor`` times longer and its access link (both directions) carries ``link_factor``
times fewer bits per second; a message on a lossy access link holds that link once per copy sent
(``retransmissions + 1``: link-level resends, back to back), while the rest of its path carries it
once. Absent clients are priced by their absence from the trace.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import simpy

from p2pgan.protocol.messages import ROUND_LEVEL_STEP

from p2pgan.ids import SERVER_ID
from p2pgan.errors import P2PGanError
from p2pgan.topology.profiles import Hop, Topology
from p2pgan.sim.trace import Operation


class Conditions(Protocol):
    """How much slower each client computes and sends, and how often a message is lost
    (:class:`~p2pgan.plan.faults.FaultPlan` is one)."""

    def compute_factor(self, client: str) -> float: ...

    def link_factor(self, client: str) -> float: ...

    def retransmissions(self, round_: int, step: int, phase: object, src: str, dst: str) -> int: ...


CRITICAL_PATH_SHOWN = 2000
"""At most this many (final) steps of the critical path go into ``to_json``."""


@dataclass
class SimReport:
    """What a priced trace costs in simulated seconds, and where the time went."""

    iteration_seconds: dict[tuple[int, int], float]
    """Per ``(round, step)``: completion of that iteration minus completion of the one before
    (or of the previous round's exchange). In steady state this is the time per iteration."""
    iteration_end_s: dict[tuple[int, int], float]
    round_seconds: dict[int, float]
    """Per round: its end (parameter exchange included) minus the previous round's end."""
    federate_seconds: dict[int, float]
    """Per round: the part of ``round_seconds`` after the last iteration (the exchange)."""
    total_seconds: float
    node_busy_s: dict[str, float]
    link_busy_s: dict[str, float]
    bytes_sent: dict[str, int]
    bytes_received: dict[str, int]
    critical_path: list[str]
    critical_path_breakdown: dict[str, float]
    num_operations: int = 0
    finish_s: list[float] = field(default_factory=list, repr=False)

    @property
    def mean_iteration_seconds(self) -> float:
        values = list(self.iteration_seconds.values())
        return sum(values) / len(values) if values else 0.0

    @property
    def first_iteration_seconds(self) -> float:
        return self.iteration_seconds[min(self.iteration_seconds)] if self.iteration_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": "simulated seconds",
            "mean_iteration_s": self.mean_iteration_seconds,
            "total_s": self.total_seconds,
            "iterations": [
                {"round": r, "step": s, "seconds": self.iteration_seconds[(r, s)], "end_s": self.iteration_end_s[(r, s)]}
                for r, s in sorted(self.iteration_seconds)
            ],
            "rounds": [
                {"round": r, "seconds": self.round_seconds[r], "federate_s": self.federate_seconds.get(r, 0.0)}
                for r in sorted(self.round_seconds)
            ],
            "nodes": {
                node: {"busy_s": self.node_busy_s.get(node, 0.0), "bytes_sent": self.bytes_sent.get(node, 0),
                       "bytes_received": self.bytes_received.get(node, 0)}
                for node in sorted(set(self.node_busy_s) | set(self.bytes_sent) | set(self.bytes_received))
            },
            "links_busy_s": dict(sorted(self.link_busy_s.items())),
            "critical_path_breakdown_s": self.critical_path_breakdown,
            "critical_path_length": len(self.critical_path),
            # A long run's path has tens of thousands of steps; its end is what explains the total.
            "critical_path": self.critical_path[-CRITICAL_PATH_SHOWN:],
            "num_operations": self.num_operations,
        }


class _Run:
    def __init__(self, operations: Sequence[Operation], topology: Topology, assignment: Mapping[str, str],
                 conditions: Conditions | None = None) -> None:
        self.ops = operations
        self.topology = topology
        self.assignment = assignment
        self.conditions = conditions
        self.env = simpy.Environment()
        n = len(operations)
        self.done = [self.env.event() for _ in range(n)]
        self.start = [0.0] * n
        self.finish = [0.0] * n
        self.pred: list[int | None] = [None] * n
        self.node_busy: dict[str, float] = defaultdict(float)
        self.link_busy: dict[str, float] = defaultdict(float)
        self.links: dict[str, simpy.Resource] = {}
        self.last_user: dict[str, int] = {}
        self.cpus: dict[str, simpy.Resource] = {}
        self._rates: dict[str, float] = {}
        self._paths: dict[tuple[str, str], tuple[Hop, ...]] = {}

    # -- lookups ---------------------------------------------------------------------------------

    def rate(self, node: str) -> float:
        rate = self._rates.get(node)
        if rate is None:
            profile = self.assignment.get(node)
            if profile is None:
                raise P2PGanError(f"no profile assigned to node {node!r}")
            rate = self.topology.profile(profile).flops_per_s
            self._rates[node] = rate
        return rate

    def path(self, src: str, dst: str) -> tuple[Hop, ...]:
        key = (src, dst)
        hops = self._paths.get(key)
        if hops is None:
            if dst == SERVER_ID and src != SERVER_ID:
                hops = self.topology.path(src, self._profile(src), "up")
            elif src == SERVER_ID and dst != SERVER_ID:
                hops = self.topology.path(dst, self._profile(dst), "down")
            else:
                raise P2PGanError(f"transfer {src}->{dst}: only client<->server traffic has a path in a topology")
            self._paths[key] = hops
        return hops

    def _profile(self, node: str) -> str:
        profile = self.assignment.get(node)
        if profile is None:
            raise P2PGanError(f"no profile assigned to node {node!r}")
        return profile

    def link(self, name: str) -> simpy.Resource:
        res = self.links.get(name)
        if res is None:
            res = self.links[name] = simpy.Resource(self.env, capacity=1)
        return res

    # -- processes --------------------------------------------------------------------------------

    def _latest(self, candidates: Sequence[int]) -> int | None:
        best, best_t = None, -1.0
        for i in candidates:
            if self.finish[i] > best_t:
                best, best_t = i, self.finish[i]
        return best

    def node_process(self, node: str, indices: list[int]):
        env, ops, done = self.env, self.ops, self.done
        cpu = self.cpus.setdefault(node, simpy.Resource(env, capacity=1))
        rate = self.rate(node)
        if self.conditions is not None and node != SERVER_ID:
            rate /= self.conditions.compute_factor(node)
        previous: int | None = None
        for i in indices:
            op = ops[i]
            for d in op.deps:
                yield done[d]
            with cpu.request() as req:
                yield req
                self.start[i] = env.now
                duration = op.flops / rate
                yield env.timeout(duration)
            self.node_busy[node] += duration
            self.finish[i] = env.now
            self.pred[i] = self._latest([*op.deps, *([previous] if previous is not None else [])])
            previous = i
            done[i].succeed()

    def transfer_process(self, i: int):
        env, op, done = self.env, self.ops[i], self.done
        for d in op.deps:
            yield done[d]
        self.start[i] = env.now
        pred = self._latest(op.deps)
        bits = op.nbytes * 8.0
        access_bits = bits
        if self.conditions is not None:
            client = op.dst if op.node == SERVER_ID else op.node
            copies = 1 + self.conditions.retransmissions(op.round, op.step, op.phase, op.node, op.dst)
            access_bits = bits * copies * self.conditions.link_factor(client)
        for hop in self.path(op.node, op.dst):
            res = self.link(hop.resource)
            arrived = env.now
            with res.request() as req:
                yield req
                blocker = self.last_user.get(hop.resource)
                # Queued behind another transfer: that one bound our start. Only a transfer that
                # has fully arrived qualifies, which keeps the predecessor graph acyclic.
                if env.now > arrived and blocker is not None and self.done[blocker].triggered:
                    pred = blocker
                hold = (bits if hop.shared else access_bits) / hop.bps
                yield env.timeout(hold)
                self.link_busy[hop.resource] += hold
                self.last_user[hop.resource] = i
            if hop.latency_s:
                yield env.timeout(hop.latency_s)
        self.finish[i] = env.now
        self.pred[i] = pred
        done[i].succeed()

    def run(self) -> None:
        per_node: dict[str, list[int]] = defaultdict(list)
        for op in self.ops:
            if op.is_compute:
                per_node[op.node].append(op.index)
        for node, indices in per_node.items():
            self.env.process(self.node_process(node, indices))
        for op in self.ops:
            if not op.is_compute:
                self.env.process(self.transfer_process(op.index))
        self.env.run()
        stuck = [op.index for op in self.ops if not self.done[op.index].triggered]
        if stuck:
            raise P2PGanError(f"the trace has {len(stuck)} operations that can never run "
                              f"(a dependency cycle?), first: {self.ops[stuck[0]].describe()}")


def simulate(operations: Sequence[Operation], topology: Topology, assignment: Mapping[str, str],
             conditions: Conditions | None = None) -> SimReport:
    """Price ``operations`` on ``topology`` (nodes mapped to profiles by ``assignment``), with
    stragglers and lossy links as ``conditions`` says (default: none)."""
    ops = list(operations)
    for position, op in enumerate(ops):
        if op.index != position:
            raise ValueError("operations must be the list a tracer returned (index == position)")
    run = _Run(ops, topology, assignment, conditions)
    run.run()
    return _report(run)


def _report(run: _Run) -> SimReport:
    ops, finish = run.ops, run.finish
    iteration_end: dict[tuple[int, int], float] = {}
    round_end: dict[int, float] = {}
    sent: dict[str, int] = defaultdict(int)
    received: dict[str, int] = defaultdict(int)
    for op in ops:
        t = finish[op.index]
        round_end[op.round] = max(round_end.get(op.round, 0.0), t)
        if op.step != ROUND_LEVEL_STEP:
            key = (op.round, op.step)
            iteration_end[key] = max(iteration_end.get(key, 0.0), t)
        if not op.is_compute:
            sent[op.node] += op.nbytes
            received[op.dst] += op.nbytes

    iteration_seconds: dict[tuple[int, int], float] = {}
    round_seconds: dict[int, float] = {}
    federate_seconds: dict[int, float] = {}
    boundary = 0.0
    for rnd in sorted(round_end):
        round_start = boundary
        for key in sorted(k for k in iteration_end if k[0] == rnd):
            iteration_seconds[key] = iteration_end[key] - boundary
            boundary = iteration_end[key]
        federate_seconds[rnd] = round_end[rnd] - boundary
        round_seconds[rnd] = round_end[rnd] - round_start
        boundary = round_end[rnd]

    path, breakdown = _critical_path(run)
    return SimReport(
        iteration_seconds=iteration_seconds,
        iteration_end_s=iteration_end,
        round_seconds=round_seconds,
        federate_seconds=federate_seconds,
        total_seconds=max(finish, default=0.0),
        node_busy_s=dict(run.node_busy),
        link_busy_s=dict(run.link_busy),
        bytes_sent=dict(sent),
        bytes_received=dict(received),
        critical_path=path,
        critical_path_breakdown=breakdown,
        num_operations=len(ops),
        finish_s=list(finish),
    )


def _critical_path(run: _Run) -> tuple[list[str], dict[str, float]]:
    """Walk back from the last operation to finish along the predecessor that bound each start."""
    ops, finish, start = run.ops, run.finish, run.start
    if not ops:
        return [], {}
    last = max(range(len(ops)), key=lambda i: (finish[i], -i))
    chain: list[int] = []
    i: int | None = last
    seen: set[int] = set()
    while i is not None and i not in seen:
        seen.add(i)
        chain.append(i)
        i = run.pred[i]
    chain.reverse()
    breakdown = {"client_compute_s": 0.0, "server_compute_s": 0.0, "transfer_s": 0.0}
    lines = []
    for i in chain:
        op = ops[i]
        duration = finish[i] - start[i]
        if op.is_compute:
            breakdown["server_compute_s" if op.node == SERVER_ID else "client_compute_s"] += duration
        else:
            breakdown["transfer_s"] += duration
        lines.append(f"{start[i]:.6f}-{finish[i]:.6f}s {op.describe()}")
    return lines, breakdown
