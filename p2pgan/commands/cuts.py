"""``p2pgan cuts FILE``: the scenario's placement per profile, what it costs, and what limits it.

Prints the plan (searched when the scenario says ``cuts: {search: exact|ga}`` or ``--method``
asks, else the scenario's fixed plan), then seconds per iteration for it, the exact optimum and
the reference policies: all-offload (0,0,0,0), all-local (1,1,1,1) and full-model (every block on
the client, FedAvg-GAN style), in both the analytic model and SimPy.

A searched plan respects the profiles' ``memory_bytes`` and the privacy budget (the scenario's
``cuts.privacy``, or ``--max-ssim`` / ``--max-label-accuracy``, checked against a leakage table
from ``--leakage``), may place a profile full-local, and is exact under SimPy's price where the
topology has shared capacity. The command then says which constraint binds (what the best plan
would cost without it) and what each privacy budget costs in latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from p2pgan.config.loader import check_output_path
from p2pgan.errors import ConfigError, P2PGanError

BUDGET_STEPS = 8
"""At most this many thresholds per leakage measure in the budget table."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cuts", help="choose and price the cut plan of a scenario")
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key (repeatable)")
    parser.add_argument("--topology", type=Path, default=None,
                        help="topology YAML (default: the scenario's, else topologies/paper-edge.yaml)")
    parser.add_argument("--method", choices=("exact", "ga"), default=None,
                        help="search the plan this way (default: what the scenario's cuts: says)")
    parser.add_argument("--generations", type=int, default=None, help="GA generations (default 1000)")
    parser.add_argument("--population", type=int, default=None, help="GA population (default 1000)")
    parser.add_argument("--max-ssim", default=None, metavar="X",
                        help="privacy budget: largest reconstruction SSIM a cut may allow, in [0, 1]")
    parser.add_argument("--max-label-accuracy", default=None, metavar="X",
                        help="privacy budget: largest label-probe accuracy a cut may allow, in [0, 1]")
    parser.add_argument("--leakage", type=Path, default=None, metavar="JSON",
                        help="measured leakage per cut (privacy.json of `p2pgan privacy`, or {cut: {ssim, "
                             "label_accuracy}})")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the numbers as JSON")
    parser.set_defaults(func=cuts_command)


MAX_GA_SIZE = 1_000_000
"""Bound on --generations and --population (the population is a population x genes array)."""


def ga_params(generations: int | None, population: int | None, command: str):
    """The GA's parameters with the flags on top, each checked (one line naming ``command:flag``)."""
    from p2pgan.sim.search import GAParams

    for flag, value, low in (("--generations", generations, 1), ("--population", population, 2)):
        if value is not None and not low <= value <= MAX_GA_SIZE:
            raise ConfigError(command, flag, f"expected a whole number {low}..{MAX_GA_SIZE}, got {value}")
    ga = GAParams()
    if generations is not None:
        ga = dataclasses.replace(ga, generations=generations)
    if population is not None:
        ga = dataclasses.replace(ga, population=population)
    return ga


def load_setting(file: Path, overrides: list[str], topology_path: Path | None,
                 generations: int | None = None, population: int | None = None):
    """Scenario -> (scenario, :class:`Setting`): costs profiled once, engine client ids."""
    from p2pgan.config import load_scenario
    from p2pgan.model.costs import profile_model
    from p2pgan.sim.pricing import client_ids_for
    from p2pgan.sim.study import Setting
    from p2pgan.topology.profiles import default_topology_path, load_topology

    scenario = load_scenario(file, overrides)
    topology = load_topology(topology_path or scenario.topology or default_topology_path(), scenario.topology_overrides)
    ga = ga_params(generations, population, "cuts")
    costs = profile_model(scenario.model_spec)
    setting = Setting(costs, tuple(client_ids_for(scenario.num_clients)), scenario.training.batch_size,
                      topology, scenario.seed, ga)
    return scenario, setting


def scenario_plan_spec(scenario, setting, method: str | None):
    """The plan spec the scenario asks for (``--method`` wins)."""
    from p2pgan.plan.cuts import resolve_cuts

    if method is not None:
        return method
    if scenario.cuts.search is not None:
        return scenario.cuts.search
    if scenario.cuts.policy is not None and scenario.cuts.policy != "mixed":
        return scenario.cuts.policy
    return resolve_cuts(scenario, list(setting.client_ids), None)


