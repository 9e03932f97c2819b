"""Time one training iteration: the issue-time main's node engine (the baseline) vs today's node
engine vs the cohort engine vs a monolithic loop, against a large fp32 GEMM measured in the same run.

All do the same math on the same batch sizes: every client runs G forward, D on fake and real, a D
step, a G step. ``baseline`` is the node engine of commit ``BASELINE_COMMIT`` (issue 14's "today's
main"), extracted with ``git archive`` into a temporary folder and run from there with its own API,
set up exactly as that commit's own bench_step set it up (same plans, cuts, data); ``mono`` runs
each client's whole G and D as plain modules in a Python loop; ``nodes`` runs ClientNode/ServerNode
actors over the memory transport, the server's middle blocks batched over clients; ``cohort`` runs
the same program for every client in one engine without a transport (``p2pgan.engine.cohort``) with
the device's default kernel policy (on the CPU every convolution in ``channels_last``, as the
blocks are built and as the node engine runs them; ``--cl-blocks`` chooses other blocks);
``cohort-contiguous`` is the cohort with every block contiguous (what the CPU ran before). Each
(implementation, size) runs in a fresh subprocess so that its peak memory is its own; with
``--interleave`` they are all alive at once and iterate in turn, so the load of a shared machine
falls on all of them alike (their memory adds up meanwhile).

For each it prints seconds per iteration (median of ``--rounds x --reps`` after ``--warmup``), the
achieved GFLOP/s (FLOPs of the iteration as the latency model counts them, from the model's
measured costs), that rate as a share of the GEMM measured in this run and of the nominal fp32
peak (cores x FLOP/cycle x clock, from the flags), the peak memory per client, the speedup against
the baseline (ratio of medians and, interleaved, the median of the per-step ratios) and against
today's node engine, and the machine's load average before and after.

    python tools/bench_step.py                                   # both reference sizes, baseline included
    python tools/bench_step.py --threads 1 --clock cpu --interleave --reps 10   # fair on a busy machine
    python tools/bench_step.py --sizes 12:0.25:32 --impls cohort cohort-contiguous --baseline none
    python tools/bench_step.py --json out.json                   # also write the table as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import torch
from torch.nn import functional as F

IMPLS = ("baseline", "mono", "nodes", "cohort", "cohort-contiguous")
OURS = ("nodes", "cohort", "cohort-contiguous")
"""The implementations ``p2pgan scenario run`` runs (``--as-cli`` sets their threads as it does)."""
BASELINE_COMMIT = "3900328"
"""The issue-time main the targets are stated against (issue 14: >= 2x at 12:0.25:32, >= 1.2x at 16:1:64)."""
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


Step = Callable[[int], object]
"""One iteration of an implementation, given the step number."""


def drive(made: tuple[float, Step], reps: int, warmup: int, device: str, gated: bool) -> dict:
    """Time ``warmup + reps`` iterations of a made implementation. ``gated``: each iteration waits
    for a ``go`` line on stdin and answers ``done`` on stdout, so that a parent can interleave the
    iterations of several implementations, each in its own process (see ``--interleave``)."""
    base_mb, step = made
    if gated:
        print("ready", flush=True)
    times = []
    for i in range(warmup + reps):
        if gated and sys.stdin.readline().strip() != "go":
            raise SystemExit("interleaved worker: the parent went away")
        start = clocks()
        step(i)
        sync(device)
        times.append(elapsed(start))
        if gated:
            print("done", flush=True)
    times = times[warmup:]
    return {"times": [w for w, _ in times], "cpu_times": [c for _, c in times], "peak_mb": peak_rss_mb(),
            "base_mb": base_mb, "threads": torch.get_num_threads()}


def on_loop(make_nodes: Callable[[], Awaitable[list]], iteration: Callable[[list, int], Awaitable]) -> Step:
    """An async implementation as a step: its nodes made and every iteration run on one loop."""
    loop = asyncio.new_event_loop()
    nodes = loop.run_until_complete(make_nodes())
    return lambda i: loop.run_until_complete(iteration(nodes, i))


def make_nodes(clients: int, width: float, batch: int, steps: int, device: str = "cpu") -> tuple[float, Step]:
    from p2pgan.bus import EventBus
    from p2pgan.engine.client import ClientNode
    from p2pgan.engine.execution import exact_cuda
    from p2pgan.engine.server import ServerNode
    from p2pgan.ids import SERVER_ID
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.strategies.fedavg import SplitFedAvg
    from transports.memory import MemoryTransport

    setup, plan, data = split_setup(clients, width, batch, steps)
    if device.startswith("cuda"):
        exact_cuda()
    setup = dataclasses.replace(setup, device=torch.device(device))
    base = peak_rss_mb()

    async def build() -> list:
        transport = MemoryTransport()
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED)
        return [server, *(ClientNode(setup, p, plan.schedule, data[p.client_id], endpoints[p.client_id], bus,
                                     U_SHAPED) for p in plan.clients)]

    async def iteration(nodes: list, i: int) -> None:
        await asyncio.gather(*(n.iteration(1, i) for n in nodes))

    return base, on_loop(build, iteration)


def make_cohort(clients: int, width: float, batch: int, steps: int, device: str = "cpu",
                channels_last: frozenset[str] | None = None, client_threads: int = 0) -> tuple[float, Step]:
    """``channels_last``: the blocks in that format (``None``: the device's default policy);
    ``client_threads``: see :func:`client_threads_for`."""
    from p2pgan.bus import EventBus
    from p2pgan.engine.cohort import CohortEngine
    from p2pgan.engine.execution import KernelPolicy
    from p2pgan.plan.program import U_SHAPED
    from p2pgan.strategies.fedavg import SplitFedAvg

    setup, plan, data = split_setup(clients, width, batch, steps)
    base = peak_rss_mb()
    if device.startswith("cuda"):
        from p2pgan.engine.execution import exact_cuda

        exact_cuda()
    policy = KernelPolicy(torch.device(device), channels_last, client_threads_for(torch.device(device), client_threads))
    engine = CohortEngine(setup, plan, data, SplitFedAvg(), 1, U_SHAPED, EventBus(), policy)
    return base, lambda i: engine.iteration(1, i)


def client_threads_for(device: torch.device, asked: int) -> int:
    """The cohort's client threads: ``asked`` (``--client-threads``), or for 0 the engine's default
    for the torch threads of the moment."""
    from p2pgan.engine.execution import default_client_threads

    return asked or default_client_threads(device)


def cli_threads(width: float, batch: int) -> int:
    """The intra-op threads ``p2pgan scenario run`` gives a run of this model and batch size."""
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.run.threads import kernel_flops
    from p2pgan.runtime import default_threads

    return default_threads(kernel_flops=kernel_flops(ModelSpec(width=width), batch))


def make_baseline(clients: int, width: float, batch: int, steps: int, device: str = "cpu") -> tuple[float, Step]:
    """The node engine of the issue-time main (commit ``BASELINE_COMMIT``), built exactly as that
    commit's own ``tools/bench_step.py`` built it (same plans, cuts, data, memory transport), timed
    with this file's clocks. Runs in a subprocess whose ``PYTHONPATH`` puts that commit's tree
    first, so every import below is that commit's API."""
    from p2pgan.engine.client import ClientNode, LocalData
    from p2pgan.engine.messages import SERVER_ID
    from p2pgan.engine.plan import ClientPlan, RunPlan, Schedule
    from p2pgan.engine.server import ServerNode
    from p2pgan.engine.setup import NodeSetup
    from p2pgan.events import EventBus
    from p2pgan.federation.fedavg import SizeWeightedFedAvg
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.model.costs import profile_model
    from p2pgan.model.segments import all_cut_options
    from transports.memory import MemoryTransport

    if device != "cpu":
        raise SystemExit("the baseline runs on the CPU only")
    spec = ModelSpec(width=width)
    setup = NodeSetup(spec, profile_model(spec), 0, 2e-4, (0.5, 0.999))
    options = all_cut_options()
    plans = tuple(ClientPlan(f"c{i:03d}", options[(5 * i) % 16], 4 * batch) for i in range(clients))
    schedule = Schedule(1, 1, steps, batch)
    plan = RunPlan(plans, schedule)
    base = peak_rss_mb()

    def data(n: int, seed: int) -> LocalData:
        gen = torch.Generator().manual_seed(seed)
        return LocalData(torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1, torch.randint(0, 10, (n,), generator=gen))

    async def build() -> list:
        transport = MemoryTransport()
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        server = ServerNode(setup, plan, SizeWeightedFedAvg(), 1, endpoints[SERVER_ID], bus)
        return [server, *(ClientNode(setup, p, schedule, data(p.num_examples, i), endpoints[p.client_id], bus)
                          for i, p in enumerate(plans))]

    async def iteration(nodes: list, i: int) -> None:
        await asyncio.gather(*(n.iteration(1, i) for n in nodes))

    return base, on_loop(build, iteration)


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


def make_mono(clients: int, width: float, batch: int, steps: int, device: str = "cpu") -> tuple[float, Step]:
    base = peak_rss_mb()
    models = mono_models(clients, width, batch, device)
    gen = torch.Generator().manual_seed(0)
    return base, lambda i: mono_iteration(models, batch, width, gen, device)


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


def worker_command(impl: str, clients: int, width: float, batch: int, args: argparse.Namespace,
                   baseline: str | None, gated: bool) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, __file__, "--worker", impl, "--sizes", f"{clients}:{width}:{batch}",
           "--reps", str(args.reps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--device", args.device, "--client-threads", str(args.client_threads)]
    if args.as_cli:
        cmd.append("--as-cli")
    if args.cl_blocks is not None:
        cmd += ["--cl-blocks", *args.cl_blocks]
    if args.default_malloc:
        cmd.append("--default-malloc")
    if gated:
        cmd.append("--gated")
    env = dict(os.environ)
    if args.as_cli and impl in OURS:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as p2pgan.runtime.passive_thread_waits sets it
    if impl == "baseline":
        # That commit's tree first on the path: its p2pgan and transports shadow the installed ones.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
    return cmd, env


def run_worker(impl: str, clients: int, width: float, batch: int, args: argparse.Namespace,
               baseline: str | None) -> dict:
    cmd, env = worker_command(impl, clients, width, batch, args, baseline, gated=False)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_interleaved(impls: list[str], clients: int, width: float, batch: int, args: argparse.Namespace,
                    baseline: str | None) -> dict[str, dict]:
    """Every implementation in its own process (its peak memory its own), all alive at once,
    iterating in turn: one iteration of each, the order rotating by one every step, while the
    others wait. Whatever load the machine carries meanwhile falls on all of them alike."""
    procs: dict[str, subprocess.Popen] = {}
    errors: dict[str, dict] = {}
    with tempfile.TemporaryFile("w+") as stderr:
        for impl in impls:
            cmd, env = worker_command(impl, clients, width, batch, args, baseline, gated=True)
            procs[impl] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                           text=True, env=env)

        def expect(impl: str, word: str) -> bool:
            line = procs[impl].stdout.readline().strip()
            if line != word:
                errors[impl] = {"error": f"worker said {line!r} instead of {word!r} (exit {procs[impl].poll()})"}
                return False
            return True

        live = [impl for impl in impls if expect(impl, "ready")]
        for step in range(args.warmup + args.reps):
            turn = live[step % len(live):] + live[:step % len(live)] if live else []
            for impl in turn:
                procs[impl].stdin.write("go\n")
                procs[impl].stdin.flush()
                if not expect(impl, "done"):
                    live.remove(impl)
        results = {}
        for impl in impls:
            proc = procs[impl]
            # Not communicate(): it reads the pipe's descriptor and would miss what readline()
            # already buffered (the last "done" and the result often arrive together).
            proc.stdin.close()
            out = proc.stdout.read()
            proc.wait()
            if impl in errors:
                results[impl] = errors[impl]
            elif proc.returncode != 0 or not out.strip():
                results[impl] = {"error": f"worker exited {proc.returncode}"}
            else:
                results[impl] = json.loads(out.strip().splitlines()[-1])
        if errors:
            stderr.seek(0)
            tail = stderr.read().strip().splitlines()
            for res in results.values():
                if "error" in res and tail:
                    res["error"] += f"; stderr: {tail[-1]}"
    return results


def baseline_tree(spec: str, scratch: str) -> str | None:
    """The baseline's source tree: ``none``, a folder, or a commit of this repository extracted
    with ``git archive`` into ``scratch`` (the work tree and the index are not touched)."""
    if spec == "none":
        return None
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", repo, "archive", spec], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline: {spec!r} is neither a folder nor a commit of {repo}")
    subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
    return scratch


