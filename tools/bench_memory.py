"""Where a training iteration's memory goes: the monolithic loop vs the node engine vs the cohort.

For each implementation (a fresh subprocess each, so its peak is its own) it builds the run,
runs ``--iterations`` iterations (the first allocates Adam's state) and reports:

* peak RSS (the kernel's high-water mark, ``VmHWM``) and the RSS once the data is in memory
  (``base``), so ``(peak - base) / clients`` is the per-client cost (as ``tools/bench_step.py``);
* the bytes held at the end of an iteration, counted from the objects: parameters (and
  buffers), gradients, Adam's state, the clients' datasets;
* malloc's own account at the end (``mallinfo2``: bytes in use and bytes taken from the OS),
  whose difference is the allocator's slack (freed memory kept for reuse, fragmentation);
* with ``--malloc exact``: every block above 64 KiB mapped on its own and unmapped when freed,
  so the peak RSS is the peak of what is really held (slow: every allocation page-faults);
  ``tuned`` (the default) is the CLI's setting, ``default`` glibc's own;
* with ``--profile``: torch's memory profiler over the last iteration, its peak of live tensor
  bytes split into its categories (activations kept for backward, temporaries, gradients, ...).
  The profiler costs time and memory of its own, so the peak RSS of a profiled run is not the
  figure to quote; run without ``--profile`` for that.

Sizes are synthetic (``CLIENTS:WIDTH:BATCH``, mixed cuts, as ``tools/bench_step.py``) or a
scenario's own run (``--scenario``: its data, partitions and searched cuts, as
``tools/bench_scale.py``; ``--clients`` scales its domains).

    python tools/bench_memory.py --sizes 16:1:64
    python tools/bench_memory.py --scenario scenarios/paper/s6.yaml --impls nodes cohort --iterations 1
    python tools/bench_memory.py --sizes 16:1:64 --impls cohort --profile
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parent
IMPLS = ("mono", "nodes", "cohort")
MB = 2**20


def proc_status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` from /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_mb() -> dict[str, float] | None:
    """glibc's malloc account: bytes handed out and bytes taken from the OS (None off glibc)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is None:
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": (info.uordblks + info.hblkhd) / MB, "from_os": (info.arena + info.hblkhd) / MB}


_MALLOPT = {"trim": -1, "top_pad": -2, "mmap": -3, "mmap_max": -4}
"""mallopt parameters a policy spec may set (values in MiB, ``mmap_max`` a count)."""


def set_malloc(mode: str) -> bool:
    """Apply ``--malloc``; returns whether to release freed memory after every iteration (``trim_each``).

    ``tuned``: the CLI's policy (p2pgan.runtime); ``default``: glibc's; ``exact``: every block above
    64 KiB mapped on its own; otherwise a spec to compare policies by, ``key=value`` pairs joined
    by commas: ``mmap=MiB`` (a fixed mmap threshold), ``trim=MiB``, ``top_pad=MiB``,
    ``mmap_max=N``, ``thp`` (torch's transparent huge pages for blocks of 2 MiB and more, as the
    CLI sets them), ``trim_each`` (``malloc_trim(0)`` after each iteration)."""
    if mode == "tuned":
        from p2pgan.runtime import keep_freed_memory

        keep_freed_memory()
        return False
    if mode == "default":
        return False
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if mode == "exact":
        if libc is not None:
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic raise)
        return False
    if mode.startswith("mmap:"):  # the earlier spelling: blocks of N MiB and more mmap'd, 1 GiB trim
        mode = f"mmap={mode[5:]},trim=1024"
    trim_each = False
    for item in mode.split(","):
        key, _, value = item.partition("=")
        if key == "thp":
            os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read at torch's first CPU allocation
        elif key == "trim_each":
            trim_each = True
        elif key in _MALLOPT and libc is not None:
            amount = int(value) if key == "mmap_max" else int(float(value) * MB)
            if not libc.mallopt(_MALLOPT[key], amount):
                raise SystemExit(f"bench_memory: mallopt {key}={value} refused")
        elif key not in _MALLOPT:
            raise SystemExit(f"bench_memory: unknown --malloc item {item!r}")
    return trim_each


def release_freed() -> None:
    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).malloc_trim(0)


