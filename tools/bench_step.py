"""Time one training iteration: node engine vs cohort engine vs a monolithic loop, against a large
fp32 GEMM measured in the same run.

All three do the same math on the same batch sizes: every client runs G forward, D on fake and
real, a D step, a G step. ``mono`` runs each client's whole G and D as plain modules in a Python
loop; ``nodes`` runs ClientNode/ServerNode actors over the memory transport, the server's middle
blocks batched over clients; ``cohort`` runs the same program for every client in one engine
without a transport (``p2pgan.engine.cohort``), with the device's default kernel policy (on the
CPU contiguous, as the node engine; ``--cl-blocks`` puts blocks in ``channels_last``);
``cohort-contiguous`` is the cohort with every block contiguous whatever the policy. Each (implementation,
size) runs in a fresh subprocess so that its peak memory is its own.

For each it prints seconds per iteration (median of ``--reps`` after ``--warmup``), the achieved
GFLOP/s (FLOPs of the iteration as the latency model counts them, from the model's measured
costs), that rate as a share of the GEMM measured in this run and of the nominal fp32 peak
(cores x FLOP/cycle x clock, from the flags), and the peak memory per client.

    python tools/bench_step.py                                   # the two reference sizes
    python tools/bench_step.py --sizes 12:0.25:32 --reps 5 --impls nodes cohort cohort-contiguous --clock cpu
    python tools/bench_step.py --json out.json                   # also write the table as JSON
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

IMPLS = ("mono", "nodes", "cohort", "cohort-contiguous")
DEFAULT_SIZES = ("12:0.25:32", "16:1:64")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_data(n: int, seed: int):
    from p2pgan.plan.nodedata import LocalData

    gen = torch.Generator().manual_seed(seed)
    return LocalData(torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1, torch.randint(0, 10, (n,), generator=gen))


def split_setup(clients: int, width: float, batch: int, steps: int):
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.model.costs import profile_model
    from p2pgan.model.segments import all_cut_options
    from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
    from p2pgan.plan.setup import NodeSetup

    spec = ModelSpec(width=width)
    setup = NodeSetup(spec, profile_model(spec), 0, 2e-4, (0.5, 0.999))
    options = all_cut_options()
    plans = tuple(ClientPlan(f"c{i:03d}", options[(5 * i) % 16], 4 * batch) for i in range(clients))
    plan = RunPlan(plans, Schedule(1, 1, steps, batch))
    data = {p.client_id: local_data(p.num_examples, i) for i, p in enumerate(plans)}
    return setup, plan, data


def iteration_flops(clients: int, width: float, batch: int) -> float:
    """FLOPs of one iteration of every client, as the latency model counts them."""
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.sim.trace import trace_from_program

    setup, plan, _ = split_setup(clients, width, batch, 1)
    splits = {c.client_id: c.split for c in plan.clients}
    ops = trace_from_program(U_SHAPED, splits, setup.costs, {c: batch for c in splits}, 1, include_aggregation=False)
    return sum(op.flops for op in ops if op.is_compute)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds since ``start`` (CPU time is what a shared
    machine's other load disturbs least; with one thread it equals wall time on an idle one)."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def timed(times: list[tuple[float, float]], base_mb: float) -> dict:
    return {"times": [w for w, _ in times], "cpu_times": [c for _, c in times], "peak_mb": peak_rss_mb(),
            "base_mb": base_mb}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def nodes_worker(clients: int, width: float, batch: int, reps: int, warmup: int, device: str = "cpu") -> dict:
    from p2pgan.bus import EventBus
    from p2pgan.engine.client import ClientNode
    from p2pgan.engine.server import ServerNode
    from p2pgan.ids import SERVER_ID
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.strategies.fedavg import SplitFedAvg
    from transports.memory import MemoryTransport

    setup, plan, data = split_setup(clients, width, batch, warmup + reps)
    base = peak_rss_mb()

    async def go() -> list[float]:
        transport = MemoryTransport()
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        # A device is passed only where one is asked for (the node engine's device support is its own).
        on = {} if device == "cpu" else {"device": torch.device(device)}
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED, **on)
        nodes = [ClientNode(setup, p, plan.schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED, **on)
                 for p in plan.clients]
        times = []
        for step in range(warmup + reps):
            start = clocks()
            await asyncio.gather(server.iteration(1, step), *(n.iteration(1, step) for n in nodes))
            sync(device)
            times.append(elapsed(start))
        return times[warmup:]

    return timed(asyncio.run(go()), base)


def cohort_worker(clients: int, width: float, batch: int, reps: int, warmup: int, device: str = "cpu",
                  channels_last: frozenset[str] | None = None) -> dict:
    """``channels_last``: the blocks in that format (``None``: the device's default policy)."""
    from p2pgan.bus import EventBus
    from p2pgan.engine.cohort import CohortEngine
    from p2pgan.engine.execution import KernelPolicy, default_policy
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.strategies.fedavg import SplitFedAvg

    setup, plan, data = split_setup(clients, width, batch, warmup + reps)
    base = peak_rss_mb()
    if device.startswith("cuda"):
        from p2pgan.engine.execution import exact_cuda

        exact_cuda()
    policy = (default_policy(torch.device(device)) if channels_last is None
              else KernelPolicy(torch.device(device), channels_last))
    engine = CohortEngine(setup, plan, data, SplitFedAvg(), 1, U_SHAPED, EventBus(), policy)
    times = []
    for step in range(warmup + reps):
        start = clocks()
        engine.iteration(1, step)
        sync(device)
        times.append(elapsed(start))
    return timed(times[warmup:], base)


def mono_models(clients: int, width: float, batch: int, device: str = "cpu") -> list[tuple]:
    """Per client: whole G and D as plain modules, their Adams and ``4 * batch`` examples."""
    from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, ModelSpec, build_initial_blocks
    from p2pgan.model.segments import Segment

    spec = ModelSpec(width=width)
    models = []
    for i in range(clients):
        blocks = build_initial_blocks(spec, seed=0)
        g = Segment({n: blocks[n] for n in GENERATOR.block_names}).to(device)
        d = Segment({n: blocks[n] for n in DISCRIMINATOR.block_names}).to(device)
        data = local_data(4 * batch, i)
        data = type(data)(data.images.to(device), data.labels.to(device))
        models.append((g, d, torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)),
                       torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999)), data))
    return models