def parse_size(text: str) -> tuple[int, float, int]:
    clients, width, batch = text.split(":")
    return int(clients), float(width), int(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="CLIENTS:WIDTH:BATCH")
    parser.add_argument("--impls", nargs="+", default=["baseline", "mono", "nodes", "cohort"], choices=IMPLS)
    parser.add_argument("--baseline", default=BASELINE_COMMIT, metavar="COMMIT|DIR|none",
                        help="the tree the 'baseline' implementation runs from: a commit of this repository "
                             f"(extracted with git archive into a temporary folder), a folder, or none "
                             f"(default: {BASELINE_COMMIT}, the issue-time main)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every implementation this many times in turn, pooling their reps (drift on a "
                             "shared machine then favours none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--as-cli", action="store_true",
                        help="each implementation with the threads its own CLI gives it, not --threads: ours "
                             "p2pgan.runtime's default (by model size) with passive OpenMP waits, the cohort's "
                             "client threads by that count; the baseline and mono torch's default, active waits")
    parser.add_argument("--client-threads", type=int, default=0,
                        help="the cohort's client threads (0: its default, a thread per core when torch runs "
                             "one intra-op thread)")
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
    parser.add_argument("--interleave", action="store_true",
                        help="all implementations of a size alive at once, one iteration each in turn (the fair "
                             "comparison on a machine other work shares; their memory adds up meanwhile)")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--gated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        clients, width, batch = parse_size(args.sizes[0])
        if args.as_cli and args.worker in OURS:
            torch.set_num_threads(cli_threads(width, batch))
        if not args.default_malloc:
            from p2pgan.runtime import keep_freed_memory

            keep_freed_memory()  # every implementation alike, as the CLI runs them
        cl_blocks = frozenset(args.cl_blocks) if args.cl_blocks is not None else None
        makers = {"baseline": make_baseline, "mono": make_mono, "nodes": make_nodes,
                  "cohort": lambda *a: make_cohort(*a, channels_last=cl_blocks, client_threads=args.client_threads),
                  "cohort-contiguous": lambda *a: make_cohort(*a, channels_last=frozenset(),
                                                             client_threads=args.client_threads)}
        made = makers[args.worker](clients, width, batch, args.warmup + args.reps, args.device)
        result = drive(made, args.reps, args.warmup, args.device, args.gated)
        if args.worker.startswith("cohort"):
            result["client_threads"] = client_threads_for(torch.device(args.device), args.client_threads)
        print(json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bench-step-baseline-") as scratch:
        baseline = baseline_tree(args.baseline, scratch) if "baseline" in args.impls else None
        impls = [impl for impl in args.impls if impl != "baseline" or baseline is not None]
        report(args, impls, baseline)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def report(args: argparse.Namespace, impls: list[str], baseline: str | None) -> None:
    threads = args.threads or torch.get_num_threads()
    cores = args.cores or threads
    peak = cores * args.flop_per_cycle * args.clock_ghz
    use_cpu = args.clock == "cpu" and args.device == "cpu"
    gemm = gemm_gflops(args.gemm, 5, args.device, use_cpu)
    setup = ("threads as each one's CLI sets them (--as-cli)" if args.as_cli else f"{threads} thread(s)")
    print(f"torch {torch.__version__}, device {args.device}, {setup}, median of {args.reps * args.rounds} "
          f"({args.rounds} x {args.reps} after {args.warmup} warm-up{', interleaved' if args.interleave else ''}), "
          "mixed cuts, "
          f"{'default' if args.default_malloc else 'tuned'} malloc")
    print(f"rates from {'CPU time per thread' if use_cpu else 'wall time'}; "
          f"GEMM {args.gemm}^2 fp32: {gemm:.1f} GFLOP/s; nominal peak {cores} cores x "
          f"{args.flop_per_cycle:g} FLOP/cycle x {args.clock_ghz:g} GHz = {peak:.0f} GFLOP/s")
    if baseline is not None:
        print(f"baseline: the node engine of {args.baseline} (its own bench_step setup), from {baseline}")
    print(f"load average at start: {load_average()}")
    header = (f"{'size':>14} {'impl':>17} {'threads':>7} {'s/iter':>8} {'cpu s':>7} {'GFLOP/s':>8} {'%GEMM':>6} {'%peak':>6} "
              f"{'MB/client':>9} {'vs base':>8} {'paired':>8} {'vs nodes':>8}")
    print(header)
    rows = []
    key = "cpu_times" if use_cpu else "times"
    for size in args.sizes:
        clients, width, batch = parse_size(size)
        gflop = iteration_flops(clients, width, batch) / 1e9
        results: dict[str, dict] = {}
        for _ in range(args.rounds):
            done = (run_interleaved(impls, clients, width, batch, args, baseline) if args.interleave else
                    {impl: run_worker(impl, clients, width, batch, args, baseline) for impl in impls})
            for impl, res in done.items():
                if "error" in res or "error" in results.get(impl, {}):
                    results[impl] = res if "error" in res else results[impl]
                    continue
                pooled = results.setdefault(impl, {"times": [], "cpu_times": [], "peak_mb": 0.0, "base_mb": 0.0,
                                                   "threads": res["threads"],
                                                   "client_threads": res.get("client_threads", 1)})
                pooled["times"] += res["times"]
                pooled["cpu_times"] += res["cpu_times"]
                # Peak memory: the largest over the rounds (each is its own fresh process).
                if res["peak_mb"] - res["base_mb"] > pooled["peak_mb"] - pooled["base_mb"]:
                    pooled["peak_mb"], pooled["base_mb"] = res["peak_mb"], res["base_mb"]
        ok = {impl: res for impl, res in results.items() if "error" not in res}

        def seconds(impl: str) -> float:
            median = statistics.median(ok[impl][key])
            return median / ok[impl]["threads"] if use_cpu else median

        def threads_of(impl: str) -> str:  # intra-op threads, x the cohort's client threads
            clients_on = results[impl].get("client_threads", 1)
            return f"{results[impl]['threads']}" + (f"x{clients_on}" if clients_on > 1 else "")

        for impl in impls:
            res = results[impl]
            if "error" in res:
                rows.append({"size": size, "impl": impl, "error": res["error"]})
                print(f"{size:>14} {impl:>17}  failed: {res['error']}", flush=True)
                continue
            wall, cpu = statistics.median(res["times"]), statistics.median(res["cpu_times"]) / res["threads"]
            median = seconds(impl)
            rate = gflop / median
            mb = (res["peak_mb"] - res["base_mb"]) / clients
            vs_base = seconds("baseline") / median if "baseline" in ok else float("nan")
            # Interleaved, the i-th iterations of all implementations ran back to back: the median of
            # their ratios cancels the load that drifts between steps.
            paired = (statistics.median(b / t for b, t in zip(ok["baseline"][key], res[key]))
                      if args.interleave and "baseline" in ok else float("nan"))
            vs_nodes = seconds("nodes") / median if "nodes" in ok else float("nan")
            rows.append({"size": size, "clients": clients, "width": width, "batch": batch, "impl": impl,
                         "threads": res["threads"], "client_threads": res.get("client_threads", 1),
                         "gflop_per_iter": gflop, "s_per_iter": wall, "cpu_s_per_iter": cpu, "times": res["times"],
                         "cpu_times": res["cpu_times"], "clock": args.clock if use_cpu else "wall", "gflops": rate,
                         "share_gemm": rate / gemm, "share_peak": rate / peak, "mb_per_client": mb,
                         "speedup_vs_baseline": vs_base, "paired_speedup_vs_baseline": paired,
                         "speedup_vs_nodes": vs_nodes})
            print(f"{size:>14} {impl:>17} {threads_of(impl):>7} {wall:>8.3f} {cpu:>7.3f} {rate:>8.1f} {100 * rate / gemm:>5.0f}% "
                  f"{100 * rate / peak:>5.0f}% {mb:>9.1f} {vs_base:>7.2f}x {paired:>7.2f}x {vs_nodes:>7.2f}x", flush=True)
        print(f"{'':>14} ({gflop:.1f} GFLOP per iteration)")
    print(f"load average at end: {load_average()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"torch": torch.__version__, "device": args.device, "threads": threads, "gemm_gflops": gemm,
                       "peak_gflops": peak, "baseline": args.baseline if baseline else None,
                       "load_average": load_average(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