def privacy_inputs(scenario, args: argparse.Namespace):
    """(budget, leakage table or ``None``): the scenario's ``cuts.privacy`` under the flags."""
    from p2pgan.sim.budgets import NO_BUDGET, budget_from_flags, load_leakage

    base = getattr(scenario.cuts, "privacy", None) or NO_BUDGET
    budget = budget_from_flags(args.max_ssim, args.max_label_accuracy, base)
    leakage = load_leakage(args.leakage) if args.leakage is not None else None
    if budget.constrains and leakage is None:
        raise P2PGanError(f"the privacy budget ({budget}) needs measured leakage per cut: pass --leakage "
                          "privacy.json (written by `p2pgan privacy`)")
    return budget, leakage


@dataclass
class ConstrainedSearch:
    """Searches of one setting under different limits, priced the way the command reports them."""

    setting: object
    leakage: object
    method: str = "exact"

    def run(self, budget, memory: bool = True, full_local: bool = True):
        from p2pgan.sim.search import SearchSpace, run_search

        s = self.setting
        space = SearchSpace(full_local=full_local, leakage=self.leakage, budget=budget, memory=memory)
        return run_search(self.method, s.client_ids, s.costs, s.batch_size, s.topology, s.assignment, s.seed,
                          s.ga, space=space, price="simpy" if self.method == "exact" else "analytic")


def latency_of(result) -> float:
    """SimPy's seconds per iteration of a searched plan (the analytic price where they agree)."""
    return result.simulated_s if result.simulated_s is not None else result.seconds


def cuts_command(args: argparse.Namespace) -> int:
    from p2pgan.sim.budgets import NO_BUDGET
    from p2pgan.sim.pricing import REFERENCE_POLICIES
    from p2pgan.sim.study import ResolvedPlan, price, resolve_plan

    if args.json_out is not None:  # before the search, not after it
        check_output_path(args.json_out, "--json", source="cuts", kind="file")
    scenario, setting = load_setting(args.file, args.overrides, args.topology, args.generations, args.population)
    spec = scenario_plan_spec(scenario, setting, args.method)
    budget, leakage = privacy_inputs(scenario, args)
    searches = ConstrainedSearch(setting, leakage)
    console = table_console()
    binding, ladder, cuts_only = None, [], None
    if spec in ("exact", "ga"):
        chosen = ConstrainedSearch(setting, leakage, spec).run(budget)
        plan = ResolvedPlan(f"{spec} search", chosen.splits(), chosen)
        plans = [plan]
        exact = chosen if spec == "exact" else searches.run(budget)
        if spec != "exact":
            plans.append(ResolvedPlan("exact search", exact.splits(), exact))
        if any(p.full_local for p in exact.per_profile_placement.values()):
            # What full-local buys: the best plan that splits every client.
            cuts_only = latency_of(searches.run(budget, full_local=False))
        plans += [resolve_plan(name, setting) for name in REFERENCE_POLICIES]
        binding = constraint_costs(searches, exact, budget)
        ladder = budget_costs(searches, exact, budget, leakage)
    else:
        exact = searches.run(budget)
        plans = [resolve_plan(spec, setting), ResolvedPlan("exact search", exact.splits(), exact)]
        plans += [resolve_plan(name, setting) for name in REFERENCE_POLICIES if name != spec]
        plan = plans[0]
    prices = [price(p, setting) for p in plans]
    print_plan(console, setting, plan)
    print_prices(console, prices, [limits_exceeded(p, exact.feasibility, setting) for p in plans])
    if cuts_only is not None:
        full = [p for p, x in exact.per_profile_placement.items() if x.full_local]
        console.print(f"full-local ({', '.join(full)}): the best plan that splits every client costs "
                      f"{cuts_only:.4f} s per iteration ({cuts_only / latency_of(exact) - 1:+.1%})")
    if plan.search is not None and plan.search.proof is not None:
        print_proof(console, plan.search.proof)
    if binding is not None:
        print_binding(console, binding)
    if ladder:
        print_budgets(console, ladder)
    elif binding is not None:
        console.print("privacy budgets: no leakage table (pass --leakage privacy.json from `p2pgan privacy` "
                      "to price them)")
    if args.json_out is not None:
        proof = plan.search.proof if plan.search is not None else None
        write_json(args.json_out, {
            "topology": setting.topology.name,
            "clients": len(setting.client_ids),
            "batch_size": setting.batch_size,
            "plan": {cid: placement_name(plan, cid) for cid in setting.client_ids},
            "prices": [{**p.as_row(), "limits": limits_exceeded(r, exact.feasibility, setting)}
                       for p, r in zip(prices, plans)],
            "search_wall_s": plan.search.wall_s if plan.search else None,
            "privacy_budget": {"max_ssim": budget.max_ssim, "max_label_accuracy": budget.max_label_accuracy}
            if budget != NO_BUDGET else None,
            "binding": binding,
            "cuts_only_s": cuts_only,
            "budgets": ladder,
            "simpy_proof": None if proof is None else {
                "proven": proof.proven, "simulated_s": proof.simulated_s, "analytic_s": proof.analytic_s,
                "analytic_gap": proof.analytic_gap, "analytic_optimum_s": proof.analytic_optimum_s,
                "analytic_optimum_simulated_s": proof.analytic_optimum_simulated_s,
                "analytic_plan_excess": proof.analytic_plan_excess, "simulations": proof.simulations,
                "next_bound_s": proof.next_bound_s},
        })
    return 0


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path`` (parents created), or the one-line error naming ``cuts:--json``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError("cuts", "--json", f"cannot write {path} ({exc.strerror or exc})") from None


