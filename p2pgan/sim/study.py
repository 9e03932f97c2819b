"""Plan comparisons and what-if grids, from plain arguments (the CLI commands are thin on top).

A :class:`Setting` is everything that prices a plan: measured block costs (profiled once), the
client ids, the batch, the topology and who runs which profile. A *plan spec* names how the cuts
are chosen: ``exact`` / ``ga`` (search), ``all-offload`` / ``all-local`` / ``full-model``
(reference policies), ``mixed`` (the engine's every-option-in-turn policy), four digits such as
``0110`` (one cut for all), or an explicit ``{client: ClientCut}`` mapping.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientCut, ClientSplit, all_cut_options, split_client, validate_cut
from p2pgan.sim.pricing import (REFERENCE_POLICIES, PlanPrice, client_ids_for, cuts_to_splits, policy_splits,
                                price_plan)
from p2pgan.sim.search import GAParams, SearchResult, run_search
from p2pgan.topology.profiles import Topology

PlanSpec = Union[str, Mapping[str, ClientCut]]

SETTING_KEYS = ("clients", "batch_size", "cuts")
"""What-if keys that change the setting rather than the topology file."""


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
    digits = [ch for ch in text if ch.isdigit()]
    stripped = text.strip("()[] ")
    if len(digits) != 4 or any(ch not in "0123456789, " for ch in stripped):
        return None
    return ClientCut.of([int(d) for d in digits])


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


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` -> (key, values); values read as YAML scalars (``1e9`` stays text)."""
    import yaml

    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError("--vary", text, "expected KEY=V1,V2,... (e.g. server.clock_hz=21e9,42e9)")
    parsed = []
    for raw in values.split(","):
        raw = raw.strip()
        if not raw:
            raise ConfigError("--vary", key, f"empty value in {values!r}")
        if key == "cuts":  # plan names and cut digits stay text ("0110" is not octal 72)
            parsed.append(raw)
            continue
        try:
            parsed.append(yaml.safe_load(raw))
        except yaml.YAMLError:
            parsed.append(raw)
    return key, parsed


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError("--vary", key, f"expected a positive whole number, got {value!r}")
    return int(value)


def run_whatif(base: Setting, plan: PlanSpec, varies: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Price ``plan`` at every point of the grid; one row per point.

    Topology keys are dotted paths into the topology file (``*`` matches every entry of a
    mapping: ``links.*.up_bps``). ``clients`` and ``batch_size`` change the setting; ``cuts``
    replaces the plan spec. A searched plan is searched again at every point, so the row is what
    the best plan costs under that condition. The block costs are never re-measured.
    """
    keys = [key for key, _ in varies]
    if len(set(keys)) != len(keys):
        raise ConfigError("--vary", keys[0], "each key may be varied once")
    rows = []
    trace_cache: dict[tuple, PlanPrice] = {}
    for values in itertools.product(*[vals for _, vals in varies]):
        point = dict(zip(keys, values))
        setting, spec = base, plan
        topo_values = {k: v for k, v in point.items() if k not in SETTING_KEYS}
        if topo_values:
            setting = dataclasses.replace(setting, topology=base.topology.replaced(topo_values))
        if "clients" in point:
            setting = dataclasses.replace(setting, client_ids=tuple(client_ids_for(_positive_int("clients", point["clients"]))))
        if "batch_size" in point:
            setting = dataclasses.replace(setting, batch_size=_positive_int("batch_size", point["batch_size"]))
        if "cuts" in point:
            spec = str(point["cuts"])
        resolved = resolve_plan(spec, setting)
        key = (setting.topology.raw.__repr__(), setting.client_ids, setting.batch_size,
               tuple(resolved.splits[c] for c in setting.client_ids))
        priced = trace_cache.get(key)
        if priced is None:
            priced = trace_cache[key] = price(resolved, setting)
        row = {**point, "plan": resolved.name, "sim_s_per_iter": priced.simulated_s,
               "analytic_s_per_iter": priced.analytic_s, "federate_s": priced.federate_s,
               "server_busy_s": priced.server_busy_s, "clients": len(setting.client_ids)}
        if resolved.search is not None:
            row["plan_per_profile"] = " ".join(f"{p}={c}" for p, c in resolved.search.per_profile.items())
        rows.append(row)
    return rows
