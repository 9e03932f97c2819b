"""The default thread policy against every fixed ``--threads`` choice, on an idle and a busy machine.

Each configuration runs ``p2pgan scenario run`` as its own process (so each one pays for its own
start-up and picks its own default, the way a user's run does). The trials are interleaved: one
of each choice per repeat, so slow minutes of a shared machine fall on every choice alike.

"busy" starts one CPU-bound burner process per core for the whole condition, which is what a
laptop running a build or a second simulation looks like to the scheduler. The default depends on
the cores and the scenario's model only (p2pgan/runtime.py: default_threads), so it is the same
count in both conditions; the question is how far that fixed choice is from the best one.

    python tools/bench_threads.py                      # quick.yaml, idle and busy, 3 repeats
    python tools/bench_threads.py --scenario scenarios/multidomain.yaml --set training.rounds=1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from p2pgan.config import load_scenario  # noqa: E402  (the tool runs from a checkout)
from p2pgan.run.threads import threads_for  # noqa: E402
from p2pgan.runtime import available_cores  # noqa: E402


def _burn(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        for _ in range(200_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def one_trial(scenario: str, overrides: list[str], threads: int | None) -> tuple[float, int]:
    """Wall seconds of one run, and the thread count it ran with."""
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        cmd = [sys.executable, "-m", "p2pgan", "scenario", "run", scenario, "--no-live", "--out", tmp,
               "--force"]
        for item in overrides:
            cmd += ["--set", item]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k not in ("P2PGAN_THREADS", "OMP_WAIT_POLICY",
                                                                 "OMP_NUM_THREADS", "GOMP_SPINCOUNT",
                                                                 "KMP_BLOCKTIME")}
        chosen = threads if threads is not None else _default_for(scenario, tuple(overrides))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench_threads: run failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        return wall, chosen


def _default_for(scenario: str, overrides: tuple[str, ...]) -> int:
    """What the child's default picks: the same function on the same scenario."""
    env_pin = os.environ.pop("P2PGAN_THREADS", None)
    try:
        return threads_for(load_scenario(REPO / scenario, list(overrides)))
    finally:
        if env_pin is not None:
            os.environ["P2PGAN_THREADS"] = env_pin


def measure(condition: str, scenario: str, overrides: list[str], repeats: int, choices: list[int | None]) -> dict:
    stop = multiprocessing.Event()
    burners = []
    if condition == "busy":
        burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(available_cores())]
        for proc in burners:
            proc.start()
        time.sleep(20)  # let the 1-minute load average see them, as it would on a machine busy for a while
    walls: dict[str, list[float]] = {_label(c): [] for c in choices}
    chosen: list[int] = []
    try:
        for _ in range(repeats):
            for choice in choices:
                wall, used = one_trial(scenario, overrides, choice)
                walls[_label(choice)].append(wall)
                if choice is None:
                    chosen.append(used)
                print(f"  {condition:5s} {_label(choice):8s} {wall:7.2f} s  (threads {used}, "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        stop.set()
        for proc in burners:
            proc.join(timeout=5)
    medians = {label: statistics.median(values) for label, values in walls.items()}
    fixed = {label: value for label, value in medians.items() if label != "default"}
    best_label = min(fixed, key=fixed.get)
    return {"condition": condition, "median_s": medians, "samples_s": walls, "default_threads": chosen,
            "best_fixed": best_label, "default_over_best": medians["default"] / fixed[best_label]}


def _label(choice: int | None) -> str:
    return "default" if choice is None else f"{choice}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="scenarios/quick.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conditions", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    choices: list[int | None] = [None] + list(range(1, available_cores() + 1))
    print(f"bench_threads: {args.scenario} {' '.join(args.overrides)}, {available_cores()} cores, "
          f"{args.repeats} repeats, load at start {os.getloadavg()[0]:.2f}", flush=True)
    results = [measure(c, args.scenario, args.overrides, args.repeats, choices) for c in args.conditions]
    print()
    print(f"{'condition':10s}" + "".join(f"{_label(c):>10s}" for c in choices) + "   default/best  default chose")
    for row in results:
        cells = "".join(f"{row['median_s'][_label(c)]:10.2f}" for c in choices)
        print(f"{row['condition']:10s}{cells}   {row['default_over_best']:8.2f}x     {row['default_threads']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
