"""``p2pgan compare FILE --strategies huscf,fedavg-gan,... [--seeds 1,2,3] [--jobs N]``.

Every strategy runs the same scenario file (same data, partitions and overrides; only
``strategy.name`` and the strategy's own options change) once per seed, each run into
``<out>/<strategy>/seed-<s>/``. The metrics are what is compared, so compare turns
``metrics.enabled`` on when the scenario has it off (and says so).

``--jobs N`` runs N of those runs at a time, each in its own process (a fresh one per run, so no
run inherits another's state) with its own torch thread count (``--threads``, else the CPU count
divided by N); ``--jobs 1`` runs them one after the other in this process. The numbers do not
depend on ``--jobs``: every run is seeded by its own seed only.

The comparison has one row per domain and strategy: accuracy and F1 (classification utility, %),
generation score and FID (per domain), then the clustering ARI, the simulated seconds per
iteration (the latency engine), the traffic (payload megabytes between clients and server, from
each run's ``latency.json``) and the wall time (per run). With several seeds each cell is the
mean ± the sample standard deviation (n - 1) over the seeds whose run completed. It is printed
and written to ``<out>/comparison.md`` (with a per-seed table), ``comparison.csv`` (per seed),
``comparison_stats.csv`` (means and deviations), ``comparison.json`` and ``comparison.png``
(one bar chart per quantity, error bars = standard deviation).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from p2pgan.config import load_scenario
from p2pgan.config.keys import KeyValues
from p2pgan.config.loader import check_output_path
from p2pgan.config.schema import SEED_MAX
from p2pgan.errors import EXIT_INTERRUPTED, ConfigError, P2PGanError
from p2pgan.report.load import load_run
from p2pgan.commands.checks import check_runnable
from p2pgan.run.folder import claim_results_dir
from p2pgan.run.processes import run_processes
from p2pgan.run.session import run_scenario
from p2pgan.run.threads import threads_for
from p2pgan.strategies.catalogue import STRATEGIES, strategy_class, strategy_for
from p2pgan.ui.progress import PlainProgress

COLUMNS = ("domain", "strategy", "seed", "accuracy", "f1", "gen_score", "fid", "ari", "sim_s_per_iter",
           "traffic_bytes", "wall_s", "status")
"""``comparison.csv``: one row per domain, strategy and seed."""


@dataclass(frozen=True)
class Quantity:
    key: str
    header: str  # table column
    digits: int
    title: str  # plot panel
    unit: str  # plot axis
    per_domain: bool


QUANTITIES = (
    Quantity("accuracy", "acc %", 2, "utility accuracy", "%", True),
    Quantity("f1", "F1 %", 2, "utility macro F1", "%", True),
    Quantity("gen_score", "gen score", 3, "generation score (higher is better)", "score", True),
    Quantity("fid", "FID", 1, "FID (lower is better)", "FID", True),
    Quantity("ari", "ARI", 2, "clustering ARI (1 = domains found)", "ARI", False),
    Quantity("sim_s_per_iter", "sim s/iter", 3, "simulated time per iteration", "seconds", False),
    Quantity("traffic_mb", "traffic MB", 2, "traffic, client <-> server payload", "MB", False),
    Quantity("wall_s", "wall s", 0, "wall time of training", "seconds", False),
)
OPTIONAL = ("sim_s_per_iter", "traffic_mb")
"""Columns shown only when some run has them (no topology: no latency, no traffic)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="run one scenario under several strategies (and seeds), side by side")
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--strategies", required=True, metavar="A,B,...",
                        help=f"comma-separated strategies ({', '.join(STRATEGIES)})")
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="run every strategy once per seed; cells are mean ± std (default: the scenario's seed)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs at a time, each in its own process (default 1: one after the other, here)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads per run (default: as scenario run, 1 for a small model, else every core; "
                             "with --jobs, CPUs / jobs)")
    parser.add_argument("--transport", choices=("memory", "http"), default=None, help="override transport.kind")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key for every run (repeatable; keys as in p2pgan whatif --help)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/compare-<scenario>)")
    parser.add_argument("--force", action="store_true", help="clear a previous comparison in --out first")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.set_defaults(func=compare_command)


