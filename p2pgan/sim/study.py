"""Plan comparisons and what-if grids, from plain arguments (the CLI commands are thin on top).

A :class:`Setting` is everything that prices a plan: measured block costs (profiled once), the
client ids, the batch, the topology and who runs which profile. A *plan spec* names how the cuts
are chosen: ``exact`` / ``ga`` (search), ``all-offload`` / ``all-local`` / ``full-model``
(reference policies), ``mixed`` (the engine's every-option-in-turn policy), four digits such as
``0110`` (one cut for all), or an explicit ``{client: ClientCut}`` mapping.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from p2pgan.config.keys import CUTS, KeyValues, cut_digits, parse_assignment
from p2pgan.config.loader import read_scenario, scenario_from
from p2pgan.config.schema import Scenario
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.costs import ModelCosts, profile_model
from p2pgan.model.segments import ClientCut, ClientSplit, all_cut_options, split_client, validate_cut
from p2pgan.sim.pricing import (REFERENCE_POLICIES, PlanPrice, client_ids_for, cuts_to_splits, policy_splits,
                                price_plan)
from p2pgan.sim.search import GAParams, SearchResult, run_search
from p2pgan.topology.profiles import Topology, default_topology_path, load_topology

PlanSpec = Union[str, Mapping[str, ClientCut]]

@dataclass(frozen=True)
class Setting:
    costs: ModelCosts
    client_ids: tuple[str, ...]
    batch_size: int
    topology: Topology
    seed: int = 0
    ga: GAParams = field(default_factory=GAParams)

    @property
    def assignment(self) -> dict[str, str]:
        return self.topology.assign_profiles(list(self.client_ids))


@dataclass
class ResolvedPlan:
    name: str
    splits: dict[str, ClientSplit]
    search: SearchResult | None = None

    def cuts(self) -> dict[str, ClientCut | None]:
        """The cut of each client (``None`` for full-model clients, which hold every block)."""
        out: dict[str, ClientCut | None] = {}
        for cid, split in self.splits.items():
            out[cid] = None if not split.server_blocks else _cut_of(split)
        return out


def _cut_of(split: ClientSplit) -> ClientCut:
    for cut in all_cut_options():
        if split_client(cut) == split:
            return cut
    raise ValueError("split matches no cut")


def parse_cut(text: str) -> ClientCut | None:
    """``"0110"``, ``"0,1,1,0"`` or ``"(0,1,1,0)"`` as a cut; ``None`` when it is not one."""
    digits = cut_digits(text)
    return None if digits is None else ClientCut.of(digits)


def resolve_plan(spec: PlanSpec, setting: Setting) -> ResolvedPlan:
    ids = list(setting.client_ids)
    if isinstance(spec, Mapping):
        missing = [cid for cid in ids if cid not in spec]
        if missing:
            raise P2PGanError(f"plan has no cut for client {missing[0]}")
        return ResolvedPlan("scenario plan", cuts_to_splits({cid: spec[cid] for cid in ids}))
    if spec in ("exact", "ga"):
        result = run_search(spec, ids, setting.costs, setting.batch_size, setting.topology, setting.assignment,
                            setting.seed, setting.ga)
        return ResolvedPlan(f"{spec} search", cuts_to_splits(result.cuts), result)
    if spec in REFERENCE_POLICIES:
        return ResolvedPlan(spec, policy_splits(spec, ids))
    if spec == "mixed":
        options = all_cut_options()
        return ResolvedPlan("mixed", {cid: split_client(options[i % len(options)]) for i, cid in enumerate(ids)})
    cut = parse_cut(str(spec))
    if cut is not None:
        problem = validate_cut(cut)
        if problem:
            raise P2PGanError(f"cut {cut}: {problem}")
        return ResolvedPlan(f"fixed {cut}", {cid: split_client(cut) for cid in ids})
    raise P2PGanError(f"unknown plan {spec!r} (expected exact, ga, {', '.join(REFERENCE_POLICIES)}, mixed "
                      "or four cut digits such as 0110)")


def price(plan: ResolvedPlan, setting: Setting, aggregation: bool = True) -> PlanPrice:
    return price_plan(plan.name, plan.splits, setting.costs, setting.batch_size, setting.topology,
                      setting.assignment, aggregation)


def compare_plans(setting: Setting, chosen: PlanSpec, references: Sequence[str] = REFERENCE_POLICIES,
                  also_exact: bool = True) -> tuple[ResolvedPlan, list[PlanPrice]]:
    """The chosen plan priced, then the exact optimum (if not already chosen) and the references."""
    plan = resolve_plan(chosen, setting)
    prices = [price(plan, setting)]
    if also_exact and chosen != "exact":
        prices.append(price(resolve_plan("exact", setting), setting))
    for name in references:
        if name != chosen:
            prices.append(price(resolve_plan(name, setting), setting))
    return plan, prices


# -- what-if grids -----------------------------------------------------------------------------


def parse_vary(text: str) -> KeyValues:
    """``KEY=V1,V2,...`` -> :class:`KeyValues` (the key language of :mod:`p2pgan.config.keys`:
    every value read as ``--set`` reads it, split at commas outside brackets)."""
    return parse_assignment(text, "--vary", many=True)


PlanOf = Callable[[Scenario, Setting], PlanSpec]
"""The plan a grid point prices when nothing names one (the scenario's cuts, searched or fixed)."""


@dataclass(frozen=True)
class WhatIfGrid:
    """A scenario file and what changes it: ``sets`` at every point, ``varies`` over the grid.

    Every key is a scenario key (:mod:`p2pgan.config.keys`); a point is the scenario with the
    ``--set`` values and that point's ``--vary`` values, validated as ``p2pgan scenario run``
    would. ``cuts`` (the alias) is the plan that point prices (it also takes ``full-model``, and
    a search needs no ``topology:`` line); else ``plan`` (``--plan``), else ``plan_of``.
    """

    file: Path
    sets: tuple[KeyValues, ...] = ()
    varies: tuple[KeyValues, ...] = ()
    plan: PlanSpec | None = None
    topology: Path | None = None
    """Price on this topology file instead of the scenario's (``--topology``)."""
    ga: GAParams = field(default_factory=GAParams)

    def points(self) -> Iterator[tuple[KeyValues, ...]]:
        keys = [kv.key for kv in self.varies]
        if len(set(keys)) != len(keys):
            raise ConfigError("--vary", keys[0], "each key may be varied once")
        for indices in itertools.product(*[range(len(kv.values)) for kv in self.varies]):
            yield tuple(kv.at(i) for kv, i in zip(self.varies, indices))


class _Settings:
    """Scenario -> :class:`Setting`, profiling each model size once (the costs are per block)."""

    def __init__(self, ga: GAParams) -> None:
        self.ga = ga

    def __call__(self, scenario: Scenario) -> Setting:
        costs = profile_model(scenario.model_spec)  # measured once per spec in a process
        topology = load_topology(scenario.topology or default_topology_path(), scenario.topology_overrides)
        return Setting(costs, tuple(client_ids_for(scenario.num_clients)), scenario.training.batch_size,
                       topology, scenario.seed, self.ga)


def run_whatif(grid: WhatIfGrid, plan_of: PlanOf) -> list[dict[str, Any]]:
    """Price every point of ``grid``; one row per point, the varied keys as written.

    A searched plan is searched again at every point, so the row is what the best plan costs
    under that condition. Block costs are measured once per model size, never per point.
    """
    raw = read_scenario(grid.file)
    # --topology is the scenario's topology: topology keys then name its entries.
    first = (KeyValues.of("topology", str(grid.topology.resolve())),) if grid.topology is not None else ()
    settings = _Settings(grid.ga)
    rows = []
    trace_cache: dict[tuple, PlanPrice] = {}
    for point in grid.points():
        assignments = [*first, *grid.sets, *point]
        cut_texts = [kv.texts[0] for kv in assignments if kv.key == CUTS]
        scenario = scenario_from(raw, grid.file, [kv for kv in assignments if kv.key != CUTS])
        setting = settings(scenario)
        spec: PlanSpec = cut_texts[-1] if cut_texts else (grid.plan if grid.plan is not None else plan_of(scenario, setting))
        resolved = resolve_plan(spec, setting)
        key = (repr(setting.topology.raw), setting.client_ids, setting.batch_size, repr(setting.costs.spec),
               tuple(resolved.splits[c] for c in setting.client_ids))
        priced = trace_cache.get(key)
        if priced is None:
            priced = trace_cache[key] = price(resolved, setting)
        row = {**{kv.key: kv.texts[0] for kv in point}, "plan": resolved.name, "sim_s_per_iter": priced.simulated_s,
               "analytic_s_per_iter": priced.analytic_s, "federate_s": priced.federate_s,
               "server_busy_s": priced.server_busy_s, "clients": len(setting.client_ids),
               "batch_size": setting.batch_size}
        if resolved.search is not None:
            row["plan_per_profile"] = " ".join(f"{p}={c}" for p, c in resolved.search.per_profile.items())
        rows.append(row)
    return rows
