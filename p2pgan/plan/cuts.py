"""Turning the scenario's ``cuts:`` section into one :class:`ClientCut` per client."""

from __future__ import annotations

from collections.abc import Sequence

from p2pgan.config.schema import Scenario
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientCut, all_cut_options

POLICY_CUTS = {
    "all-offload": ClientCut(0, 0, 0, 0),
    "all-local": ClientCut(1, 1, 1, 1),
}


def resolve_cuts(scenario: Scenario, client_ids: Sequence[str], costs: ModelCosts) -> dict[str, ClientCut]:
    spec = scenario.cuts
    if spec.fixed is not None:
        return {cid: ClientCut.of(spec.fixed) for cid in client_ids}
    if spec.per_client is not None:
        return {cid: ClientCut.of(cut) for cid, cut in zip(client_ids, spec.per_client)}
    if spec.policy == "mixed":
        # Every legal cut in turn: the most heterogeneous plan, good for exercising the engine.
        options = all_cut_options()
        return {cid: options[i % len(options)] for i, cid in enumerate(client_ids)}
    if spec.policy is not None:
        return {cid: POLICY_CUTS[spec.policy] for cid in client_ids}
    return _searched_cuts(scenario, client_ids, costs)


def _searched_cuts(scenario: Scenario, client_ids: Sequence[str], costs: ModelCosts) -> dict[str, ClientCut]:
    from p2pgan.sim.search import search_cuts
    from p2pgan.topology.profiles import load_topology

    assert scenario.topology is not None and scenario.cuts.search is not None
    topology = load_topology(scenario.topology)
    assignment = topology.assign_profiles(list(client_ids))
    return search_cuts(scenario.cuts.search, list(client_ids), costs, scenario.training.batch_size,
                       topology, assignment, scenario.seed)