# -- flags -------------------------------------------------------------------------------------------


def parse_strategies(text: str, source: str = "compare") -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(source, "--strategies", "no strategy given")
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ConfigError(source, "--strategies", f"unknown strategy {unknown[0]!r} (expected: {', '.join(STRATEGIES)})")
    if len(set(names)) != len(names):
        raise ConfigError(source, "--strategies", "a strategy is listed twice")
    return names


def parse_seeds(text: str, source: str = "compare") -> list[int]:
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > SEED_MAX:
            raise ConfigError(source, "--seeds", f"expected whole numbers 0..{SEED_MAX} separated by commas, got {part!r}")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(source, "--seeds", "a seed is listed twice")
    return seeds


def _at_least_one(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise ConfigError("compare", flag, f"expected a whole number >= 1, got {value}")
    return value


def with_strategy(scenario, name: str):
    """``scenario`` under strategy ``name``, carrying over only the options ``name`` has."""
    accepted = strategy_class(name).Options.__pydantic_fields__
    options = {k: v for k, v in scenario.strategy.options.items() if k in accepted}
    return dataclasses.replace(scenario, strategy=dataclasses.replace(scenario.strategy, name=name, options=options))


# -- running -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """One run of the comparison; plain values, so a worker process can take it."""

    file: Path
    overrides: tuple[str | KeyValues, ...]
    strategy: str
    seed: int
    directory: Path
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.strategy} seed {self.seed}"

    def scenario(self):
        overrides = [*self.overrides, KeyValues.of("seed", self.seed), KeyValues.of("output.dir", str(self.directory))]
        return with_strategy(load_scenario(self.file, overrides), self.strategy)


def run_job(job: RunJob, stream: TextIO | None = None, quiet: bool = True) -> dict[str, Any]:
    """Run ``job`` here; its record (summary, traffic). A user error is a failed record."""
    record: dict[str, Any] = {"strategy": job.strategy, "seed": job.seed, "status": "failed", "detail": "",
                              "summary": {}, "dir": str(job.directory), "traffic_bytes": None, "exit_code": 0}
    try:
        scenario = job.scenario()
        torch.set_num_threads(job.threads if job.threads is not None else threads_for(scenario))
        with claim_results_dir(job.directory, force=False, resume=False, key="--out", source="compare"):
            if scenario.transport.processes:
                outcome = run_processes(scenario)
            else:
                outcome = run_scenario(scenario, [] if quiet else [PlainProgress(stream)])
    except P2PGanError as exc:
        record.update(detail=str(exc), exit_code=exc.exit_code)
        return record
    record.update(status=outcome.status, detail=outcome.summary.get("detail", ""), summary=outcome.summary)
    if outcome.status == "interrupted":
        record["exit_code"] = EXIT_INTERRUPTED
    elif outcome.error is not None:
        record["exit_code"] = getattr(outcome.error, "exit_code", 1)
    record["traffic_bytes"] = _traffic_bytes(job.directory)
    return record


def _traffic_bytes(directory: Path) -> int | None:
    try:
        traffic = load_run(directory).traffic
    except P2PGanError:  # an unreadable folder has no traffic to show; the run's status says why
        return None
    return None if traffic is None else traffic.total_bytes


def _run_in_worker(job: RunJob) -> dict[str, Any]:
    return run_job(job)