# -- what the constraints cost ----------------------------------------------------------------


def constraint_costs(searches: ConstrainedSearch, chosen, budget) -> dict:
    """Best latency with every limit, and without each one: a limit binds when dropping it helps."""
    from p2pgan.sim.budgets import NO_BUDGET

    with_all = latency_of(chosen)
    out = {"with_all_s": with_all, "memory": None, "privacy": None}
    feasibility = chosen.feasibility
    if not feasibility.memory_ok.all():
        out["memory"] = latency_of(searches.run(budget, memory=False))
    if budget.constrains and not feasibility.privacy_ok.all():
        out["privacy"] = latency_of(searches.run(NO_BUDGET))
    out["excluded"] = {name: {"memory": int((~feasibility.memory_ok[i]).sum()),
                              "privacy": int((~feasibility.privacy_ok).sum())}
                       for i, name in enumerate(feasibility.profiles)}
    return out


def _thresholds(values: list[float]) -> list[float]:
    """Distinct values, largest first, thinned to at most :data:`BUDGET_STEPS` (the extremes kept)."""
    distinct = sorted(set(round(v, 4) for v in values), reverse=True)
    if len(distinct) <= BUDGET_STEPS:
        return distinct
    picks = np.linspace(0, len(distinct) - 1, BUDGET_STEPS).round().astype(int)
    return [distinct[i] for i in sorted(set(picks))]


def budget_costs(searches: ConstrainedSearch, chosen, budget, leakage) -> list[dict]:
    """Best latency under a ladder of budgets on each leakage measure (and the scenario's own)."""
    from p2pgan.sim.budgets import NO_BUDGET, CutPrivacyBudget

    if not leakage:
        return []
    unconstrained = latency_of(chosen) if budget == NO_BUDGET else latency_of(searches.run(NO_BUDGET))
    budgets = [NO_BUDGET]
    if budget.constrains:
        budgets.append(budget)
    budgets += [CutPrivacyBudget(max_ssim=v) for v in _thresholds([x.ssim for x in leakage.values()])]
    budgets += [CutPrivacyBudget(max_label_accuracy=v)
                for v in _thresholds([x.label_accuracy for x in leakage.values()])]
    rows = []
    for b in dict.fromkeys(budgets):
        result = chosen if b == budget else searches.run(b)
        seconds = latency_of(result)
        allowed = int(result.feasibility.privacy_ok.sum())
        full_local = sum(1 for p in result.per_profile_placement.values() if p.full_local)
        rows.append({"budget": str(b), "max_ssim": b.max_ssim, "max_label_accuracy": b.max_label_accuracy,
                     "seconds": seconds, "vs_none": seconds / unconstrained - 1.0 if unconstrained else 0.0,
                     "placements_allowed": allowed, "profiles_full_local": full_local,
                     "chosen": b == budget})
    return rows


# -- printing ---------------------------------------------------------------------------------


