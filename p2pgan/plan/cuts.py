"""Turning the scenario's ``cuts:`` section into one :class:`ClientCut` per client."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from p2pgan.config.schema import Scenario
from p2pgan.model.policies import CUT_POLICIES
from p2pgan.model.segments import ClientCut

CutSearch = Callable[[Scenario, Sequence[str]], dict[str, ClientCut]]
"""Searches the best cuts for ``cuts.search`` (the simulator's, passed in by the composition root)."""


def resolve_cuts(scenario: Scenario, client_ids: Sequence[str], search: CutSearch | None) -> dict[str, ClientCut]:
    spec = scenario.cuts
    if spec.fixed is not None:
        return {cid: ClientCut.of(spec.fixed) for cid in client_ids}
    if spec.per_client is not None:
        return {cid: ClientCut.of(cut) for cid, cut in zip(client_ids, spec.per_client)}
    if spec.policy is not None:
        return CUT_POLICIES[spec.policy].cuts(client_ids)
    if search is None:
        raise ValueError("cuts.search needs a cut search")
    return search(scenario, client_ids)
