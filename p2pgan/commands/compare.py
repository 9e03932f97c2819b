"""``p2pgan compare FILE --strategies huscf,fedavg-gan,...``: one scenario under several strategies.

Every strategy runs the same scenario file (same data, partitions, seed and overrides; only
``strategy.name`` changes), one after the other, each into ``<out>/<strategy>/``. Metrics must be
enabled in the scenario (they are what is compared). The side-by-side table has one row per
domain and strategy: accuracy, F1 (classification utility, %), generation score, FID, plus the
clustering ARI, the wall time and — when the run's summary has one (the latency engine) — the
simulated seconds per iteration. It is printed and written to ``<out>/comparison.md``,
``comparison.csv`` and ``comparison.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
from pathlib import Path
from typing import Any

from p2pgan.strategies.catalogue import STRATEGIES, strategy_class
from p2pgan.errors import ConfigError, P2PGanError

COLUMNS = ("domain", "strategy", "accuracy", "f1", "gen_score", "fid", "ari", "sim_s_per_iter", "wall_s", "status")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="run one scenario under several strategies, side by side")
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--strategies", required=True, metavar="A,B,...",
                        help=f"comma-separated strategies ({', '.join(STRATEGIES)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key for every run (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/compare-<scenario>)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.set_defaults(func=compare_command)


def parse_strategies(text: str, source: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(source, "--strategies", "no strategy given")
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ConfigError(source, "--strategies", f"unknown strategy {unknown[0]!r} (expected: {', '.join(STRATEGIES)})")
    if len(set(names)) != len(names):
        raise ConfigError(source, "--strategies", "a strategy is listed twice")
    return names


def with_strategy(scenario, name: str):
    """``scenario`` under strategy ``name``, carrying over only the options ``name`` has."""
    import dataclasses

    accepted = strategy_class(name).Options.__pydantic_fields__
    options = {k: v for k, v in scenario.strategy.options.items() if k in accepted}
    return dataclasses.replace(scenario, strategy=dataclasses.replace(scenario.strategy, name=name, options=options))


def compare_command(args: argparse.Namespace) -> int:
    from p2pgan.config import load_scenario

    strategies = parse_strategies(args.strategies, "--strategies")
    base = load_scenario(args.file, args.overrides)  # validates the file and overrides once
    if not base.metrics.enabled:
        raise ConfigError(str(args.file), "metrics.enabled", "compare needs metrics (set metrics.enabled: true)")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    out = (args.out or Path("runs") / f"compare-{base.name}").resolve()
    results = run_comparison(args.file, strategies, list(args.overrides), out, quiet=args.quiet)
    table = format_table(results)
    print(table)
    command = ["p2pgan", "compare", str(args.file), "--strategies", ",".join(strategies)]
    for override in args.overrides:
        command += ["--set", override]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    command += ["--out", str(args.out or out)]
    paths = write_comparison(results, out, command=shlex.join(command))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0 if all(r["status"] == "completed" for r in results) else 1


def run_comparison(file: Path, strategies: list[str], overrides: list[str], out: Path,
                   quiet: bool = False, stream=None) -> list[dict[str, Any]]:
    """Run ``file`` once per strategy; return one record per strategy (summary + final metrics)."""
    from p2pgan.config import load_scenario
    from p2pgan.ui.progress import PlainProgress
    from p2pgan.run.session import run_scenario

    results = []
    for name in strategies:
        scenario = load_scenario(file, [*overrides, f"output.dir={out / name}"])
        scenario = with_strategy(scenario, name)
        observers = [] if quiet else [PlainProgress(stream)]
        try:
            outcome = run_scenario(scenario, observers)
        except KeyboardInterrupt:
            raise
        except P2PGanError as exc:
            results.append({"strategy": name, "status": "failed", "detail": str(exc), "summary": {}})
            continue
        results.append({"strategy": name, "status": outcome.status, "detail": outcome.summary.get("detail", ""),
                        "summary": outcome.summary, "dir": str(scenario.results_dir)})
        if outcome.status == "interrupted":
            break
    return results


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (domain, strategy), domains in the order they first appear."""
    domains: list[str] = []
    for r in results:
        for d in (r["summary"].get("metrics", {}) or {}).get("domains", {}):
            if d not in domains:
                domains.append(d)
    rows = []
    for domain in domains:
        for r in results:
            summary = r["summary"]
            metrics = summary.get("metrics", {}) or {}
            values = (metrics.get("domains", {}) or {}).get(domain, {})
            latency = summary.get("latency", {}) or {}
            rows.append({
                "domain": domain, "strategy": r["strategy"],
                "accuracy": values.get("accuracy"), "f1": values.get("f1"),
                "gen_score": values.get("gen_score"), "fid": values.get("fid"),
                "ari": metrics.get("ari"), "sim_s_per_iter": latency.get("sim_s_per_iteration"),
                "wall_s": summary.get("wall_s"), "status": r["status"],
            })
    for r in results:  # a strategy without metrics still gets a line
        if not (r["summary"].get("metrics", {}) or {}).get("domains"):
            rows.append({"domain": "-", "strategy": r["strategy"], "accuracy": None, "f1": None, "gen_score": None,
                         "fid": None, "ari": None, "sim_s_per_iter": None, "wall_s": r["summary"].get("wall_s"),
                         "status": r["status"] + (f" ({r['detail']})" if r.get("detail") else "")})
    return rows


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text)."""
    rows = table_rows(results)
    show_latency = any(row["sim_s_per_iter"] is not None for row in rows)
    header = ["domain", "strategy", "acc %", "F1 %", "gen score", "FID", "ARI"]
    if show_latency:
        header.append("sim s/iter")
    header += ["wall s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["domain"], row["strategy"], _f(row["accuracy"], 2), _f(row["f1"], 2), _f(row["gen_score"], 3),
                 _f(row["fid"], 1), _f(row["ari"], 2)]
        if show_latency:
            cells.append(_f(row["sim_s_per_iter"], 3))
        cells += [_f(row["wall_s"], 0), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(results: list[dict[str, Any]], out: Path, command: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "comparison.md"
    text = format_table(results)
    md.write_text((f"`{command}`\n\n" if command else "") + text + "\n", encoding="utf-8")
    csv_path = out / "comparison.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in table_rows(results):
            writer.writerow(row)
    json_path = out / "comparison.json"
    json_path.write_text(json.dumps({"command": command, "runs": results}, indent=2, default=str) + "\n",
                         encoding="utf-8")
    return [md, csv_path, json_path]


def _f(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"
