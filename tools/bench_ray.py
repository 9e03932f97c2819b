"""Memory (one process) against Ray with 1, 2 and 4 shards, side by side in one run.

    python tools/bench_ray.py [--clients 100 200 400] [--batches 3] [--budget-gb 20] [--json FILE]

``scenarios/quick.yaml`` (HuSCF-GAN, width 0.25, batch 32, mixed cuts) with ``--clients`` split
evenly over its two domains, one round of ``--batches`` steps (local epochs of one batch each: at
400 clients a client holds about 12 of the 5,000 offline examples per domain, less than one batch),
metrics and checkpoints off. Every
configuration runs in a fresh subprocess, one after the other at each client count (so their
ratios come from the same minutes of this shared machine), with one torch thread per process:

* ``memory``: ``run_scenario``, every node in one process;
* ``ray-S``: ``run_ray`` on a private local Ray (``ray.address: local``), the server and S shards
  as actors with ``num_cpus_per_shard: 1`` (so 1 + S logical CPUs, whatever the cores).

Measured, per configuration:

* s/iteration: the median time between two consecutive steps' completion (every client's losses
  of the step received by the process writing the results; the first step of the round is the
  warm-up and is not counted), so preparation, actor start-up and federation are left out;
* per actor (``memory``: the one process): its peak resident memory (``VmHWM`` from
  ``/proc/self/status``, read inside the actor at the end of its run), the resident memory it
  started from, and its CPU seconds per iteration (``time.process_time`` between two of its
  steps' ends) - the numbers a Ray run writes in ``summary.json``'s ``ray.actors``;
* total: the peak of the summed resident memory of the process and all its descendants (the
  driver, Ray's own processes, the actors), sampled every 0.25 s. Pages shared between processes
  (Ray's object store) count once per process, so it is an upper bound.

Memory budget (``--budget-gb``): a configuration's next client count is not run when its total,
extrapolated linearly from the counts it already ran, would exceed the budget or leave less than
``--reserve-gb`` of this machine's memory available (it is shared). "Largest clients within the
budget" is extrapolated the same way from the measured per-client memory, not allocated: the
tool says so in its output.

Finally it projects a 1,000-client run on a cluster (one core per actor) from the measured
per-shard costs: a shard's memory and CPU per iteration grow with the clients it hosts, the
server's with all clients (see docs/ray.md, "Sizing shards").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "scenarios" / "quick.yaml"
CONFIGS = ("memory", "ray-1", "ray-2", "ray-4", "ray-2-server2", "ray-2-cohort")
"""``ray-S``: S shards and a server of one CPU each, clients as nodes; options after it:
``-serverN``, the server actor with N CPUs (``ray.num_cpus_server``: N torch threads for its
batched blocks); ``-cohort``, each shard's clients run together (``ray.clients: cohort``)."""
TARGET_RATIO = 1.3
"""Ray with 2 shards against one process, s/iteration, on 2 cores (issue 10)."""
SAMPLE_S = 0.25
PROJECTED_CLIENTS = 1000
PROJECTED_SHARDS = (10, 20, 50)


# -- measuring, in the worker subprocess ---------------------------------------------------------


