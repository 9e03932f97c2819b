"""The run's :class:`~p2pgan.plan.faults.FaultPlan`, built during the one prepare walk.

The plan layer resolves ``faults:`` against the clients and the schedule; the round deadline
needs prices (each client's own round in virtual seconds), which only the run layer may ask the
simulator for, on the scenario's topology (the packaged paper edge topology without one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from p2pgan.config.schema import Scenario
from p2pgan.errors import ConfigError
from p2pgan.model.costs import ModelCosts
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.nodedata import ClientRecord
from p2pgan.plan.program import Program
from p2pgan.plan.run import RunPlan
from p2pgan.sim.faults import own_rounds
from p2pgan.topology.profiles import default_topology_path, load_topology


def build_fault_plan(scenario: Scenario, plan: RunPlan, records: Sequence[ClientRecord], program: Program,
                     costs: ModelCosts) -> FaultPlan:
    """The scenario's faults for ``plan`` (no faults: :meth:`FaultPlan.none`). Raises a one-line
    :class:`ConfigError` for a step beyond a round or a round whose federation would have nobody."""
    spec, schedule = scenario.faults, plan.schedule
    if spec == type(spec)():
        return FaultPlan.none(plan.client_ids, schedule.rounds, schedule.steps_per_round)
    source = _source(scenario)
    domain_clients: dict[str, list[str]] = {}
    for record in records:
        domain_clients.setdefault(record.domain, []).append(record.client_id)
    faults = FaultPlan.from_spec(spec, domain_clients, schedule.rounds, schedule.steps_per_round, scenario.seed,
                                 source)
    if faults.round_deadline_s is not None:
        path = scenario.topology or default_topology_path()
        topology = load_topology(Path(path), scenario.topology_overrides)
        assignment = topology.assign_profiles(list(plan.client_ids))
        splits = {c.client_id: c.split for c in plan.clients}
        batches = {c.client_id: schedule.batch_size for c in plan.clients}
        own = own_rounds(program, splits, costs, batches, topology, assignment, faults, schedule.steps_per_round,
                         server_batch=schedule.batch_size)
        faults = faults.with_deadline({c: o.round_s for c, o in own.items()},
                                      {c: o.iteration_s for c, o in own.items()})
    return faults.check_every_round_federates(source)


def refuse_pooled_faults(scenario: Scenario) -> None:
    """A strategy that pools every partition into one node (centralized) has no clients to fault."""
    spec = scenario.faults
    if spec.dropout or spec.stragglers or spec.lossy_links or spec.round_deadline_s is not None:
        raise ConfigError(_source(scenario), "faults",
                          f"strategy {scenario.strategy.name} pools every client's data into one node, so there "
                          "are no clients to fault (expected no dropout, stragglers, lossy_links or round_deadline_s)")


def _source(scenario: Scenario) -> str:
    return str(scenario.source) if scenario.source is not None else "scenario"


__all__ = ["build_fault_plan", "refuse_pooled_faults"]