def mono_iteration(models: list[tuple], batch: int, width: float, gen: torch.Generator, device: str = "cpu") -> None:
    """Every client's G forward, D step and G step in turn: one client's graphs alive at a time."""
    from p2pgan.model.blocks import ModelSpec

    z_dim = ModelSpec(width=width).z_dim
    ones, zeros = torch.ones(batch, 1, device=device), torch.zeros(batch, 1, device=device)
    for g, d, g_opt, d_opt, data in models:
        idx = torch.randperm(len(data), generator=gen)[:batch].to(device)
        real, labels = data.images[idx], data.labels[idx]
        z = torch.randn(batch, z_dim, generator=gen).to(device)
        fake = g(z, labels)
        d_opt.zero_grad(set_to_none=True)
        d_loss = (F.binary_cross_entropy(d(fake.detach(), labels), zeros)
                  + F.binary_cross_entropy(d(real, labels), ones))
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy(d(fake, labels), ones).backward()
        g_opt.step()


def mono_worker(clients: int, width: float, batch: int, reps: int, warmup: int, device: str = "cpu") -> dict:
    base = peak_rss_mb()
    models = mono_models(clients, width, batch, device)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(warmup + reps):
        start = clocks()
        mono_iteration(models, batch, width, gen, device)
        sync(device)
        times.append(elapsed(start))
    return timed(times[warmup:], base)


