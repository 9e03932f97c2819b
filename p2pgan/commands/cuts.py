"""``p2pgan cuts FILE``: the scenario's cut plan per profile and what it costs per iteration.

Prints the plan (searched when the scenario says ``cuts: {search: exact|ga}`` or ``--method``
asks, else the scenario's fixed plan), then seconds per iteration for it, the exact optimum and
the reference policies: all-offload (0,0,0,0), all-local (1,1,1,1) and full-model (every block on
the client, FedAvg-GAN style), in both the analytic model and SimPy.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table


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
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the numbers as JSON")
    parser.set_defaults(func=cuts_command)


def load_setting(file: Path, overrides: list[str], topology_path: Path | None,
                 generations: int | None = None, population: int | None = None):
    """Scenario -> (scenario, :class:`Setting`): costs profiled once, engine client ids."""
    from p2pgan.config import load_scenario
    from p2pgan.model.costs import profile_model
    from p2pgan.sim.pricing import client_ids_for
    from p2pgan.sim.search import GAParams
    from p2pgan.sim.study import Setting
    from p2pgan.topology.profiles import default_topology_path, load_topology

    scenario = load_scenario(file, overrides)
    topology = load_topology(topology_path or scenario.topology or default_topology_path())
    ga = GAParams()
    if generations is not None:
        ga = GAParams(**{**ga.__dict__, "generations": generations})
    if population is not None:
        ga = GAParams(**{**ga.__dict__, "population": population})
    costs = profile_model(scenario.model.to_spec())
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
    return resolve_cuts(scenario, list(setting.client_ids), setting.costs)


def cuts_command(args: argparse.Namespace) -> int:
    from p2pgan.sim.study import compare_plans

    scenario, setting = load_setting(args.file, args.overrides, args.topology, args.generations, args.population)
    spec = scenario_plan_spec(scenario, setting, args.method)
    plan, prices = compare_plans(setting, spec)
    console = table_console()
    print_plan(console, setting, plan)
    print_prices(console, prices)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        cuts = plan.cuts()
        args.json_out.write_text(json.dumps({
            "topology": setting.topology.name,
            "clients": len(setting.client_ids),
            "batch_size": setting.batch_size,
            "plan": {cid: (str(cut) if cut is not None else "full-model") for cid, cut in cuts.items()},
            "prices": [p.as_row() for p in prices],
            "search_wall_s": plan.search.wall_s if plan.search else None,
        }, indent=2) + "\n", encoding="utf-8")
    return 0


def table_console() -> Console:
    """The terminal's width on a terminal; 120 columns when piped, so numbers are never cut."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def print_plan(console: Console, setting, plan) -> None:
    assignment = setting.assignment
    cuts = plan.cuts()
    table = Table(title=f"{plan.name} on {setting.topology.name}: {len(setting.client_ids)} clients, "
                        f"batch {setting.batch_size}", caption="cut = (g_head, g_tail, d_head, d_tail); 1 keeps "
                        "the movable block on the client")
    for column in ("profile", "clients", "GFLOP/s", "up Mbit/s", "down Mbit/s", "cut"):
        table.add_column(column, justify="left" if column in ("profile", "cut") else "right")
    profiles = list(dict.fromkeys(assignment[c] for c in setting.client_ids))
    for name in profiles:
        members = [c for c in setting.client_ids if assignment[c] == name]
        counts = Counter(str(cuts[c]) if cuts[c] is not None else "full-model" for c in members)
        shown = ", ".join(cut if n == len(members) else f"{cut} x{n}" for cut, n in counts.most_common())
        profile = setting.topology.profile(name)
        link = setting.topology.profile_links[name]
        table.add_row(name, str(len(members)), f"{profile.flops_per_s / 1e9:.3g}", f"{link.up_bps / 1e6:.4g}",
                      f"{link.down_bps / 1e6:.4g}", shown)
    console.print(table)
    if plan.search is not None:
        console.print(f"{plan.name}: {plan.search.evaluations} plans priced in {plan.search.wall_s:.2f} s wall")


def print_prices(console: Console, prices) -> None:
    base = prices[0].simulated_s
    table = Table(title="seconds per iteration (one iteration from idle)",
                  caption="SimPy / analytic: the two latency models; exchange: round-end PARAMS up, "
                          "averaging, AGGREGATE down (SimPy); server: its compute per iteration")
    for column in ("plan", "SimPy", "analytic", "exchange", "server", "vs plan"):
        table.add_column(column, justify="left" if column == "plan" else "right", no_wrap=column == "plan")
    for p in prices:
        table.add_row(p.name, f"{p.simulated_s:.4f}", f"{p.analytic_s:.4f}", f"{p.federate_s:.4f}",
                      f"{p.server_busy_s:.4f}", f"{p.simulated_s / base:.2f}x" if base > 0 else "-")
    console.print(table)