def unique_bytes(tensors: Iterable[torch.Tensor]) -> float:
    """Bytes of the distinct storages behind ``tensors``, in MiB."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / MB


@dataclass
class Held:
    """What an implementation holds, by kind: modules, optimizers, client datasets."""

    modules: list[torch.nn.Module] = field(default_factory=list)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    data: list[torch.Tensor] = field(default_factory=list)

    def breakdown(self) -> dict[str, float]:
        params = [t for m in self.modules for t in (*m.parameters(), *m.buffers())]
        grads = [p.grad for m in self.modules for p in m.parameters() if p.grad is not None]
        adam = [v for o in self.optimizers for s in o.state.values() for v in s.values()
                if isinstance(v, torch.Tensor)]
        return {"params_mb": unique_bytes(params), "grads_mb": unique_bytes(grads), "adam_mb": unique_bytes(adam),
                "data_mb": unique_bytes(self.data)}


@dataclass
class Built:
    clients: int
    iterate: Callable[[int], None]
    held: Held


# -- the implementations ------------------------------------------------------------------------


def build_mono(clients: int, width: float, batch: int) -> Built:
    sys.path.insert(0, str(TOOLS))
    from bench_step import mono_models, mono_iteration

    models = mono_models(clients, width, batch, "cpu")
    gen = torch.Generator().manual_seed(0)
    held = Held([m for entry in models for m in entry[:2]], [o for entry in models for o in entry[2:4]],
                [t for entry in models for t in (entry[4].images, entry[4].labels)])
    return Built(clients, lambda step: mono_iteration(models, batch, width, gen, "cpu"), held)


def synthetic(clients: int, width: float, batch: int, steps: int):
    sys.path.insert(0, str(TOOLS))
    from bench_step import split_setup

    return split_setup(clients, width, batch, steps)


def build_nodes(setup, plan, data, create_nodes: Callable[[dict], list]) -> Built:
    from p2pgan.ids import SERVER_ID
    from transports.memory import MemoryTransport

    loop = asyncio.new_event_loop()

    async def start() -> list:
        transport = MemoryTransport(receive_timeout_s=3600)
        return create_nodes(await transport.open([SERVER_ID, *plan.client_ids]))

    nodes = loop.run_until_complete(start())

    async def one(step: int) -> None:
        await asyncio.gather(*(node.iteration(1, step) for node in nodes))

    def iterate(step: int) -> None:
        loop.run_until_complete(one(step))

    held = Held([b for node in nodes for b in node.blocks.values()],
                [o for node in nodes for o in node._optimizers.values() if o is not None],
                [t for d in data.values() for t in (d.images, d.labels)])
    return Built(len(plan.clients), iterate, held)


def build_cohort(engine, data) -> Built:
    held = Held([*(b for c in engine.clients for b in c.blocks.values()), *engine.server_blocks.values()],
                engine.optimizers(), [t for c in engine.clients for t in (c.data.images, c.data.labels)])
    return Built(len(engine.clients), lambda step: engine.iteration(1, step), held)


def build(impl: str, args: argparse.Namespace) -> tuple[Built, float]:
    """The implementation, and the RSS once its data is in memory (before any model is built)."""
    from p2pgan.bus import EventBus
    from p2pgan.ids import SERVER_ID

    if args.scenario is None:
        clients, width, batch = parse_size(args.size)
        if impl == "mono":
            base = proc_status_mb("VmRSS")
            return build_mono(clients, width, batch), base
        setup, plan, data = synthetic(clients, width, batch, args.iterations)
        base = proc_status_mb("VmRSS")
        if impl == "cohort":
            from p2pgan.engine.cohort import CohortEngine
            from p2pgan.plan.program import U_SHAPED
            from p2pgan.strategies.fedavg import SplitFedAvg

            return build_cohort(CohortEngine(setup, plan, data, SplitFedAvg(), 1, U_SHAPED, EventBus()), data), base
        from p2pgan.engine.client import ClientNode
        from p2pgan.engine.server import ServerNode
        from p2pgan.plan.program import U_SHAPED
        from p2pgan.strategies.fedavg import SplitFedAvg

        def create(endpoints):
            bus = EventBus()
            return [ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED),
                    *(ClientNode(setup, p, plan.schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED)
                      for p in plan.clients)]

        return build_nodes(setup, plan, data, create), base
    sys.path.insert(0, str(TOOLS))
    from bench_scale import scenario_for
    from p2pgan.run.prepare import prepare_run
    from p2pgan.strategies.catalogue import strategy_for

    scenario = scenario_for(args.scenario, args.clients, "cpu", "cohort" if impl == "cohort" else "nodes")
    strategy = strategy_for(scenario)
    prepared = prepare_run(scenario)
    base = proc_status_mb("VmRSS")
    bus = EventBus()
    if impl == "cohort":
        from p2pgan.run.cohort import build_cohort as build_engine

        return build_cohort(build_engine(prepared, bus, strategy), prepared.client_data), base
    if impl == "mono":
        raise SystemExit("bench_memory: mono runs synthetic sizes only (--sizes)")

    def create(endpoints):
        return [strategy.create_node(prepared, nid, endpoints[nid], bus)
                for nid in (SERVER_ID, *prepared.plan.client_ids)]

    return build_nodes(prepared.setup, prepared.plan, prepared.client_data, create), base


def profiled_peak(iterate: Callable[[], None]) -> dict[str, float]:
    """Torch's memory profiler over one call: the peak of live tensor bytes and its categories."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        iterate()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    out = {"live_peak_mb": totals[at] / MB}
    for category, index in _CATEGORY_TO_INDEX.items():
        out[(category.name.lower() if category is not None else "unknown") + "_mb"] = sizes[at][index + 1] / MB
    return out


