"""``p2pgan whatif FILE --vary KEY=V1,V2,...``: re-price a scenario over a grid, no training.

The model's blocks are profiled once per model size; each grid point is the scenario with the
``--set`` values and that point's ``--vary`` values (the same keys: see
:mod:`p2pgan.config.keys`), whose plan is rebuilt as an operation trace and priced with SimPy,
beside the analytic model. Writes ``whatif.csv`` and ``whatif.png`` (seconds per iteration
against the first varied key, one line per combination of the others) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pgan.commands.cuts import ga_params, scenario_plan_spec, table_console
from p2pgan.config.keys import KEYS_HELP, KeySpace, parse_assignment
from p2pgan.config.loader import check_output_path, read_scenario
from p2pgan.errors import ConfigError
from p2pgan.sim.study import WhatIfGrid, parse_vary, run_whatif

EXAMPLES = """examples:
  p2pgan whatif scenarios/quick.yaml --vary training.batch_size=16,32,64
  p2pgan whatif scenarios/quick.yaml --vary clients=10,100,1000 --vary links.*.up_bps="50 Mbit/s,1 Gbit/s"
  p2pgan whatif scenarios/quick.yaml --set topology.server.clock_hz=21e9 --vary cuts=exact,all-offload,0110"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("whatif", help="re-price a scenario's operations over a grid of settings",
                                   description="Re-price a scenario's operations over a grid of settings "
                                               "(no training): every combination of the --vary values.",
                                   epilog=f"{KEYS_HELP}\n\n{EXAMPLES}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a key and its values (repeatable; the grid is every combination)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key at every point (repeatable; the same keys as --vary)")
    parser.add_argument("--list-keys", action="store_true", help="print the keys this scenario accepts and exit")
    parser.add_argument("--topology", type=Path, default=None,
                        help="topology YAML (default: the scenario's, else topologies/paper-edge.yaml)")
    parser.add_argument("--plan", default=None,
                        help="cut plan at every point (default: the scenario's cuts; a search is redone per point)")
    parser.add_argument("--generations", type=int, default=None, help="GA generations when the plan is ga")
    parser.add_argument("--population", type=int, default=None, help="GA population when the plan is ga")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/whatif-<scenario>)")
    parser.set_defaults(func=whatif_command)


def whatif_command(args: argparse.Namespace) -> int:
    if args.list_keys:
        return list_keys(args.file, args.topology)
    if not args.vary:
        raise ConfigError("whatif", "--vary", "give at least one --vary KEY=V1,V2,... (keys: p2pgan whatif --help)")
    source = str(args.file)
    out = args.out or (Path("runs") / f"whatif-{read_scenario(args.file).get('name', args.file.stem)}")
    check_output_path(out, "--out", source="whatif")  # before the grid is priced, not after
    grid = WhatIfGrid(args.file, sets=tuple(parse_assignment(text, source=source) for text in args.overrides),
                      varies=tuple(parse_vary(text) for text in args.vary), plan=args.plan,
                      topology=args.topology, ga=ga_params(args.generations, args.population, "whatif"))
    rows = run_whatif(grid, lambda scenario, setting: scenario_plan_spec(scenario, setting, None))
    keys = [kv.key for kv in grid.varies]
    try:
        csv_path, png_path = write_outputs(rows, keys, out)
    except OSError as exc:
        raise ConfigError("whatif", "--out", f"cannot write into {out} ({exc.strerror or exc})") from None
    print_rows(table_console(), rows, keys)
    print(f"wrote {csv_path} and {png_path}")
    return 0


def list_keys(file: Path, topology: Path | None) -> int:
    raw = read_scenario(file)
    if topology is not None:
        raw["topology"] = str(topology.resolve())
    space = KeySpace(raw, str(file), Path(file).resolve().parent)
    print(f"keys of {file} (--set and --vary; topology: {space.topology_path()}):")
    for key in space.valid_keys():
        print(f"  {key}")
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
