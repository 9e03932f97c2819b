"""``p2pgan whatif FILE --vary KEY=V1,V2,...``: re-price a scenario over a grid, no training.

The model's blocks are profiled once; each grid point rebuilds the operation trace of the plan
(a synthetic trace, exactly the operations the engine would perform) and prices it with SimPy,
beside the analytic model. Keys: any dotted topology key (``server.clock_hz``,
``profiles.device1.clock_hz``, ``links.*.up_bps``, ``shared.nic.up_bps``; ``*`` = every entry),
``clients`` (number of clients), ``batch_size``, ``cuts`` (a plan: exact, ga, all-offload,
all-local, full-model, mixed or four digits such as 0110). Writes ``whatif.csv`` and
``whatif.png`` (seconds per iteration against the first varied key, one line per combination
of the others) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pgan.commands.cuts import load_setting, scenario_plan_spec, table_console


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("whatif", help="re-price a scenario's operations over a grid of settings")
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                        help="a key and its values (repeatable; the grid is every combination)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key (repeatable)")
    parser.add_argument("--topology", type=Path, default=None,
                        help="topology YAML (default: the scenario's, else topologies/paper-edge.yaml)")
    parser.add_argument("--plan", default=None,
                        help="cut plan at every point (default: the scenario's cuts; a search is redone per point)")
    parser.add_argument("--generations", type=int, default=None, help="GA generations when the plan is ga")
    parser.add_argument("--population", type=int, default=None, help="GA population when the plan is ga")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/whatif-<scenario>)")
    parser.set_defaults(func=whatif_command)


def whatif_command(args: argparse.Namespace) -> int:
    from p2pgan.sim.study import parse_vary, run_whatif

    varies = [parse_vary(text) for text in args.vary]
    scenario, setting = load_setting(args.file, args.overrides, args.topology, args.generations, args.population)
    spec = args.plan if args.plan is not None else scenario_plan_spec(scenario, setting, None)
    rows = run_whatif(setting, spec, varies)
    out = args.out or (Path("runs") / f"whatif-{scenario.name}")
    csv_path, png_path = write_outputs(rows, [key for key, _ in varies], out)
    print_rows(table_console(), rows, [key for key, _ in varies])
    print(f"wrote {csv_path} and {png_path}")
    return 0


COLUMNS = ("plan", "clients", "sim_s_per_iter", "analytic_s_per_iter", "federate_s", "server_busy_s")


def write_outputs(rows: list[dict[str, Any]], keys: list[str], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys([*keys, *COLUMNS, *(k for row in rows for k in row)]))
    csv_path = out / "whatif.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    png_path = out / "whatif.png"
    plot(rows, keys, png_path)
    return csv_path, png_path


def _numeric(values: list[Any]) -> list[float] | None:
    """The values as numbers (units understood), or ``None`` when some are not numeric."""
    out = []
    for value in values:
        try:
            out.append(_as_number(value))
        except ValueError:
            return None
    return out


def _as_number(value: Any) -> float:
    from p2pgan.topology.units import parse_quantity

    for dimension in ("count", "frequency", "bitrate", "time"):
        try:
            return parse_quantity(value, dimension)
        except ValueError:
            continue
    raise ValueError(value)


def plot(rows: list[dict[str, Any]], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, others = keys[0], keys[1:]
    x_values = list(dict.fromkeys(row[x_key] for row in rows))
    numeric = _numeric(x_values)
    positions = numeric if numeric is not None else list(range(len(x_values)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        label = tuple((k, row[k]) for k in others)
        series.setdefault(label, []).append((positions[x_values.index(row[x_key])], row["sim_s_per_iter"]))
    for label, points in series.items():
        points.sort()
        name = ", ".join(f"{k}={v}" for k, v in label) or "SimPy"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if numeric is None:
        ax.set_xticks(positions, [str(v) for v in x_values], rotation=20)
    elif len(positions) > 2 and min(positions) > 0 and max(positions) / min(positions) >= 50:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel("simulated seconds per iteration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_rows(console: Console, rows: list[dict[str, Any]], keys: list[str]) -> None:
    table = Table(title="what-if: simulated seconds per iteration",
                  caption="exchange: round-end parameter exchange (SimPy)")
    headers = {"sim_s_per_iter": "SimPy s/it", "analytic_s_per_iter": "analytic s/it", "federate_s": "exchange s"}
    shown = list(dict.fromkeys([*keys, "plan", "clients", *headers]))
    for column in shown:
        numeric = column in headers or column == "clients"
        # Numbers never shrink (a truncated number is worse than a wrapped plan name).
        table.add_column(headers.get(column, column), justify="right" if numeric else "left",
                         no_wrap=numeric, min_width=9 if numeric and column != "clients" else None)
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in shown))
    console.print(table)
