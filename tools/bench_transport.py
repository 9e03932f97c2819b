#!/usr/bin/env python
"""Transport benchmark: the same scenario over memory, http in-process and http multi-process,
side by side, plus raw payload throughput for activation-sized messages.

    .venv/bin/python tools/bench_transport.py                       # quick scenario, all modes
    .venv/bin/python tools/bench_transport.py --set training.rounds=2 --no-processes
    .venv/bin/python tools/bench_transport.py --throughput-only --messages 50

Wall time per iteration is measured between the end of round 1 and the end of the last round
(from ``rounds.jsonl``), so start-up (process launch, data loading, first-touch allocations) is
reported apart. Every mode must produce bit-identical final weights; the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Idle OpenMP workers must sleep, not spin: with several processes (or an event loop doing I/O
# between kernels) on few cores, spinning workers steal the CPU. The multi-process children get
# the same setting, so every mode runs under it. It changes timing only, never results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from p2pgan.config import load_scenario  # noqa: E402
from p2pgan.protocol.messages import Message, MessageKind, Phase  # noqa: E402


# -- whole-scenario timings ----------------------------------------------------------------------


def per_iteration(results: Path, steps_per_round: int) -> tuple[float | None, float]:
    walls = [json.loads(line)["wall_s"] for line in (results / "rounds.jsonl").read_text().splitlines()]
    if len(walls) < 2:
        return None, walls[-1] if walls else float("nan")
    return (walls[-1] - walls[0]) / ((len(walls) - 1) * steps_per_round), walls[-1]


def weights_of(results: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted((results / "weights").glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    return out


def run_mode(mode: str, scenario_file: Path, overrides: list[str], folder: Path) -> dict:
    from p2pgan.run.processes import run_processes
    from p2pgan.run.session import run_scenario

    kind = "memory" if mode == "memory" else "http"
    extra = [f"transport.kind={kind}", f"output.dir={folder}", "metrics.enabled=false"]
    if mode == "http-processes":
        extra.append("transport.processes=true")
    scenario = load_scenario(scenario_file, [*overrides, *extra])
    started = time.perf_counter()
    if mode == "http-processes":
        outcome = run_processes(scenario, out=io.StringIO())
    else:
        outcome = run_scenario(scenario)
    total = time.perf_counter() - started
    if outcome.status != "completed":
        raise SystemExit(f"{mode}: run {outcome.status}: {outcome.summary.get('detail')}")
    schedule = outcome.prepared.plan.schedule
    iteration, training = per_iteration(folder, schedule.steps_per_round)
    return {"mode": mode, "total_s": total, "training_s": training, "s_per_iter": iteration,
            "iterations": schedule.rounds * schedule.steps_per_round, "clients": len(outcome.prepared.plan.clients)}


def scenario_table(args) -> list[dict]:
    modes = ["memory", "http-inprocess"] + ([] if args.no_processes else ["http-processes"])
    rows, weights = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_transport_") as tmp:
        for mode in modes:
            for repeat in range(args.repeats):
                folder = Path(tmp) / f"{mode}-{repeat}"
                row = run_mode(mode, args.scenario, args.overrides, folder)
                row["repeat"] = repeat
                rows.append(row)
                weights.setdefault(mode, weights_of(folder))
                print(f"  {mode:15s} run {repeat + 1}/{args.repeats}: {row['total_s']:.1f} s total", flush=True)
    reference = weights["memory"]
    best: dict[str, dict] = {}
    for row in rows:
        current = best.get(row["mode"])
        if current is None or (row["s_per_iter"] or 1e9) < (current["s_per_iter"] or 1e9):
            best[row["mode"]] = row
    base = best["memory"]["s_per_iter"]
    for mode, row in best.items():
        same = weights[mode].keys() == reference.keys() and all(
            weights[mode][k].view(-1).view(torch.uint8).equal(reference[k].view(-1).view(torch.uint8)) for k in reference)
        row["identical_to_memory"] = same
        row["ratio_to_memory"] = (row["s_per_iter"] / base) if (base and row["s_per_iter"]) else None
    return list(best.values())


# -- raw payload throughput ------------------------------------------------------------------------


def activation_sizes() -> list[tuple[str, tuple[int, ...]]]:
    """Shapes of real activations crossing the split, from the model definition (not hand tables)."""
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.model.costs import profile_model

    shapes = []
    for label, spec, batch in (("quick (w0.25, b32)", ModelSpec(width=0.25, z_dim=32), 32),
                               ("reference (w1, b64)", ModelSpec(width=1.0, z_dim=100), 64)):
        costs = profile_model(spec)
        for block in ("g1", "d1"):
            per_sample = costs[block].out_bytes // 4
            shapes.append((f"{label} {block} out", (batch, per_sample)))
    return shapes


def make_message(step: int, shape: tuple[int, ...]) -> Message:
    return Message(MessageKind.ACTIVATION, "c000", "server", 1, step, Phase.G_FWD, {"act": torch.randn(*shape)})


async def _throughput_local(kind: str, shape: tuple[int, ...], count: int) -> float:
    from transports.catalogue import create_transport

    options = {} if kind == "memory" else {"host": "127.0.0.1", "port": 0, "retries": 3, "max_message_mb": 1024}
    transport = create_transport(kind, receive_timeout_s=60, **options)
    endpoints = await transport.open(["server", "c000"])
    messages = [make_message(i, shape) for i in range(count + 2)]
    try:
        for msg in messages[:2]:  # warm-up: connections, allocator
            await endpoints["c000"].send(msg)
            await endpoints["server"].receive(msg.key)
        started = time.perf_counter()
        for msg in messages[2:]:
            await endpoints["c000"].send(msg)
            await endpoints["server"].receive(msg.key)
        elapsed = time.perf_counter() - started
    finally:
        await transport.close()
    return count * messages[0].nbytes / elapsed / 1e6


async def _throughput_cross_process(shape: tuple[int, ...], count: int) -> float:
    from transports.http import HttpTransport

    secret = os.urandom(32)
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--_receiver", json.dumps({"shape": list(shape), "count": count + 2}),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(secret.hex().encode() + b"\n")
        url = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        sender = HttpTransport(receive_timeout_s=60, secret=secret, nodes=["server", "c000"], max_message_mb=1024,
                               peers={"server": url})
        endpoints = await sender.open(["c000"])
        messages = [make_message(i, shape) for i in range(count + 2)]
        try:
            for msg in messages[:2]:
                await endpoints["c000"].send(msg)
            started = time.perf_counter()
            for msg in messages[2:]:
                await endpoints["c000"].send(msg)  # returns once the receiver has it in its mailbox
            elapsed = time.perf_counter() - started
        finally:
            await sender.close()
        await asyncio.wait_for(child.stdout.readline(), 60)  # receiver claimed everything
        return count * messages[0].nbytes / elapsed / 1e6
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def _receiver(config: dict) -> None:
    from transports.http import HttpTransport

    secret = bytes.fromhex(sys.stdin.readline().strip())
    transport = HttpTransport(receive_timeout_s=60, secret=secret, nodes=["server", "c000"], max_message_mb=1024)
    endpoints = await transport.open(["server"])
    print(transport.url_of("server"), flush=True)
    try:
        for step in range(config["count"]):
            await endpoints["server"].receive(make_message(step, (1,)).key)
        print("done", flush=True)
    finally:
        await transport.close()


def throughput_table(args) -> list[dict]:
    rows = []
    for label, shape in activation_sizes():
        nbytes = 4 * shape[0] * shape[1]
        count = max(4, min(args.messages, int(args.megabytes * 1e6 // nbytes)))
        row = {"payload": label, "bytes": nbytes, "messages": count,
               "memory_MBps": asyncio.run(_throughput_local("memory", shape, count)),
               "http_inprocess_MBps": asyncio.run(_throughput_local("http", shape, count))}
        if not args.no_processes:
            row["http_cross_process_MBps"] = asyncio.run(_throughput_cross_process(shape, count))
        rows.append(row)
        print(f"  {label}: {nbytes / 1e6:.2f} MB x {count}", flush=True)
    return rows


# -- report --------------------------------------------------------------------------------------


def print_report(scenario_rows: list[dict], throughput_rows: list[dict], header: str) -> None:
    print()
    print(header)
    if scenario_rows:
        print(f"{'mode':16s} {'total s':>8s} {'train s':>8s} {'s/iter':>8s} {'x memory':>9s}  identical to memory")
        for row in scenario_rows:
            it = row["s_per_iter"]
            ratio = row.get("ratio_to_memory")
            print(f"{row['mode']:16s} {row['total_s']:8.1f} {row['training_s']:8.1f} "
                  f"{(f'{it:.3f}' if it else 'n/a'):>8s} {(f'{ratio:.2f}' if ratio else 'n/a'):>9s}  "
                  f"{'yes' if row['identical_to_memory'] else 'NO'}")
    if throughput_rows:
        print()
        print("payload throughput, MB/s (sequential sends; each returns once the message is in the receiver's mailbox)")
        cols = ["memory_MBps", "http_inprocess_MBps"] + (["http_cross_process_MBps"] if "http_cross_process_MBps" in throughput_rows[0] else [])
        names = {"memory_MBps": "memory", "http_inprocess_MBps": "http in-process", "http_cross_process_MBps": "http cross-process"}
        print(f"{'payload':28s} {'MB':>6s} " + " ".join(f"{names[c]:>18s}" for c in cols))
        for row in throughput_rows:
            print(f"{row['payload']:28s} {row['bytes'] / 1e6:6.2f} " + " ".join(f"{row[c]:18.0f}" for c in cols))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "quick.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode (the fastest is reported)")
    parser.add_argument("--no-processes", action="store_true", help="skip the multi-process modes")
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument("--scenario-only", action="store_true")
    parser.add_argument("--messages", type=int, default=40, help="messages per throughput measurement (at most)")
    parser.add_argument("--megabytes", type=float, default=200.0, help="payload per throughput measurement (at most)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--_receiver", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._receiver is not None:
        asyncio.run(_receiver(json.loads(args._receiver)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bench_transport: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    scenario_rows = [] if args.throughput_only else scenario_table(args)
    throughput_rows = [] if args.scenario_only else throughput_table(args)
    header = (f"{args.scenario.name} {' '.join(args.overrides)}".strip()
              + (f": {scenario_rows[0]['clients']} clients, {scenario_rows[0]['iterations']} iterations; "
                 f"s/iter measured from the end of round 1 to the end of the run" if scenario_rows else ""))
    print_report(scenario_rows, throughput_rows, header)
    if args.json:
        args.json.write_text(json.dumps({"scenario": scenario_rows, "throughput": throughput_rows}, indent=2) + "\n")
    if scenario_rows and not all(row["identical_to_memory"] for row in scenario_rows):
        print("bench_transport: final weights differ between transports", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