def worker(impl: str, args: argparse.Namespace, trim_each: bool = False) -> dict:
    built, base = build(impl, args)
    built_mb = proc_status_mb("VmRSS")
    times, cpu = [], []
    for step in range(args.iterations):
        started, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if args.profile and step == args.iterations - 1:
            profile = profiled_peak(lambda: built.iterate(step))
        else:
            built.iterate(step)
        if trim_each:
            release_freed()
        times.append(time.perf_counter() - started)
        done = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append({"user_s": done.ru_utime - usage.ru_utime, "sys_s": done.ru_stime - usage.ru_stime,
                    "minor_faults": done.ru_minflt - usage.ru_minflt})
    peak = proc_status_mb("VmHWM")
    result = {"impl": impl, "clients": built.clients, "base_mb": base, "built_mb": built_mb, "peak_mb": peak,
              "per_client_mb": (peak - base) / built.clients, "times": times, "cpu": cpu, "rss_end_mb": proc_status_mb("VmRSS"),
              **built.held.breakdown()}
    malloc = malloc_mb()
    if malloc is not None:
        result.update({f"malloc_{k}_mb": v for k, v in malloc.items()})
    if args.profile:
        result["profile"] = profile
    return result


# -- the driver ---------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, float, int]:
    clients, width, batch = text.split(":")
    return int(clients), float(width), int(batch)


def run_worker(impl: str, size: str | None, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--iterations", str(args.iterations), "--threads",
           str(args.threads)]
    cmd += ["--size", size] if size else ["--scenario", str(args.scenario), "--clients", str(args.clients)]
    cmd += ["--profile"] if args.profile else []
    cmd += ["--malloc", args.malloc]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"impl": impl, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["16:1:64"], metavar="CLIENTS:WIDTH:BATCH")
    parser.add_argument("--scenario", type=Path, help="measure this scenario's own run instead of --sizes")
    parser.add_argument("--clients", type=int, default=0, help="with --scenario: clients (0: the scenario's)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="torch's memory profiler over the last iteration")
    parser.add_argument("--malloc", default="tuned",
                        help="tuned: the CLI's allocator setting (p2pgan.runtime); default: glibc's; exact: no reuse "
                             "of freed blocks, so the peak RSS is what is held (see above); or a policy to compare, "
                             "e.g. mmap=32,trim=256,thp,trim_each (see set_malloc)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        trim_each = set_malloc(args.malloc)
        print(json.dumps(worker(args.worker, args, trim_each)))
        return
    sizes = [None] if args.scenario else args.sizes
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.iterations} iteration(s), "
          f"{args.malloc} malloc; MB = MiB; held = at the end of the last iteration")
    print(f"{'size':>14} {'impl':>7} {'clients':>7} {'s/iter':>7} {'user s':>6} {'sys s':>5} {'base':>6} {'peak':>7} {'MB/client':>9} "
          f"{'params':>7} {'grads':>6} {'adam':>6} {'data':>6} {'malloc in use':>13} {'from OS':>8}")
    rows = []
    for size in sizes:
        label = size or args.scenario.stem
        for impl in args.impls:
            res = run_worker(impl, size, args)
            res["size"] = label
            rows.append(res)
            if "error" in res:
                print(f"{label:>14} {impl:>7}  failed: {res['error']}", flush=True)
                continue
            last = res["cpu"][-1]
            print(f"{label:>14} {impl:>7} {res['clients']:>7} {res['times'][-1]:>7.2f} {last['user_s']:>6.2f} "
                  f"{last['sys_s']:>5.2f} {res['base_mb']:>6.0f} "
                  f"{res['peak_mb']:>7.0f} {res['per_client_mb']:>9.1f} {res['params_mb']:>7.0f} {res['grads_mb']:>6.0f} "
                  f"{res['adam_mb']:>6.0f} {res['data_mb']:>6.0f} {res.get('malloc_in_use_mb', float('nan')):>13.0f} "
                  f"{res.get('malloc_from_os_mb', float('nan')):>8.0f}", flush=True)
            if "profile" in res:
                prof = res["profile"]
                parts = ", ".join(f"{k[:-3]} {v:.0f}" for k, v in prof.items() if k != "live_peak_mb" and v >= 0.5)
                print(f"{'':>14} {'':>7} profiler: live tensors peak {prof['live_peak_mb']:.0f} MB "
                      f"({prof['live_peak_mb'] / res['clients']:.1f}/client): {parts}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