def table_console() -> Console:
    """The terminal's width on a terminal; 120 columns when piped, so numbers are never cut."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def placement_name(plan, cid: str) -> str:
    cut = plan.cuts()[cid]
    return str(cut) if cut is not None else "full-local"


def print_plan(console: Console, setting, plan) -> None:
    from p2pgan.sim.feasibility import format_bytes, memory_need

    assignment = setting.assignment
    table = Table(title=f"{plan.name} on {setting.topology.name}: {len(setting.client_ids)} clients, "
                        f"batch {setting.batch_size}", caption="cut = (g_head, g_tail, d_head, d_tail); 1 keeps "
                        "the movable block on the client; full-local keeps every block (no activation traffic)")
    for column in ("profile", "clients", "GFLOP/s", "up Mbit/s", "down Mbit/s", "memory", "needs", "cut"):
        table.add_column(column, justify="left" if column in ("profile", "cut") else "right")
    profiles = list(dict.fromkeys(assignment[c] for c in setting.client_ids))
    for name in profiles:
        members = [c for c in setting.client_ids if assignment[c] == name]
        counts = Counter(placement_name(plan, c) for c in members)
        shown = ", ".join(cut if n == len(members) else f"{cut} x{n}" for cut, n in counts.most_common())
        profile = setting.topology.profile(name)
        link = setting.topology.profile_links[name]
        need = max(memory_need(plan.splits[c], setting.costs, setting.batch_size).total for c in members)
        limit = format_bytes(profile.memory_bytes) if profile.memory_bytes is not None else "-"
        table.add_row(name, str(len(members)), f"{profile.flops_per_s / 1e9:.3g}", f"{link.up_bps / 1e6:.4g}",
                      f"{link.down_bps / 1e6:.4g}", limit, format_bytes(need), shown)
    console.print(table)
    if plan.search is not None:
        console.print(f"{plan.name}: {plan.search.evaluations} plans priced in {plan.search.wall_s:.2f} s wall")


def limits_exceeded(plan, feasibility, setting) -> str:
    """Which limits a plan breaks: ``"ok"``, ``"memory"``, ``"privacy"`` or both."""
    from p2pgan.sim.placement import FULL_LOCAL, Placement

    broken = set()
    for cid, cut in plan.cuts().items():
        placement = FULL_LOCAL if cut is None else Placement(cut)
        k = feasibility.placements.index(placement)
        if not feasibility.memory_ok[feasibility.profiles.index(setting.assignment[cid]), k]:
            broken.add("memory")
        if not feasibility.privacy_ok[k]:
            broken.add("privacy")
    return "+".join(sorted(broken)) or "ok"


def print_prices(console: Console, prices, limits: list[str] | None = None) -> None:
    base = prices[0].simulated_s
    table = Table(title="seconds per iteration (one iteration from idle)",
                  caption="SimPy / analytic: the two latency models; exchange: round-end PARAMS up, "
                          "averaging, AGGREGATE down (SimPy); server: its compute per iteration; limits: "
                          "what the plan breaks (memory_bytes, privacy budget)")
    for column in ("plan", "SimPy", "analytic", "exchange", "server", "vs plan", "limits"):
        table.add_column(column, justify="left" if column in ("plan", "limits") else "right",
                         no_wrap=column == "plan")
    for i, p in enumerate(prices):
        table.add_row(p.name, f"{p.simulated_s:.4f}", f"{p.analytic_s:.4f}", f"{p.federate_s:.4f}",
                      f"{p.server_busy_s:.4f}", f"{p.simulated_s / base:.2f}x" if base > 0 else "-",
                      limits[i] if limits else "-")
    console.print(table)


def print_proof(console: Console, proof) -> None:
    state = "proved optimal" if proof.proven else "NOT proved optimal (simulation cap reached)"
    console.print(
        f"shared capacity: the plan is {state} under SimPy's price ({proof.simulations} plan(s) simulated; every "
        f"other feasible plan costs >= {proof.next_bound_s:.4f} s). The analytic model puts it at "
        f"{proof.analytic_s:.4f} s, {proof.analytic_gap:.1%} below SimPy's {proof.simulated_s:.4f} s; the "
        f"analytic optimum's plan costs {proof.analytic_optimum_simulated_s:.4f} s in SimPy "
        f"(+{proof.analytic_plan_excess:.1%}).")


def print_binding(console: Console, binding: dict) -> None:
    base = binding["with_all_s"]
    parts = []
    for name in ("memory", "privacy"):
        without = binding[name]
        if without is None:
            continue
        if without < base * (1 - 1e-9):
            parts.append(f"{name} binds (without it {without:.4f} s, {base / without - 1:+.1%} for the limit)")
        else:
            parts.append(f"{name} excludes placements but does not bind")
    excluded = ", ".join(f"{p}: {e['memory']} over memory" for p, e in binding["excluded"].items() if e["memory"])
    console.print("constraints: " + ("; ".join(parts) if parts else "none binds") +
                  (f" ({excluded})" if excluded else ""))


def print_budgets(console: Console, rows: list[dict]) -> None:
    table = Table(title="latency cost of privacy budgets (best plan under each)",
                  caption="allowed: placements within the budget (full-local leaks nothing); SimPy seconds "
                          "per iteration")
    for column in ("budget", "s/iter", "vs none", "allowed", "full-local profiles"):
        table.add_column(column, justify="left" if column == "budget" else "right", no_wrap=column == "budget")
    for row in rows:
        table.add_row(row["budget"] + (" (chosen)" if row["chosen"] and row["budget"] != "none" else ""),
                      f"{row['seconds']:.4f}", f"{row['vs_none']:+.1%}", str(row["placements_allowed"]),
                      str(row["profiles_full_local"]))
    console.print(table)