def gemm_gflops(n: int, reps: int, device: str = "cpu", use_cpu_clock: bool = False) -> float:
    """Best-of-``reps`` rate of an ``n x n`` fp32 matmul (the machine's practical dense rate;
    on CUDA without TF32, as the engines run)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        start = clocks()
        torch.mm(a, b)
        sync(device)
        wall, cpu = elapsed(start)
        best = min(best, cpu / torch.get_num_threads() if use_cpu_clock else wall)
    return 2 * n**3 / best / 1e9


def run_worker(impl: str, clients: int, width: float, batch: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--sizes", f"{clients}:{width}:{batch}",
           "--reps", str(args.reps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--device", args.device]
    if args.cl_blocks is not None:
        cmd += ["--cl-blocks", *args.cl_blocks]
    if args.default_malloc:
        cmd.append("--default-malloc")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> tuple[int, float, int]:
    clients, width, batch = text.split(":")
    return int(clients), float(width), int(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="CLIENTS:WIDTH:BATCH")
    parser.add_argument("--impls", nargs="+", default=["mono", "nodes", "cohort"], choices=IMPLS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--gemm", type=int, default=4096, help="GEMM size n (n x n fp32)")
    parser.add_argument("--cores", type=int, default=0,
                        help="cores for the nominal peak (0: the torch threads the run uses)")
    parser.add_argument("--flop-per-cycle", type=float, default=32.0,
                        help="fp32 FLOP per cycle per core (32: two 256-bit FMA pipes, e.g. Zen 4)")
    parser.add_argument("--clock-ghz", type=float, default=3.7, help="boost clock for the nominal peak")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which time the rates use: wall, or this process's CPU time per thread (steadier "
                             "on a machine other work shares; exact for --threads 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the peak flags describe a CPU)")
    parser.add_argument("--cl-blocks", nargs="*", default=None, metavar="BLOCK",
                        help="the blocks the cohort runs in channels_last (default: the device's policy)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator settings (the CLI tunes them; see p2pgan.runtime)")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        if not args.default_malloc:
            from p2pgan.runtime import keep_freed_memory

            keep_freed_memory()  # every implementation alike, as the CLI runs them
        clients, width, batch = parse_size(args.sizes[0])
        workers = {"mono": mono_worker, "nodes": nodes_worker, "cohort": cohort_worker,
                   "cohort-contiguous": lambda *a: cohort_worker(*a, channels_last=frozenset())}
        if args.cl_blocks is not None:
            workers["cohort"] = lambda *a: cohort_worker(*a, channels_last=frozenset(args.cl_blocks))
        print(json.dumps(workers[args.worker](clients, width, batch, args.reps, args.warmup, args.device)))
        return
    threads = args.threads or torch.get_num_threads()
    cores = args.cores or threads
    peak = cores * args.flop_per_cycle * args.clock_ghz
    use_cpu = args.clock == "cpu" and args.device == "cpu"
    gemm = gemm_gflops(args.gemm, 5, args.device, use_cpu)
    print(f"torch {torch.__version__}, device {args.device}, {threads} thread(s), median of {args.reps} after {args.warmup} warm-up, "
          f"mixed cuts, {'default' if args.default_malloc else 'tuned'} malloc")
    print(f"rates from {'CPU time per thread' if use_cpu else 'wall time'}; "
          f"GEMM {args.gemm}^2 fp32: {gemm:.1f} GFLOP/s; nominal peak {cores} cores x "
          f"{args.flop_per_cycle:g} FLOP/cycle x {args.clock_ghz:g} GHz = {peak:.0f} GFLOP/s")
    header = (f"{'size':>14} {'impl':>17} {'s/iter':>8} {'cpu s':>7} {'GFLOP/s':>8} {'%GEMM':>6} {'%peak':>6} "
              f"{'MB/client':>9} {'vs nodes':>8}")
    print(header)
    rows = []
    for size in args.sizes:
        clients, width, batch = parse_size(size)
        gflop = iteration_flops(clients, width, batch) / 1e9
        results = {}
        for impl in args.impls:
            results[impl] = run_worker(impl, clients, width, batch, args)
        ok = {impl: res for impl, res in results.items() if "error" not in res}
        for impl, res in results.items():
            if "error" in res:
                rows.append({"size": size, "impl": impl, "error": res["error"]})
                print(f"{size:>14} {impl:>17}  failed: {res['error']}", flush=True)
                continue
            wall, cpu = statistics.median(res["times"]), statistics.median(res["cpu_times"]) / threads
            median = cpu if use_cpu else wall
            rate = gflop / median
            mb = (res["peak_mb"] - res["base_mb"]) / clients
            key = "cpu_times" if use_cpu else "times"
            speedup = (statistics.median(ok["nodes"][key]) / threads / median if use_cpu else
                       statistics.median(ok["nodes"][key]) / median) if "nodes" in ok else float("nan")
            rows.append({"size": size, "clients": clients, "width": width, "batch": batch, "impl": impl,
                         "gflop_per_iter": gflop, "s_per_iter": wall, "cpu_s_per_iter": cpu, "times": res["times"],
                         "cpu_times": res["cpu_times"], "clock": args.clock if use_cpu else "wall", "gflops": rate,
                         "share_gemm": rate / gemm, "share_peak": rate / peak, "mb_per_client": mb,
                         "speedup_vs_nodes": speedup})
            print(f"{size:>14} {impl:>17} {wall:>8.3f} {cpu:>7.3f} {rate:>8.1f} {100 * rate / gemm:>5.0f}% "
                  f"{100 * rate / peak:>5.0f}% {mb:>9.1f} {speedup:>7.2f}x", flush=True)
        print(f"{'':>14} ({gflop:.1f} GFLOP per iteration)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"torch": torch.__version__, "device": args.device, "threads": threads, "gemm_gflops": gemm, "peak_gflops": peak,
                       "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
