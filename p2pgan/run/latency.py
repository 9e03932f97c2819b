"""Simulated latency for a real run: trace it on the bus, price it at the end, write it down.

The session attaches :class:`LatencyExtension` behind the round closer; when the run ends it
prices every operation and the results folder holds

* ``latency.json``: the full :class:`~p2pgan.sim.engine.SimReport` (per iteration, per round,
  per node busy seconds and bytes, critical path), the topology and the profile of every node;
* ``latency_iterations.csv`` and ``latency_nodes.csv``: the same per iteration / per node.

Those three files hold simulated quantities only, so two runs with the same seed write identical
files; the wall time (which varies) goes to the summary, beside the simulated time.

With ``faults:`` the price is of what happened: absent clients are absent from the trace,
stragglers and lossy links slow what they touch (:func:`~p2pgan.sim.engine.simulate` takes the
fault plan), and ``latency.json`` gains a ``faults`` section (the faults in force and who took
part in each round, peers dropped under ``policy: continue`` included).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.ids import SERVER_ID
from p2pgan.protocol.events import ComputeEvent, ParticipationChanged, RoundAggregated, TransferEvent
from p2pgan.protocol.messages import MessageKey, MessageKind, Phase
from p2pgan.bus import EventBus
from p2pgan.sim.analytic import analytic_iteration_seconds
from p2pgan.sim.engine import SimReport, simulate
from p2pgan.topology.profiles import Topology, default_topology_path, load_topology
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.program import Broadcast, Program
from p2pgan.sim.faults import RoundEstimates
from p2pgan.sim.trace import OperationTracer, trace_from_program


class _WallClock:
    """Wall time from the first compute of the run to the last compute of each iteration."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.iteration_end: dict[tuple[int, int], float] = {}

    def __call__(self, event: object) -> None:
        if isinstance(event, ComputeEvent):
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            if event.step >= 0:
                self.iteration_end[(event.round, event.step)] = now - self.first

    def mean_iteration_s(self) -> float:
        """Training wall time per iteration (round-end aggregation included, startup not)."""
        if not self.iteration_end:
            return 0.0
        return max(self.iteration_end.values()) / len(self.iteration_end)


class _Participation:
    """The fault plan as the run lived it: the prepared plan, plus every peer a node dropped
    (a ``ParticipationChanged`` whose ``present`` lacks a client the plan had there)."""

    def __init__(self, faults: FaultPlan) -> None:
        self.faults = faults
        self._prepared = len(faults.absences)

    def dropped_peers(self) -> list[list[Any]]:
        """``[client, round, step]`` of every peer dropped since the run was prepared (for checkpoints)."""
        return [[a.client, a.from_round, a.from_step] for a in self.faults.absences[self._prepared:]]

    def __call__(self, event: object) -> None:
        # Iteration steps only: at a round's end (step -1) the late are absent by plan, not dropped.
        if isinstance(event, ParticipationChanged) and 0 <= event.step < self.faults.steps_per_round:
            shown = set(event.present)
            for cid in sorted(self.faults.present(event.round, event.step) - shown):
                self.faults = self.faults.with_dropped(cid, event.round, event.step, "peer")


class _PlannedTrace:
    """Stands in for the tracer where other nodes run elsewhere: the plan's operations per round."""

    def __init__(self, prepared, program: Program, participation: _Participation) -> None:
        self._prepared = prepared
        self._program = program
        self._participation = participation
        self._rounds = 0

    def __call__(self, event: object) -> None:
        if isinstance(event, RoundAggregated):
            self._rounds = max(self._rounds, event.round)

    def resume_after(self, round_: int) -> None:
        self._rounds = round_

    def operations(self) -> list:
        if not self._rounds:
            return []
        plan = self._prepared.plan
        splits = {c.client_id: c.split for c in plan.clients}
        batches = {c.client_id: plan.schedule.batch_size for c in plan.clients}
        faults = self._participation.faults
        return trace_from_program(self._program, splits, self._prepared.setup.costs, batches,
                                  plan.schedule.steps_per_round, include_aggregation=True, rounds=self._rounds,
                                  server_batch=plan.schedule.batch_size, faults=faults if faults.active else None)


