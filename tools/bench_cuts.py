"""Exact cut search vs the reference GA on the paper's 80-client plan: wall time and latency found.

    .venv/bin/python tools/bench_cuts.py                       # reference GA: 1000 x 1000
    .venv/bin/python tools/bench_cuts.py --generations 100     # quicker
    .venv/bin/python tools/bench_cuts.py --encoding client     # GA with genes per client

Both methods minimise the same analytic seconds per iteration; the SimPy price of each plan is
printed beside it. Ratios are GA / exact (latency >= 1 means the GA's plan is no better).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from p2pgan.model.blocks import ModelSpec
    from p2pgan.model.costs import profile_model
    from p2pgan.sim.pricing import client_ids_for, cuts_to_splits, price_plan
    from p2pgan.sim.search import GAParams, run_search
    from p2pgan.topology.profiles import load_topology

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=80)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--topology", type=Path, default=ROOT / "topologies" / "paper-edge.yaml")
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--population", type=int, default=1000)
    parser.add_argument("--encoding", choices=("profile", "client"), default="profile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    costs = profile_model(ModelSpec(width=args.width))
    topology = load_topology(args.topology)
    ids = client_ids_for(args.clients)
    assignment = topology.assign_profiles(ids)
    print(f"{args.clients} clients on {topology.name}, batch {args.batch}; "
          f"GA: population {args.population}, {args.generations} generations, encoding {args.encoding}")

    exact = run_search("exact", ids, costs, args.batch, topology, assignment, args.seed)
    started = time.perf_counter()
    last_report = [started]

    def progress(generation: int, best: float) -> None:
        now = time.perf_counter()
        if now - last_report[0] > 10:
            print(f"  GA generation {generation}: best {best:.6f} s", flush=True)
            last_report[0] = now

    ga = run_search("ga", ids, costs, args.batch, topology, assignment, args.seed,
                    GAParams(population=args.population, generations=args.generations, encoding=args.encoding),
                    progress)

    sim = {}
    for result in (exact, ga):
        sim[result.method] = price_plan(result.method, cuts_to_splits(result.cuts), costs, args.batch, topology,
                                        assignment, aggregation=False).simulated_s

    print()
    print(f"{'':28}{'exact':>14}{'ga':>14}{'ga / exact':>14}")
    print(f"{'wall time (s)':28}{exact.wall_s:>14.3f}{ga.wall_s:>14.3f}{ga.wall_s / exact.wall_s:>14.1f}")
    print(f"{'latency, analytic (s/iter)':28}{exact.seconds:>14.6f}{ga.seconds:>14.6f}{ga.seconds / exact.seconds:>14.6f}")
    print(f"{'latency, SimPy (s/iter)':28}{sim['exact']:>14.6f}{sim['ga']:>14.6f}{sim['ga'] / sim['exact']:>14.6f}")
    print(f"{'plans priced':28}{exact.evaluations:>14d}{ga.evaluations:>14d}{ga.evaluations / exact.evaluations:>14.1f}")
    reached = ga.generation_reached
    print(f"GA per-generation wall: {ga.wall_s / max(args.generations, 1) * 1e3:.2f} ms; "
          f"GA's final best first reached at generation {reached}; "
          f"GA {'reached' if ga.seconds <= exact.seconds * (1 + 1e-12) else 'did not reach'} the exact optimum")
    print("plan per profile (g_head,g_tail,d_head,d_tail):")
    for profile in exact.per_profile:
        print(f"  {profile:12} exact {exact.per_profile[profile]}   ga {ga.per_profile.get(profile)}")
    return 0 if exact.seconds <= ga.seconds * (1 + 1e-12) else 1


if __name__ == "__main__":
    raise SystemExit(main())