def run_comparison(jobs: Sequence[RunJob], parallel: int = 1, quiet: bool = False,
                   stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Run every job; the records in the jobs' order. Ctrl-C stops the runs (their results so
    far are kept) and the ones not started are recorded as interrupted."""
    stream = stream or sys.stdout
    if parallel <= 1 or len(jobs) <= 1:
        records = []
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.label} -> {job.directory}", file=stream, flush=True)
            records.append(run_job(job, stream, quiet))
            if records[-1]["status"] == "interrupted":
                records += [_not_run(rest) for rest in jobs[i:]]
                break
        return records
    return _run_parallel(jobs, parallel, stream)


def _run_parallel(jobs: Sequence[RunJob], parallel: int, stream: TextIO) -> list[dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    # spawn: a fresh interpreter per run (no forked torch state); one run per process.
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), max_tasks_per_child=1,
                                                  mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_run_in_worker, job): i for i, job in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            records[i] = future.result()
            print(f"[{len(records)}/{len(jobs)}] {jobs[i].label}: {records[i]['status']} "
                  f"({time.perf_counter() - started:.0f}s since start) -> {jobs[i].directory}", file=stream, flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)  # running workers got the same Ctrl-C and stop
        for future, i in futures.items():
            if i not in records and future.done() and not future.cancelled() and future.exception() is None:
                records[i] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [records.get(i) or _not_run(job) for i, job in enumerate(jobs)]


def _not_run(job: RunJob) -> dict[str, Any]:
    return {"strategy": job.strategy, "seed": job.seed, "status": "interrupted", "detail": "not run",
            "summary": {}, "dir": str(job.directory), "traffic_bytes": None, "exit_code": EXIT_INTERRUPTED}


# -- rows and statistics -----------------------------------------------------------------------------


def seed_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (domain, strategy, seed), domains in the order they first appear; a run
    without metrics (failed, interrupted) gets one row with domain ``-``."""
    domains: list[str] = []
    for r in results:
        for d in _metrics(r).get("domains", {}) or {}:
            if d not in domains:
                domains.append(d)
    rows = []
    for domain in domains:
        for r in results:
            values = (_metrics(r).get("domains", {}) or {}).get(domain)
            if values is not None:
                rows.append(_row(r, domain, values))
    for r in results:
        if not _metrics(r).get("domains"):
            rows.append(_row(r, "-", {}))
    return rows