def status_mb(field_name: str, pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def tree_rss_mb(root: int) -> float:
    """Summed resident memory of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += status_mb("VmRSS", pid) or 0.0
        stack.extend(children.get(pid, []))
    return total


class TreeSampler(threading.Thread):
    """The peak of :func:`tree_rss_mb` for this process, sampled in the background."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
        return self.peak_mb


class StepClock:
    """Bus observer: when every client's losses of a step have arrived (wall and CPU time)."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self._seen: Counter = Counter()
        self.done: dict[tuple[int, int], tuple[float, float]] = {}

    def __call__(self, event: object) -> None:
        from p2pgan.protocol.events import ClientLosses

        if isinstance(event, ClientLosses):
            key = (event.round, event.step)
            self._seen[key] += 1
            if self._seen[key] == self.clients:
                self.done[key] = (time.perf_counter(), time.process_time())

    def per_iteration(self, which: int) -> list[float]:
        """Seconds between consecutive completed steps of a round (``which``: 0 wall, 1 CPU)."""
        marks = sorted(self.done.items())
        return [b[which] - a[which] for (ka, a), (kb, b) in zip(marks, marks[1:]) if ka[0] == kb[0]]


def bench_scenario(config: str, clients: int, batches: int, out: Path):
    from p2pgan.config.loader import load_scenario

    overrides = [f"domains.mnist={clients // 2}", f"domains.fashion-mnist={clients - clients // 2}",
                 "model.width=0.25", "training.rounds=1", f"training.local_epochs={batches}",
                 "training.max_batches_per_epoch=1", "metrics.enabled=false", "checkpoint.enabled=false",
                 f"output.dir={out}"]
    if config != "memory":
        _, shards, *options = config.split("-")
        server = next((o.removeprefix("server") for o in options if o.startswith("server")), "1")
        overrides += ["execution.engine=ray", "ray.address=local", f"ray.shards={shards}",
                      "ray.num_cpus_per_shard=1", f"ray.num_cpus_server={server}",
                      f"ray.clients={'cohort' if 'cohort' in options else 'nodes'}"]
    return load_scenario(QUICK, overrides)


def worker(config: str, clients: int, batches: int) -> dict:
    import torch

    from p2pgan.runtime import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the command line does
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        out = Path(tmp) / "run"
        scenario = bench_scenario(config, clients, batches, out)
        clock = StepClock(scenario.num_clients)
        sampler = TreeSampler()
        sampler.start()
        started = time.perf_counter()
        if config == "memory":
            from p2pgan.run.session import run_scenario

            outcome = run_scenario(scenario, [clock])
        else:
            from p2pgan.run.ray import run_ray

            outcome = run_ray(scenario, [clock])
        wall = time.perf_counter() - started
        total_peak = sampler.stop()
        summary = outcome.summary
        sizes = {c.client_id: c.num_examples for c in outcome.prepared.plan.clients}
    walls, cpus = clock.per_iteration(0), clock.per_iteration(1)
    if config == "memory":
        actors = {"process": {"clients": sorted(sizes), "examples": sum(sizes.values()), "meter": {
            "peak_mb": status_mb("VmHWM"), "cpu_s_per_iteration": statistics.median(cpus) if cpus else None,
            "iterations_timed": len(cpus)}}}
    else:
        actors = summary.get("ray", {}).get("actors", {})
        for actor in actors.values():
            actor["examples_own"] = sum(sizes[c] for c in actor["clients"])
    return {"config": config, "clients": scenario.num_clients, "status": outcome.status,
            "detail": summary.get("detail", ""), "wall_s": wall,
            "s_per_iteration": statistics.median(walls) if walls else None, "iterations_timed": len(walls),
            "driver_peak_mb": status_mb("VmHWM"), "total_peak_mb": total_peak, "actors": actors}


# -- the run, in the parent -------------------------------------------------------------------------


def run_worker(config: str, clients: int, batches: int, timeout_s: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", config, "--clients", str(clients), "--batches", str(batches)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"config": config, "clients": clients, "status": "failed", "detail": f"over {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"config": config, "clients": clients, "status": "failed", "detail": tail}
    return json.loads(lines[-1])


def available_mb() -> float:
    return status_like_meminfo("MemAvailable") or float("inf")


def settled_available_mb(timeout_s: float = 30.0) -> float:
    """MemAvailable once it stops rising (the last configuration's processes have let go)."""
    deadline = time.monotonic() + timeout_s
    last = available_mb()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = available_mb()
        if now - last < 100:
            return now
        last = now
    return last


def status_like_meminfo(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(intercept, slope) by least squares; with one client count, or where the intercept would be
    negative (a cost that grows faster than linearly: no cost is below zero with no clients), the
    least-squares slope through the origin."""
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(xs)) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
        if my - slope * mx >= 0:
            return my - slope * mx, slope
    return 0.0, sum(x * y for x, y in points) / sum(x * x for x in xs)


def shards_of(row: dict) -> dict[str, dict]:
    return {name: a for name, a in row["actors"].items() if name.startswith("shard-")}


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], memory_s: dict[int, float]) -> None:
    print(f"\n{'clients':>7} {'config':>13} {'s/iter':>7} {'x mem':>6} {'cpu s/it':>8} {'total MB':>9} {'driver MB':>9}  "
          f"peak MB per actor [clients] (cpu s/iter)")
    for row in rows:
        if row["status"] != "completed":
            print(f"{row['clients']:>7} {row['config']:>13}  {row['status']}: {row.get('detail', '')}")
            continue
        base = memory_s.get(row["clients"])
        ratio = row["s_per_iteration"] / base if base and row["s_per_iteration"] else None
        actors = ", ".join(
            f"{name} {fmt(a['meter']['peak_mb'], '.0f')} [{len(a['clients'])}] "
            f"({fmt(a['meter']['cpu_s_per_iteration'])})" for name, a in row["actors"].items() if a.get("meter"))
        cpus = [a["meter"]["cpu_s_per_iteration"] for a in row["actors"].values() if a.get("meter")]
        cpu = sum(cpus) if cpus and None not in cpus else None
        print(f"{row['clients']:>7} {row['config']:>13} {fmt(row['s_per_iteration']):>7} {fmt(ratio):>6} {fmt(cpu):>8} "
              f"{row['total_peak_mb']:>9.0f} {fmt(row['driver_peak_mb'], '.0f'):>9}  {actors}")


def check_shards(rows: list[dict]) -> list[str]:
    """Each shard holds its own clients' examples only, and its memory grows with its share."""
    lines = []
    for row in rows:
        if row["status"] != "completed" or row["config"] == "memory":
            continue
        server = row["actors"]["server"]
        wrong = [n for n, a in shards_of(row).items() if a.get("examples") != a["examples_own"]]
        per_client = [(a["meter"]["peak_mb"] - a["meter"]["base_mb"]) / len(a["clients"])
                      for a in shards_of(row).values()]
        lines.append(f"  {row['clients']:>4} clients {row['config']}: examples held = own clients' "
                     f"{'yes' if not wrong else 'NO: ' + ', '.join(wrong)}; server holds {server.get('examples')}; "
                     f"shard peak above its start: {min(per_client):.2f}-{max(per_client):.2f} MB per hosted client")
    return lines


def projection(rows: list[dict], clients: str = "nodes") -> list[str]:
    """A 1,000-client run on a cluster, from the Ray runs' per-actor costs (one core per actor),
    with shards running their clients as ``clients`` (``ray-S`` or ``ray-S-cohort`` runs)."""
    options = [] if clients == "nodes" else [clients]
    ray_rows = [r for r in rows if r["status"] == "completed" and r["config"].startswith("ray-")
                and r["config"].split("-")[2:] == options]
    if not ray_rows:
        return [f"  no Ray run with clients: {clients} completed: nothing to project from"]
    shard_mem, shard_cpu, shard_base = [], [], []
    server_mem, server_cpu = [], []
    for row in ray_rows:
        for actor in shards_of(row).values():
            meter, hosted = actor["meter"], len(actor["clients"])
            shard_mem.append((hosted, meter["peak_mb"]))
            shard_base.append(meter["base_mb"])
            if meter["cpu_s_per_iteration"] is not None:
                shard_cpu.append((hosted, meter["cpu_s_per_iteration"]))
        meter = row["actors"]["server"]["meter"]
        server_mem.append((row["clients"], meter["peak_mb"]))
        if meter["cpu_s_per_iteration"] is not None:
            server_cpu.append((row["clients"], meter["cpu_s_per_iteration"]))
    fits = {name: linear_fit(points) for name, points in
            (("shard_mem", shard_mem), ("shard_cpu", shard_cpu), ("server_mem", server_mem), ("server_cpu", server_cpu))}
    if any(fit is None for fit in fits.values()):
        return ["  too few measurements to project"]
    sm0, sm1 = fits["shard_mem"]
    sc0, sc1 = fits["shard_cpu"]
    vm0, vm1 = fits["server_mem"]
    vc0, vc1 = fits["server_cpu"]
    n = PROJECTED_CLIENTS
    server_mb, server_s = vm0 + vm1 * n, vc0 + vc1 * n
    lines = [f"  fitted over {len(shard_mem)} shards and {len(server_mem)} servers measured above "
             f"(peak = a + b x clients; cpu/iter likewise):",
             f"    shard:  {sm0:.0f} MB + {sm1:.2f} MB/client, {sc0:.3f} s + {sc1 * 1000:.1f} ms/client per iteration",
             f"    server: {vm0:.0f} MB + {vm1:.2f} MB/client, {vc0:.3f} s + {vc1 * 1000:.1f} ms/client per iteration",
             f"  {n} clients -> server actor ~{server_mb / 1024:.1f} GB, ~{server_s:.2f} CPU s/iteration:"]
    for shards in PROJECTED_SHARDS:
        hosted = math.ceil(n / shards)
        shard_mb, shard_s = sm0 + sm1 * hosted, sc0 + sc1 * hosted
        total_gb = (server_mb + shards * shard_mb) / 1024
        # An iteration's critical path: the shard's clients' own steps, then the server's batched
        # middle for everyone, then back (no overlap assumed; messages' network time not included).
        lines.append(f"    {shards:>3} shards x {hosted:>3} clients: {shards + 1} actors/cores, shard ~{shard_mb:.0f} MB, "
                     f"cluster ~{total_gb:.1f} GB, ~{shard_s + server_s:.2f} s/iteration "
                     f"(shard {shard_s:.2f} + server {server_s:.2f})")
    lines.append("  the server actor's share grows with every client: past a few hundred clients it sets the "
                 "iteration time, whatever the shard count")
    return lines


def budget_lines(rows: list[dict], budget_mb: float) -> list[str]:
    lines = []
    for config in CONFIGS:
        points = [(r["clients"], r["total_peak_mb"]) for r in rows if r["config"] == config and r["status"] == "completed"]
        fit = linear_fit(points)
        if fit is None:
            lines.append(f"  {config:>7}: no completed run")
            continue
        a, b = fit
        largest = int((budget_mb - a) / b) if b > 0 else None
        measured = max(n for n, _ in points)
        lines.append(f"  {config:>7}: {a:.0f} MB + {b:.2f} MB/client (fit over {', '.join(str(n) for n, _ in points)} "
                     f"clients) -> ~{largest:,} clients in {budget_mb / 1024:.0f} GB (extrapolated; largest run "
                     f"here: {measured})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--batches", type=int, default=3,
                        help="steps of the one round (the first is the warm-up; the others are timed)")
    parser.add_argument("--budget-gb", type=float, default=20.0)
    parser.add_argument("--reserve-gb", type=float, default=6.0,
                        help="memory to leave to the rest of this machine (others work on it too)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per configuration")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.clients[0], args.batches)))
        return
    budget_mb = args.budget_gb * 1024
    print(f"bench_ray: {QUICK.name} at width 0.25, 1 round x {args.batches} steps ({args.batches - 1} timed), "
          f"clients {args.clients}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{available_mb():.0f} MB available, budget {args.budget_gb:g} GB", flush=True)
    rows: list[dict] = []
    memory_s: dict[int, float] = {}
    for clients in args.clients:
        for config in args.configs:
            done = [(r["clients"], r["total_peak_mb"]) for r in rows if r["config"] == config and r["status"] == "completed"]
            fit = linear_fit(done)
            predicted = fit[0] + fit[1] * clients if fit else None
            limit = min(budget_mb, settled_available_mb() - args.reserve_gb * 1024)
            if predicted is not None and predicted > limit:
                why = "the budget" if limit == budget_mb else f"what is available now less {args.reserve_gb:g} GB"
                rows.append({"config": config, "clients": clients, "status": "skipped",
                             "detail": f"extrapolated {predicted:.0f} MB exceeds {why} ({limit:.0f} MB)"})
                print(f"  {clients} clients {config}: skipped ({rows[-1]['detail']})", flush=True)
                continue
            started = time.perf_counter()
            row = run_worker(config, clients, args.batches, args.timeout_s)
            rows.append(row)
            if row["status"] == "completed" and config == "memory":
                memory_s[clients] = row["s_per_iteration"]
            print(f"  {clients} clients {config}: {row['status']} in {time.perf_counter() - started:.0f} s"
                  + (f", {row['s_per_iteration']:.2f} s/iteration, total peak {row['total_peak_mb']:.0f} MB"
                     if row["status"] == "completed" else f" ({row.get('detail')})"), flush=True)
    print_table(rows, memory_s)
    print("\nshards hold their own clients' data only:")
    for line in check_shards(rows):
        print(line)
    print(f"\nRay with 2 shards against one process (target <= {TARGET_RATIO}x s/iteration):")
    for row in rows:
        if row["config"].startswith("ray-2") and row["status"] == "completed" and memory_s.get(row["clients"]):
            ratio = row["s_per_iteration"] / memory_s[row["clients"]]
            memory_row = next(r for r in rows if r["config"] == "memory" and r["clients"] == row["clients"])
            cpu = sum(a["meter"]["cpu_s_per_iteration"] or 0 for a in row["actors"].values())
            cpu_memory = memory_row["actors"]["process"]["meter"]["cpu_s_per_iteration"] or float("nan")
            print(f"  {row['clients']:>4} clients {row['config']}: {ratio:.2f}x wall ({'met' if ratio <= TARGET_RATIO else 'NOT met'}); "
                  f"CPU seconds of all actors {cpu / cpu_memory:.2f}x the one process's")
    print(f"\nlargest client count per configuration within {args.budget_gb:g} GB (total peak, extrapolated "
          f"linearly from the measured counts, not allocated):")
    for line in budget_lines(rows, budget_mb):
        print(line)
    for clients in ("nodes", "cohort"):
        print(f"\nprojection: {PROJECTED_CLIENTS} clients on a cluster, shards' clients as {clients} (one core per "
              "actor, from the Ray runs above):")
        for line in projection(rows, clients):
            print(line)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
