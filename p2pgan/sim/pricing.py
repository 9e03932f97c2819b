"""Pricing whole plans: reference policies, one plan on a topology, both models side by side.

The ``cuts`` and ``whatif`` commands and the benchmark share this so that every number they print
comes from the same path: plan -> synthetic trace -> SimPy, next to the analytic model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pgan.ids import SERVER_ID
from p2pgan.errors import P2PGanError
from p2pgan.model.costs import ModelCosts
from p2pgan.ids import client_id
from p2pgan.model.policies import CUT_POLICIES
from p2pgan.model.segments import ClientCut, ClientSplit, split_client
from p2pgan.sim.analytic import analytic_iteration_seconds
from p2pgan.sim.engine import SimReport, simulate
from p2pgan.topology.profiles import Topology
from p2pgan.sim.trace import trace_from_plan

REFERENCE_POLICIES = ("all-offload", "all-local", "full-model")
"""all-offload: every movable block on the server; all-local: every movable block on the client;
full-model: every block on the client, no server during iterations (FedAvg-GAN style)."""


def client_ids_for(count: int) -> list[str]:
    """The engine's client ids (``c000``, ``c001``, ... ``c1000``) for ``count`` clients."""
    return [client_id(i) for i in range(count)]


def policy_splits(policy: str, client_ids: Sequence[str]) -> dict[str, ClientSplit]:
    found = CUT_POLICIES.get(policy)
    if found is None or policy not in REFERENCE_POLICIES:
        raise P2PGanError(f"unknown policy {policy!r} (expected one of: {', '.join(REFERENCE_POLICIES)})")
    return {cid: split_client(cut, full_local=found.full_local) for cid, cut in found.cuts(client_ids).items()}


def cuts_to_splits(cuts: Mapping[str, ClientCut]) -> dict[str, ClientSplit]:
    return {cid: split_client(cut) for cid, cut in cuts.items()}


@dataclass(frozen=True)
class PlanPrice:
    """One plan's latency: analytic and SimPy seconds per iteration, the round-end exchange."""

    name: str
    analytic_s: float
    simulated_s: float
    """SimPy, one iteration from an idle start."""
    federate_s: float
    """SimPy, the parameter exchange at round end (PARAMS up, averaging, AGGREGATE down)."""
    server_busy_s: float
    bytes_per_iteration: int
    report: SimReport

    def as_row(self) -> dict[str, float | str | int]:
        return {"plan": self.name, "analytic_s_per_iter": self.analytic_s, "sim_s_per_iter": self.simulated_s,
                "federate_s": self.federate_s, "server_busy_s": self.server_busy_s,
                "bytes_per_iter": self.bytes_per_iteration}


def price_plan(name: str, splits: Mapping[str, ClientSplit], costs: ModelCosts, batch_size: int,
               topology: Topology, assignment: Mapping[str, str], aggregation: bool = True) -> PlanPrice:
    batches = {cid: batch_size for cid in splits}
    ops = trace_from_plan(splits, costs, batches, iterations=1, include_aggregation=aggregation)
    report = simulate(ops, topology, assignment)
    analytic = analytic_iteration_seconds(splits, costs, batches, topology, assignment)
    iteration_ops = [op for op in ops if op.step >= 0 and not op.is_compute]
    server_busy = sum(op.flops for op in ops if op.is_compute and op.node == SERVER_ID and op.step >= 0)
    return PlanPrice(
        name=name,
        analytic_s=analytic,
        simulated_s=report.first_iteration_seconds,
        federate_s=sum(report.federate_seconds.values()) if aggregation else 0.0,
        server_busy_s=server_busy / topology.server.flops_per_s,
        bytes_per_iteration=sum(op.nbytes for op in iteration_ops),
        report=report,
    )