def _metrics(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("summary", {}).get("metrics", {}) or {}


def _row(record: dict[str, Any], domain: str, values: dict[str, Any]) -> dict[str, Any]:
    summary = record.get("summary", {})
    latency = summary.get("latency", {}) or {}
    traffic = record.get("traffic_bytes")
    status = record["status"]
    if domain == "-" and record.get("detail"):
        status += f" ({record['detail']})"
    return {"domain": domain, "strategy": record["strategy"], "seed": record.get("seed"),
            "accuracy": values.get("accuracy"), "f1": values.get("f1"), "gen_score": values.get("gen_score"),
            "fid": values.get("fid"), "ari": _metrics(record).get("ari"),
            "sim_s_per_iter": latency.get("sim_s_per_iteration"), "traffic_bytes": traffic,
            "traffic_mb": None if traffic is None else traffic / 1e6, "wall_s": summary.get("wall_s"),
            "status": status, "completed": record["status"] == "completed"}


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation; None with fewer than two values
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not values:
            return cls(None, None, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def stat_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (domain, strategy): a :class:`Stat` per quantity over the completed seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in seed_rows(results):
        grouped.setdefault((row["domain"], row["strategy"]), []).append(row)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        runs.setdefault(r["strategy"], []).append(r)
    out = []
    for (domain, strategy), rows in grouped.items():
        done = [row for row in rows if row["completed"]]
        stats = {q.key: Stat.of([row[q.key] for row in done]) for q in QUANTITIES}
        mine = runs[strategy]
        completed = sum(r["status"] == "completed" for r in mine)
        if domain == "-":
            status = "; ".join(row["status"] for row in rows)
        elif completed == len(mine):
            status = "completed"
        else:
            bad = [r for r in mine if r["status"] != "completed"]
            status = f"{completed}/{len(mine)} completed (seed {bad[0].get('seed')} {bad[0]['status']}" + \
                     (f": {bad[0]['detail']})" if bad[0].get("detail") else ")")
        out.append({"domain": domain, "strategy": strategy, "seeds": [row["seed"] for row in done],
                    "status": status, **stats})
    return out


def _shown(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return key not in OPTIONAL or any(_has(row[key]) for row in rows)


def _has(value: Any) -> bool:
    return value.n > 0 if isinstance(value, Stat) else value is not None


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The mean ± std table as Markdown (readable as plain text)."""
    rows = stat_rows(results)
    quantities = [q for q in QUANTITIES if _shown(rows, q.key)]
    header = ["domain", "strategy", *(q.header for q in quantities), "seeds", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["domain"], row["strategy"], *(_cell(row[q.key], q.digits) for q in quantities),
                 str(len(row["seeds"])), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_seed_table(results: Sequence[dict[str, Any]]) -> str:
    rows = seed_rows(results)
    quantities = [q for q in QUANTITIES if _shown(rows, q.key)]
    header = ["domain", "strategy", "seed", *(q.header for q in quantities), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["domain"], row["strategy"], str(row["seed"]),
                 *(_f(row[q.key], q.digits) for q in quantities), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(stat: Stat, digits: int) -> str:
    if stat.mean is None:
        return "-"
    if stat.std is None:
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def _f(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


# -- files -------------------------------------------------------------------------------------------


def write_comparison(results: Sequence[dict[str, Any]], out: Path, command: str = "", title: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.get("seed") for r in results if r.get("seed") is not None})
    md = out / "comparison.md"
    parts = [f"`{command}`\n" if command else "", format_table(results) + "\n"]
    if len(seeds) > 1:
        parts += [f"Cells: mean ± sample standard deviation over the seeds whose run completed ({', '.join(map(str, seeds))}).\n",
                  "## Per seed\n", format_seed_table(results) + "\n"]
    parts.append("![comparison](comparison.png)\n")
    md.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    csv_path = out / "comparison.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(seed_rows(results))
    stats = stat_rows(results)
    stats_path = out / "comparison_stats.csv"
    with stats_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["domain", "strategy", "n", *(f"{q.key}_{s}" for q in QUANTITIES for s in ("mean", "std")), "status"])
        for row in stats:
            writer.writerow([row["domain"], row["strategy"], len(row["seeds"]),
                             *(_blank(getattr(row[q.key], s)) for q in QUANTITIES for s in ("mean", "std")), row["status"]])
    json_path = out / "comparison.json"
    json_path.write_text(json.dumps({"command": command, "seeds": seeds,
                                     "stats": [{k: dataclasses.asdict(v) if isinstance(v, Stat) else v
                                                for k, v in row.items()} for row in stats],
                                     "runs": list(results)}, indent=2, default=str) + "\n", encoding="utf-8")
    png_path = out / "comparison.png"
    plot_comparison(stats, png_path, title)
    return [md, csv_path, stats_path, json_path, png_path]


def _blank(value: float | None) -> str:
    return "" if value is None else repr(value)


def plot_comparison(stats: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """One bar chart per quantity: per domain (grouped by domain) or per run (one bar per
    strategy); bars are means, error bars standard deviations over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in stats if row["domain"] != "-"]
    strategies = list(dict.fromkeys(row["strategy"] for row in stats))
    domains = list(dict.fromkeys(row["domain"] for row in rows))
    panels = [q for q in QUANTITIES if any(row[q.key].n for row in rows)]
    columns = min(3, max(1, len(panels)))
    lines = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(strategies))
    for ax, quantity in zip(axes.flat, panels):
        groups = domains if quantity.per_domain else ["all domains"]
        for k, strategy in enumerate(strategies):
            means, errors = [], []
            for domain in groups:
                found = [row for row in rows if row["strategy"] == strategy
                         and (row["domain"] == domain or not quantity.per_domain)]
                stat = found[0][quantity.key] if found else Stat(None, None, 0)
                means.append(stat.mean if stat.mean is not None else 0.0)
                errors.append(stat.std or 0.0)
            positions = [g + (k - (len(strategies) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(positions, means, width, yerr=errors, capsize=3, color=colours[k % len(colours)], label=strategy)
        if quantity.per_domain:
            ax.set_xticks(range(len(groups)), groups)
        else:  # one bar per strategy: name each bar
            ax.set_xticks([(k - (len(strategies) - 1) / 2) * width for k in range(len(strategies))], strategies)
        ax.set_title(quantity.title, fontsize=10)
        ax.set_ylabel(quantity.unit)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = (axes.flat[0].get_legend_handles_labels() if panels else ([], []))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(title or "compare", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command -------------------------------------------------------------------------------------


def compare_command(args: argparse.Namespace) -> int:
    strategies = parse_strategies(args.strategies)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    jobs = _at_least_one(args.jobs, "--jobs") or 1
    threads = _at_least_one(args.threads, "--threads")
    overrides: list[str | KeyValues] = list(args.overrides)
    if args.transport:
        overrides.append(KeyValues.of("transport.kind", args.transport))
    base = load_scenario(args.file, overrides)  # validates the file and overrides once
    if not base.metrics.enabled:
        overrides.append(KeyValues.of("metrics.enabled", True))
        print(f"compare: metrics.enabled is false in {args.file}; turned on for the comparison "
              "(the metrics are what is compared)", flush=True)
    for name in strategies:  # every strategy's options checked before anything runs
        strategy_for(with_strategy(base, name))
    # The topology and the data as every run will meet them (the same checks as `scenario run`).
    for note in check_runnable(with_strategy(base, strategies[0])).notes:
        print(f"compare: note: {note}", flush=True)
    seeds = seeds or [base.seed]
    out = args.out or Path("runs") / f"compare-{base.name}"
    check_output_path(out, "--out", source="compare")  # before resolving: a NUL byte
    out = out.resolve()
    per_run_threads = threads if threads is not None or jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    with claim_results_dir(out, force=args.force, resume=False, key="--out", source="compare"):
        plan = [RunJob(args.file, tuple(overrides), name, seed, out / name / f"seed-{seed}", per_run_threads)
                for name in strategies for seed in seeds]
        print(f"compare: {len(plan)} runs ({len(strategies)} strategies x {len(seeds)} seeds), {min(jobs, len(plan))} "
              f"at a time{'' if per_run_threads is None else f', {per_run_threads} torch threads each'} -> {out}",
              flush=True)
        results = run_comparison(plan, jobs, quiet=args.quiet or jobs > 1)
        print(format_table(results))
        paths = write_comparison(results, out, command=_command_line(args, strategies, out),
                                 title=f"compare {base.name}: mean ± std over seeds {', '.join(map(str, seeds))}")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return _exit_code(results)


def _command_line(args: argparse.Namespace, strategies: list[str], out: Path) -> str:
    command = ["p2pgan", "compare", str(args.file), "--strategies", ",".join(strategies)]
    if args.seeds is not None:
        command += ["--seeds", args.seeds]
    for override in args.overrides:
        command += ["--set", override]
    for flag, value in (("--jobs", args.jobs if args.jobs != 1 else None), ("--threads", args.threads),
                        ("--transport", args.transport)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--out", str(args.out or out)]
    return shlex.join(command)


def _exit_code(results: Sequence[dict[str, Any]]) -> int:
    bad = [r for r in results if r["status"] != "completed"]
    if not bad:
        return 0
    first = bad[0]
    print(f"p2pgan: compare: {len(bad)} of {len(results)} runs did not complete ({first['strategy']} seed "
          f"{first['seed']} {first['status']}{': ' + first['detail'] if first.get('detail') else ''})", file=sys.stderr)
    return int(first.get("exit_code") or 1)