class _EventJournal:
    """What the tracer saw, kept per round until a checkpoint takes it into the latency journal:
    replayed into a fresh tracer, a resumed run's latency files equal an uninterrupted run's."""

    def __init__(self) -> None:
        self._by_round: dict[int, list[list[Any]]] = {}

    def __call__(self, event: object) -> None:
        if isinstance(event, ComputeEvent):
            self._by_round.setdefault(event.round, []).append(
                ["compute", event.node, event.round, event.step, event.phase, event.direction, list(event.blocks),
                 event.batch, event.flops, list(event.consumed)])
        elif isinstance(event, TransferEvent):
            # A message's id is its key written out: kept only where it is not (a third of the bytes).
            msg_id = None if event.msg_id == _message_id(event.kind, event.src, event.dst, event.round, event.step,
                                                          event.phase) else event.msg_id
            self._by_round.setdefault(event.round, []).append(
                ["transfer", msg_id, event.src, event.dst, event.kind, event.round, event.step, event.phase,
                 event.nbytes])

    def take(self, round_: int) -> list[list[Any]]:
        return self._by_round.pop(round_, [])


def _replayed(entry: Sequence[Any]) -> ComputeEvent | TransferEvent:
    kind, *fields = entry
    if kind == "compute":
        node, round_, step, phase, direction, blocks, batch, flops, consumed = fields
        return ComputeEvent(node, round_, step, phase, direction, tuple(blocks), batch, flops, tuple(consumed))
    msg_id, src, dst, kind_, round_, step, phase, nbytes = fields
    if msg_id is None:
        msg_id = _message_id(kind_, src, dst, round_, step, phase)
    return TransferEvent(msg_id, src, dst, kind_, round_, step, phase, nbytes)


def _message_id(kind: str, src: str, dst: str, round_: int, step: int, phase: str) -> str | None:
    try:
        return str(MessageKey(MessageKind(kind), src, dst, round_, step, Phase(phase)))
    except ValueError:  # not a kind or phase of this protocol: the id is kept as it was
        return None


def write_latency(directory: Path, report: SimReport, topology: Topology, assignment: Mapping[str, str],
                  faults: FaultPlan | None = None) -> None:
    """The deterministic latency files of a results folder (``faults``: the plan as lived, whose
    faults and participation go into ``latency.json`` when it has any)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "topology": topology.name,
        "topology_file": topology.source,
        "profiles": dict(sorted(assignment.items())),
        **report.to_json(),
    }
    if faults is not None and faults.active:
        payload["faults"] = fault_section(faults, sorted(report.round_seconds))
    (directory / "latency.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    with (directory / "latency_iterations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", "step", "sim_seconds", "sim_end_s"])
        for (rnd, step) in sorted(report.iteration_seconds):
            writer.writerow([rnd, step, repr(report.iteration_seconds[(rnd, step)]),
                             repr(report.iteration_end_s[(rnd, step)])])
        for rnd in sorted(report.round_seconds):
            writer.writerow([rnd, "round", repr(report.round_seconds[rnd]), ""])
    with (directory / "latency_nodes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["node", "profile", "busy_s", "bytes_sent", "bytes_received"])
        nodes = sorted(set(report.node_busy_s) | set(report.bytes_sent) | set(report.bytes_received),
                       key=lambda n: (n == SERVER_ID, n))
        for node in nodes:
            writer.writerow([node, assignment.get(node, ""), repr(report.node_busy_s.get(node, 0.0)),
                             report.bytes_sent.get(node, 0), report.bytes_received.get(node, 0)])


def fault_section(faults: FaultPlan, rounds: Sequence[int]) -> dict[str, Any]:
    """What ``latency.json`` says about faults: those in force and each priced round's participants."""
    return {
        "policy": faults.policy,
        "seed": faults.seed,
        "round_deadline_s": faults.round_deadline_s,
        "in_force": faults.describe(),
        "rounds": [{"round": r, **faults.participation(r)} for r in rounds],
    }


def scenario_topology(prepared) -> Topology | None:
    """The scenario's topology, else the paper's edge topology of this checkout, else none."""
    path = prepared.scenario.topology or default_topology_path()
    return load_topology(path, prepared.scenario.topology_overrides) if Path(path).is_file() else None


def scenario_profiles(prepared) -> dict[str, str]:
    """Device profile per node id (empty when there is no topology to assign from)."""
    topology = scenario_topology(prepared)
    return topology.assign_profiles(list(prepared.plan.client_ids)) if topology is not None else {}


