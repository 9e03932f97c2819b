"""Simulated latency for a real run: trace it on the bus, price it at the end, write it down.

The session calls :func:`latency_extension` before the run starts (same signature as its other
extensions) and the returned function when the run ends. The results folder then holds

* ``latency.json``: the full :class:`~p2pgan.sim.engine.SimReport` (per iteration, per round,
  per node busy seconds and bytes, critical path), the topology and the profile of every node;
* ``latency_iterations.csv`` and ``latency_nodes.csv``: the same per iteration / per node.

Those three files hold simulated quantities only, so two runs with the same seed write identical
files; the wall time (which varies) goes to the summary, beside the simulated time.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2pgan.ids import SERVER_ID
from p2pgan.protocol.events import AggregationDone
from p2pgan.protocol.events import ComputeEvent, SimulatedTime
from p2pgan.bus import EventBus
from p2pgan.sim.analytic import analytic_iteration_seconds
from p2pgan.sim.engine import SimReport, simulate
from p2pgan.topology.profiles import Topology, default_topology_path, load_topology
from p2pgan.sim.trace import OperationTracer, trace_from_plan


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


class _PlannedTrace:
    """Stands in for the tracer where other nodes run elsewhere: the plan's operations per round."""

    def __init__(self, prepared) -> None:
        self._prepared = prepared
        self._rounds = 0

    def __call__(self, event: object) -> None:
        if isinstance(event, AggregationDone):
            self._rounds = max(self._rounds, event.round)

    def operations(self) -> list:
        if not self._rounds:
            return []
        plan = self._prepared.plan
        splits = {c.client_id: c.split for c in plan.clients}
        batches = {c.client_id: plan.schedule.batch_size for c in plan.clients}
        return trace_from_plan(splits, self._prepared.setup.costs, batches, plan.schedule.steps_per_round,
                               include_aggregation=True, rounds=self._rounds)


class _LiveSimulatedTime:
    """Publishes simulated time so far after each round, priced once by the analytic model."""

    def __init__(self, prepared, topology: Topology, assignment: Mapping[str, str], bus: EventBus) -> None:
        plan = prepared.plan
        splits = {c.client_id: c.split for c in plan.clients}
        batches = {c.client_id: plan.schedule.batch_size for c in plan.clients}
        self._per_round = plan.schedule.steps_per_round * analytic_iteration_seconds(
            splits, prepared.setup.costs, batches, topology, assignment)
        self._bus = bus
        self._started = time.perf_counter()

    def __call__(self, event: object) -> None:
        if isinstance(event, AggregationDone):
            self._bus.publish(SimulatedTime(event.round, self._per_round * event.round,
                                            time.perf_counter() - self._started))


def write_latency(directory: Path, report: SimReport, topology: Topology, assignment: Mapping[str, str]) -> None:
    """The deterministic latency files of a results folder."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "topology": topology.name,
        "topology_file": topology.source,
        "profiles": dict(sorted(assignment.items())),
        **report.to_json(),
    }
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


def scenario_topology(prepared) -> Topology | None:
    """The scenario's topology, else the paper's edge topology of this checkout, else none."""
    path = prepared.scenario.topology or default_topology_path()
    return load_topology(path) if Path(path).is_file() else None


def scenario_profiles(prepared) -> dict[str, str]:
    """Device profile per node id (empty when there is no topology to assign from)."""
    topology = scenario_topology(prepared)
    return topology.assign_profiles(list(prepared.plan.client_ids)) if topology is not None else {}


def latency_extension(prepared, bus: EventBus, writer, sees_all_nodes: bool = True) -> Callable[[str], dict[str, Any]]:
    """Attach the tracer to ``bus``; the returned callable prices the run and writes the files.

    ``prepared`` is the run's :class:`~p2pgan.engine.runner.PreparedRun`; ``writer`` its results
    writer (only ``writer.directory`` is used). Without ``topology:`` in the scenario the paper's
    edge topology is used. After every round a :class:`~p2pgan.events.SimulatedTime` estimate
    (the analytic per-iteration time, exact without shared capacities) goes on the bus for live
    views; the files written at the end come from the SimPy engine.

    A process that hosts only some nodes (``sees_all_nodes=False``, e.g. the server process of a
    multi-process run) cannot observe the other nodes' operations; it prices the plan's
    operations for the rounds it completed instead (``trace_from_plan``, which the tests prove
    equal to a recorded trace).
    """
    topology = scenario_topology(prepared)
    if topology is None:
        return lambda status: {}
    assignment = topology.assign_profiles(list(prepared.plan.client_ids))
    tracer = OperationTracer() if sees_all_nodes else _PlannedTrace(prepared)
    clock = _WallClock()
    bus.subscribe(tracer)
    bus.subscribe(clock)
    bus.subscribe(_LiveSimulatedTime(prepared, topology, assignment, bus))

    def finish(status: str) -> dict[str, Any]:
        ops = tracer.operations()
        if not ops:
            return {}
        report = simulate(ops, topology, assignment)
        write_latency(Path(writer.directory), report, topology, assignment)
        return {"latency": {
            "topology": topology.name,
            "sim_s_per_iteration": report.mean_iteration_seconds,
            "sim_s_per_round": (sum(report.round_seconds.values()) / len(report.round_seconds)
                                if report.round_seconds else 0.0),
            "sim_total_s": report.total_seconds,
            "wall_s_per_iteration": clock.mean_iteration_s(),
            "iterations": len(report.iteration_seconds),
            "status": status,
        }}

    return finish
