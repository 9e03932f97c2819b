"""What each fault costs in simulated time on a scenario (default scenarios/multidomain.yaml).

    python tools/bench_faults.py [SCENARIO] [--rounds N] [--run] [--run-rounds N]

Once per fault kind (none, one dropout, 10% random dropout, a 3x compute straggler, a 3x link
straggler, a 5% lossy link on one client and on every client, a round deadline), the fault plan
is built exactly as ``prepare_run`` builds it and the run's operations are priced by the SimPy
engine with the plan as its conditions: the same path as the latency files of a process that
prices the plan (``trace_from_program(..., faults=plan)`` then ``simulate(..., plan)``). This
prices the scenario's own schedule (model, cuts, batch, steps per round) without training.

The single-client faults hit the scenario's bottleneck client (the one whose own round is
longest without faults); the round deadline is 0.95 x that client's own round, so it, and any
client as slow, misses the deadline.

``--run`` also trains each kind for real at a cheap setting (stated in the output) and reads
the results folder's ``latency.json``: the nodes' recorded trace priced the same way. Its
operation count is compared with the plan's for that setting, which shows whether the engine
executed the plan's participation (the count differs where it ignored a fault).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from p2pgan.config.loader import load_scenario
from p2pgan.ids import natural_sorted
from p2pgan.plan.faults import FaultPlan
from p2pgan.run.faults import build_fault_plan
from p2pgan.run.latency import scenario_topology
from p2pgan.run.prepare import prepare_run
from p2pgan.sim.engine import simulate
from p2pgan.sim.faults import own_rounds
from p2pgan.sim.trace import trace_from_program
from p2pgan.strategies.catalogue import strategy_for

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ["training.local_epochs=1", "training.max_batches_per_epoch=2", "model.width=0.125", "model.z_dim=16",
         "checkpoint.enabled=false"]
"""The ``--run`` setting (besides metrics off and ``--run-rounds``): minutes, not hours, of training."""


@dataclass(frozen=True)
class Kind:
    name: str
    overrides: tuple[str, ...]


def kinds(bottleneck: str, deadline_s: float, rounds: int) -> list[Kind]:
    rejoin = f", rejoin_round: {min(4, rounds)}" if rounds >= 3 else ""
    return [
        Kind("none", ()),
        Kind(f"dropout {bottleneck} r2..r{min(4, rounds) - 1}" if rejoin else f"dropout {bottleneck} from r2",
             (f"faults.dropout=[{{clients: [{bottleneck}], at_round: 2{rejoin}}}]",)),
        Kind("random dropout 10%", ("faults.dropout=[{clients: '*', probability: 0.1}]",)),
        Kind(f"straggler {bottleneck} 3x compute", (f"faults.stragglers=[{{clients: [{bottleneck}], compute: 3.0}}]",)),
        Kind(f"straggler {bottleneck} 3x link", (f"faults.stragglers=[{{clients: [{bottleneck}], link: 3.0}}]",)),
        Kind(f"lossy link {bottleneck} 5%", (f"faults.lossy_links=[{{clients: [{bottleneck}], loss_rate: 0.05}}]",)),
        Kind("lossy links all 5%", ("faults.lossy_links=[{clients: '*', loss_rate: 0.05}]",)),
        Kind(f"round deadline {deadline_s:.3g} s", (f"faults.round_deadline_s={deadline_s!r}",)),
    ]


@dataclass(frozen=True)
class Priced:
    total_s: float
    rounds_s: dict[int, float]
    federated: float
    operations: int


@dataclass(frozen=True)
class Setting:
    """A scenario prepared once (data, partitions, cuts), its topology and its bottleneck."""

    path: Path
    overrides: tuple[str, ...]
    prepared: object
    topology: object
    assignment: dict[str, str]
    own_round_s: dict[str, float]

    @property
    def bottleneck(self) -> str:
        return max(natural_sorted(self.own_round_s), key=self.own_round_s.__getitem__)  # ties: lowest id

    @property
    def deadline_s(self) -> float:
        return 0.95 * self.own_round_s[self.bottleneck]

    @property
    def rounds(self) -> int:
        return self.prepared.plan.schedule.rounds

    def kinds(self) -> list[Kind]:
        return kinds(self.bottleneck, self.deadline_s, self.rounds)

    def fault_plan(self, kind: Kind) -> FaultPlan:
        """The kind's plan, built as ``prepare_run`` builds it (on this setting's prepared plan)."""
        scenario = load_scenario(self.path, [*self.overrides, *kind.overrides])
        prepared = self.prepared
        return build_fault_plan(scenario, prepared.plan, prepared.records, strategy_for(scenario).program,
                                prepared.setup.costs)

    def price(self, faults: FaultPlan) -> Priced:
        prepared = self.prepared
        plan, program = prepared.plan, strategy_for(prepared.scenario).program
        splits = {c.client_id: c.split for c in plan.clients}
        batch = plan.schedule.batch_size
        conditions = faults if faults.active else None
        ops = trace_from_program(program, splits, prepared.setup.costs, {c: batch for c in splits},
                                 plan.schedule.steps_per_round, include_aggregation=True, rounds=self.rounds,
                                 server_batch=batch, faults=conditions)
        report = simulate(ops, self.topology, self.assignment, conditions)
        federated = sum(len(faults.at_federation(r)) for r in range(1, self.rounds + 1)) / self.rounds
        return Priced(report.total_seconds, dict(report.round_seconds), federated, len(ops))

    def describe(self) -> str:
        schedule, scenario = self.prepared.plan.schedule, self.prepared.scenario
        return (f"{self.rounds} rounds x {schedule.steps_per_round} steps, batch {schedule.batch_size}, "
                f"{len(self.prepared.plan.clients)} clients, width {scenario.model.width}, "
                f"topology {self.topology.name}")


def setting(path: Path, overrides: list[str]) -> Setting:
    prepared = prepare_run(load_scenario(path, overrides))
    topology = scenario_topology(prepared)
    assert topology is not None, "the scenario has a topology or the packaged one is priced"
    assignment = topology.assign_profiles(list(prepared.plan.client_ids))
    plan = prepared.plan
    splits = {c.client_id: c.split for c in plan.clients}
    batch = plan.schedule.batch_size
    own = own_rounds(strategy_for(prepared.scenario).program, splits, prepared.setup.costs,
                     {c: batch for c in splits}, topology, assignment, prepared.faults, plan.schedule.steps_per_round,
                     server_batch=batch)
    return Setting(path, tuple(overrides), prepared, topology, assignment, {c: o.round_s for c, o in own.items()})


def table(title: str, rows: list[tuple[str, Priced, str]], rounds_shown: int) -> str:
    base = rows[0][1].total_s
    shown = sorted(rows[0][1].rounds_s)[:rounds_shown]
    head = (f"{'fault':<30} {'total s':>10} {'vs none':>17} {'s/round':>9} "
            + " ".join(f"{'r' + str(r):>8}" for r in shown) + f" {'fed/rnd':>7}  faults in force")
    lines = [title, head, "-" * len(head)]
    for name, priced, note in rows:
        delta = priced.total_s - base
        rel = f"{delta:+.2f} ({100 * delta / base:+.1f}%)" if base else "n/a"
        mean = priced.total_s / max(1, len(priced.rounds_s))
        per = " ".join(f"{priced.rounds_s.get(r, float('nan')):8.2f}" for r in shown)
        lines.append(f"{name:<30} {priced.total_s:10.2f} {rel:>17} {mean:9.3f} {per} {priced.federated:7.2f}  {note}")
    return "\n".join(lines)


def header(where: Setting) -> list[str]:
    own = ", ".join(f"{c} {s:.2f}" for c, s in sorted(where.own_round_s.items()))
    return [f"own round without faults (virtual s, each client alone through the server): {own}",
            f"bottleneck client: {where.bottleneck} ({where.assignment[where.bottleneck]}); "
            f"round deadline = 0.95 x its own round = {where.deadline_s:.3f} s"]


def plan_bench(path: Path, overrides: list[str]) -> str:
    where = setting(path, overrides)
    rows = []
    for kind in where.kinds():
        started = time.perf_counter()
        faults = where.fault_plan(kind)
        priced = where.price(faults)
        note = "; ".join(faults.describe()) or "-"
        rows.append((kind.name, priced, f"{note} [{priced.operations} ops, priced in {time.perf_counter() - started:.1f} s]"))
    title = f"PLAN-PRICED (no training) {path.name} as written but metrics off: {where.describe()}"
    return "\n".join([*header(where), "", table(title, rows, 5)])


def run_bench(path: Path, overrides: list[str]) -> str:
    """Each kind trained for real at the cheap setting; the table from each results folder's latency.json."""
    from p2pgan.cli import main as cli

    where = setting(path, overrides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        for i, kind in enumerate(where.kinds()):
            expected = where.price(where.fault_plan(kind))
            out = Path(tmp) / f"kind{i}"
            args = ["scenario", "run", str(path), "--out", str(out), "--no-live", "--threads", "1"]
            for item in (*overrides, *kind.overrides):
                args += ["--set", item]
            started = time.perf_counter()
            log = out.with_suffix(".log")
            with log.open("w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
                    contextlib.redirect_stderr(handle):
                code = cli(args)
            wall = time.perf_counter() - started
            if code != 0:
                print(log.read_text(encoding="utf-8")[-2000:], file=sys.stderr)
            if code != 0:
                rows.append((kind.name, Priced(float("nan"), {}, float("nan"), 0), f"run failed (exit {code})"))
                continue
            latency = json.loads((out / "latency.json").read_text())
            priced = Priced(latency["total_s"], {r["round"]: r["seconds"] for r in latency["rounds"]},
                            expected.federated, latency["num_operations"])
            same = ("recorded trace has the plan's operations" if priced.operations == expected.operations
                    else f"recorded {priced.operations} ops != plan's {expected.operations}: a fault was not executed")
            rows.append((kind.name, priced, f"{same}; plan prices {expected.total_s:.2f} s; wall {wall:.0f} s"))
    title = (f"TRAINED (memory transport) at a CHEAP setting ({' '.join(overrides)}): {where.describe()}; "
             "simulated seconds from each run's latency.json")
    return "\n".join([*header(where), "", table(title, rows, where.rounds)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=ROOT / "scenarios" / "multidomain.yaml")
    parser.add_argument("--rounds", type=int, default=None, help="rounds to price (default: the scenario's)")
    parser.add_argument("--run", action="store_true", help="also train every kind at a cheap setting")
    parser.add_argument("--run-rounds", type=int, default=4)
    args = parser.parse_args()
    if (args.rounds is not None and args.rounds < 2) or args.run_rounds < 2:
        parser.error("the dropout kind drops a client at round 2: price at least 2 rounds")
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = ["metrics.enabled=false", *([f"training.rounds={args.rounds}"] if args.rounds else [])]
    print(plan_bench(args.scenario, base), flush=True)
    if args.run:
        print("", flush=True)
        print(run_bench(args.scenario, ["metrics.enabled=false", *CHEAP, f"training.rounds={args.run_rounds}"]),
              flush=True)
    print(f"\n(bench wall time {time.perf_counter() - started:.0f} s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; torch threads 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