class LatencyExtension:
    """Prices the run: a simulated-time estimate per round (the analytic per-iteration time,
    exact without shared capacities) for the live views, and at the end the SimPy engine's
    price of every operation, written to the latency files.

    A process that hosts only some nodes (``sees_all_nodes=False``, e.g. the server process of a
    multi-process run) cannot observe the other nodes' operations; it prices the program's
    operations for the rounds it completed instead (``trace_from_program``, which the tests prove
    equal to a recorded trace).
    """

    name = "latency"

    def __init__(self, prepared, bus: EventBus, directory: Path, topology: Topology, program: Program,
                 sees_all_nodes: bool, checkpointed: bool = False) -> None:
        self._directory = Path(directory)
        self._topology = topology
        self._assignment = topology.assign_profiles(list(prepared.plan.client_ids))
        self._participation = _Participation(prepared.faults)
        bus.subscribe(self._participation)
        self._tracer = OperationTracer() if sees_all_nodes else _PlannedTrace(prepared, program, self._participation)
        self._journal = _EventJournal() if checkpointed and sees_all_nodes else None
        self._clock = _WallClock()
        bus.subscribe(self._tracer)
        bus.subscribe(self._clock)
        if self._journal is not None:
            bus.subscribe(self._journal)
        plan = prepared.plan
        splits = {c.client_id: c.split for c in plan.clients}
        batches = {c.client_id: plan.schedule.batch_size for c in plan.clients}
        self._per_round = 0.0
        self._estimates: RoundEstimates | None = None
        if prepared.faults.active:
            self._estimates = RoundEstimates(program, splits, prepared.setup.costs, batches, topology,
                                             self._assignment, prepared.faults, plan.schedule.batch_size)
        else:
            self._per_round = plan.schedule.steps_per_round * _iteration_estimate(
                program, splits, prepared.setup.costs, batches, topology, self._assignment, plan.schedule.batch_size)
        self._round_totals: list[float] = [0.0]
        self._started = time.perf_counter()

    def simulated_s(self, round_: int) -> float:
        """The running estimate after ``round_`` rounds: the analytic iteration times the steps
        so far, or with faults each round's iterations priced with the clients present."""
        if self._estimates is None:
            return self._per_round * round_
        while len(self._round_totals) <= round_:
            done = len(self._round_totals)
            self._round_totals.append(self._round_totals[-1]
                                      + self._estimates.round_seconds(done, self._participation.faults))
        return self._round_totals[round_]

    def round_section(self, event: RoundAggregated) -> dict[str, Any]:
        return {"simulated_s": self.simulated_s(event.round), "wall_s": time.perf_counter() - self._started}

    def checkpoint_round(self, round_: int) -> tuple[dict[str, Any], list[Any] | None]:
        """Nothing but the round's traced operations (journalled); a planned trace only counts
        rounds. Peers dropped during the run (not in the prepared plan) are kept too."""
        state: dict[str, Any] = {"rounds": round_}
        dropped = self._participation.dropped_peers()
        if dropped:
            state["dropped_peers"] = dropped
        if self._journal is None:
            return state, None
        return state, self._journal.take(round_)

    def restore(self, state: Mapping[str, Any], journal: Sequence[Sequence[Any]]) -> None:
        for client, round_, step in state.get("dropped_peers", []):
            self._participation.faults = self._participation.faults.with_dropped(str(client), int(round_), int(step),
                                                                                 "peer")
        if isinstance(self._tracer, _PlannedTrace):
            self._tracer.resume_after(int(state["rounds"]))
            return
        for entries in journal:  # in round order, each round in the order the tracer saw it
            for entry in entries:
                self._tracer(_replayed(entry))

    def finish(self, status: str) -> dict[str, Any]:
        ops = self._tracer.operations()
        if not ops:
            return {}
        faults = self._participation.faults
        report = simulate(ops, self._topology, self._assignment, faults if faults.active else None)
        write_latency(self._directory, report, self._topology, self._assignment, faults)
        return {"latency": {
            "topology": self._topology.name,
            "sim_s_per_iteration": report.mean_iteration_seconds,
            "sim_s_per_round": (sum(report.round_seconds.values()) / len(report.round_seconds)
                                if report.round_seconds else 0.0),
            "sim_total_s": report.total_seconds,
            "wall_s_per_iteration": self._clock.mean_iteration_s(),
            "iterations": len(report.iteration_seconds),
            "status": status,
        }}


def _iteration_estimate(program: Program, splits, costs, batches, topology: Topology, assignment, batch: int) -> float:
    """Seconds per iteration for the live view: the analytic model where it prices the program,
    else SimPy on one iteration of it (server-first programs such as MD-GAN's)."""
    if any(isinstance(step, Broadcast) for step in program.iteration):
        ops = trace_from_program(program, splits, costs, batches, 1, include_aggregation=False, server_batch=batch)
        return simulate(ops, topology, assignment).first_iteration_seconds
    return analytic_iteration_seconds(splits, costs, batches, topology, assignment, program=program)


def latency_extension(prepared, bus: EventBus, directory: Path, program: Program,
                      sees_all_nodes: bool = True, checkpointed: bool = False) -> LatencyExtension | None:
    """The run's latency extension; ``None`` when there is no topology to price on. Without
    ``topology:`` in the scenario the packaged paper edge topology is used."""
    topology = scenario_topology(prepared)
    if topology is None:
        return None
    return LatencyExtension(prepared, bus, directory, topology, program, sees_all_nodes, checkpointed)
