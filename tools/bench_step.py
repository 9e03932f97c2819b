"""Time one training iteration: the split engine over the memory transport vs a monolithic loop.

Both sides do the same math on the same batch sizes: every client runs G forward, D on fake and
real, D step, G step. The monolithic side runs each client's whole G and D as plain modules in a
Python loop; the split side runs ClientNode/ServerNode actors exchanging messages, with the
server's middle blocks batched over clients. Each (implementation, clients) pair runs in a fresh
subprocess so that peak memory is its own.

    python tools/bench_step.py                     # 4, 8, 16 clients, width 1, batch 64
    python tools/bench_step.py --clients 4 --width 0.5 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.nn import functional as F


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_data(n: int, seed: int):
    from p2pgan.plan.nodedata import LocalData

    gen = torch.Generator().manual_seed(seed)
    return LocalData(torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1, torch.randint(0, 10, (n,), generator=gen))


def split_worker(clients: int, width: float, batch: int, reps: int, warmup: int) -> dict:
    from p2pgan.engine.client import ClientNode
    from p2pgan.ids import SERVER_ID
    from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
    from p2pgan.engine.server import ServerNode
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.plan.setup import NodeSetup
    from p2pgan.bus import EventBus
    from p2pgan.strategies.fedavg import SplitFedAvg
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.model.costs import profile_model
    from p2pgan.model.segments import all_cut_options
    from transports.memory import MemoryTransport

    spec = ModelSpec(width=width)
    setup = NodeSetup(spec, profile_model(spec), 0, 2e-4, (0.5, 0.999))
    options = all_cut_options()
    plans = tuple(ClientPlan(f"c{i:03d}", options[(5 * i) % 16], 4 * batch) for i in range(clients))
    schedule = Schedule(1, 1, warmup + reps, batch)
    plan = RunPlan(plans, schedule)
    base = peak_rss_mb()

    async def go() -> list[float]:
        transport = MemoryTransport()
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED)
        nodes = [ClientNode(setup, p, schedule, local_data(p.num_examples, i), endpoints[p.client_id], bus, U_SHAPED)
                 for i, p in enumerate(plans)]
        times = []
        for step in range(warmup + reps):
            start = time.perf_counter()
            await asyncio.gather(server.iteration(1, step), *(n.iteration(1, step) for n in nodes))
            times.append(time.perf_counter() - start)
        return times[warmup:]

    times = asyncio.run(go())
    return {"median_s": statistics.median(times), "peak_mb": peak_rss_mb(), "base_mb": base}


def mono_worker(clients: int, width: float, batch: int, reps: int, warmup: int) -> dict:
    from p2pgan.model.blocks import ModelSpec, build_initial_blocks
    from p2pgan.model.segments import Segment

    spec = ModelSpec(width=width)
    base = peak_rss_mb()
    models = []
    for i in range(clients):
        blocks = build_initial_blocks(spec, seed=0)
        g = Segment({n: blocks[n] for n in ("g0", "g1", "g2", "g3", "g4")})
        d = Segment({n: blocks[n] for n in ("d0", "d1", "d2", "d3", "d4")})
        models.append((g, d, torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)),
                       torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999)), local_data(4 * batch, i)))
    gen = torch.Generator().manual_seed(0)
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)

    def iteration() -> None:
        for g, d, g_opt, d_opt, data in models:
            idx = torch.randperm(len(data), generator=gen)[:batch]
            real, labels = data.images[idx], data.labels[idx]
            z = torch.randn(batch, spec.z_dim, generator=gen)
            fake = g(z, labels)
            d_opt.zero_grad(set_to_none=True)
            d_loss = 0.5 * (F.binary_cross_entropy(d(fake.detach(), labels), zeros)
                            + F.binary_cross_entropy(d(real, labels), ones))
            d_loss.backward()
            d_opt.step()
            g_opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy(d(fake, labels), ones).backward()
            g_opt.step()

    times = []
    for _ in range(warmup + reps):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times[warmup:]), "peak_mb": peak_rss_mb(), "base_mb": base}


def run_worker(kind: str, clients: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--clients", str(clients), "--width", str(args.width),
           "--batch", str(args.batch), "--reps", str(args.reps), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.default_malloc:
        cmd.append("--default-malloc")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator settings (the CLI tunes them; see p2pgan.runtime)")
    parser.add_argument("--worker", choices=("split", "mono"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        if not args.default_malloc:
            from p2pgan.runtime import keep_freed_memory

            keep_freed_memory()  # both sides alike, as the CLI runs them
        worker = split_worker if args.worker == "split" else mono_worker
        print(json.dumps(worker(args.clients[0], args.width, args.batch, args.reps, args.warmup)))
        return
    print(f"width {args.width}, batch {args.batch}, median of {args.reps} after {args.warmup} warm-up, "
          f"torch threads {args.threads or torch.get_num_threads()}, mixed cuts, "
          f"{'default' if args.default_malloc else 'tuned'} malloc")
    print(f"{'clients':>7} {'split s/it':>11} {'mono s/it':>10} {'ratio':>6} {'split MB/client':>16} {'mono MB/client':>15}")
    for clients in args.clients:
        # Alternate order so that slow drift of the machine does not favour one side.
        mono = run_worker("mono", clients, args)
        split = run_worker("split", clients, args)
        ratio = split["median_s"] / mono["median_s"]
        split_mb = (split["peak_mb"] - split["base_mb"]) / clients
        mono_mb = (mono["peak_mb"] - mono["base_mb"]) / clients
        print(f"{clients:>7} {split['median_s']:>11.3f} {mono['median_s']:>10.3f} {ratio:>6.2f} "
              f"{split_mb:>16.1f} {mono_mb:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
