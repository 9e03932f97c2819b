"""Wall-time overhead of the live dashboard: the same scenario with LiveView vs --no-live.

    .venv/bin/python tools/bench_live.py [scenarios/quick.yaml] [--repeats 5] [--threads 1] [--set KEY=VALUE ...]

Each repeat trains the scenario twice in this process, once with ``PlainProgress`` (what
``--no-live`` uses) and once with ``LiveView`` drawing at its normal refresh rate into a null
terminal (``force_terminal``: every frame is fully laid out and written, as on a real tty); the
order alternates between repeats. Reported: training wall time per run side by side, the live/plain
ratio per repeat and the median ratio, plus the two costs the live view adds, measured directly:
the observer's work per event (replaying the run's recorded events into ``DashboardState``) and
the time to draw one frame.

Torch runs single-threaded by default (``--threads 1``): on a small machine shared with other
jobs, two intra-op threads make run times swing by 20-50x (OpenMP threads spinning against other
processes), which drowns any observer's cost; ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from p2pgan.config import load_scenario  # noqa: E402
from p2pgan.ui.live import DashboardState, LiveView, render  # noqa: E402
from p2pgan.ui.progress import PlainProgress  # noqa: E402
from p2pgan.run.session import run_scenario  # noqa: E402


def null_terminal(width: int, height: int) -> Console:
    return Console(file=open(os.devnull, "w"), force_terminal=True, width=width, height=height,
                   color_system="truecolor")


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)


def run_once(scenario_path: Path, overrides: list[str], folder: Path, live: bool, refresh: float,
             width: int, height: int, recorder: Recorder | None = None):
    scenario = load_scenario(scenario_path, [*overrides, f"output.dir={folder}"])
    observer = (LiveView(scenario, console=null_terminal(width, height), refresh_per_second=refresh) if live
                else PlainProgress(io.StringIO()))
    observers = [observer] + ([recorder] if recorder is not None else [])
    cpu = time.process_time()
    outcome = run_scenario(scenario, observers)
    cpu = time.process_time() - cpu
    assert outcome.status == "completed", outcome.summary
    return outcome.summary["wall_s"], cpu, observer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=ROOT / "scenarios" / "quick.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--refresh", type=float, default=4.0, help="live refreshes per second")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=50)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    rows = []
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        # Warm-up (imports, allocator, first-touch of the data), not counted.
        run_once(args.scenario, args.overrides + ["training.rounds=1", "training.max_batches_per_epoch=1"],
                 Path(tmp) / "warmup", False, args.refresh, args.width, args.height)
        for rep in range(args.repeats):
            order = (False, True) if rep % 2 == 0 else (True, False)
            result = {}
            for live in order:
                wall, cpu, observer = run_once(args.scenario, args.overrides, Path(tmp) / f"{rep}-{live}", live,
                                               args.refresh, args.width, args.height,
                                               recorder if rep == 0 and not live else None)
                result[live] = (wall, cpu, observer)
            rows.append((rep + 1, result[False][0], result[True][0], result[True][0] / result[False][0],
                         result[False][1], result[True][1], result[True][2].frames,
                         " -> ".join("live" if x else "plain" for x in order)))

    print(f"scenario {args.scenario.name} {' '.join(args.overrides)}; live refresh {args.refresh}/s into a "
          f"{args.width}x{args.height} null terminal; torch threads {_torch_threads()}")
    print(f"{'repeat':>6} {'--no-live s':>12} {'live s':>9} {'live/plain':>11} {'cpu plain':>10} {'cpu live':>9} "
          f"{'frames':>7}  order")
    for rep, plain, live, ratio, cpu_plain, cpu_live, frames, order in rows:
        print(f"{rep:>6} {plain:>12.2f} {live:>9.2f} {ratio:>11.3f} {cpu_plain:>10.2f} {cpu_live:>9.2f} {frames:>7}  "
              f"{order}")
    med_plain = statistics.median(r[1] for r in rows)
    med_live = statistics.median(r[2] for r in rows)
    med_ratio = statistics.median(r[3] for r in rows)
    print(f"{'median':>6} {med_plain:>12.2f} {med_live:>9.2f} {med_ratio:>11.3f} "
          f"{statistics.median(r[4] for r in rows):>10.2f} {statistics.median(r[5] for r in rows):>9.2f}")
    print(f"wall (training, RunFinished.wall_s): median live/plain = {med_ratio:.3f}; "
          f"ratio of medians = {med_live / med_plain:.3f}")

    # Direct costs: observer work per event, and one frame drawn.
    events = recorder.events
    state, lock = DashboardState(), threading.Lock()
    t0 = time.perf_counter()
    for event in events:
        with lock:
            state.apply(event)
    per_event = (time.perf_counter() - t0) / max(len(events), 1)
    console = null_terminal(args.width, args.height)
    snap = state.snapshot()
    console.print(render(snap, height=args.height))
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            snap = state.snapshot()
        console.print(render(snap, height=args.height))
    per_frame = (time.perf_counter() - t0) / n
    observer_share = len(events) * per_event / med_plain
    drawing_share = args.refresh * per_frame
    print(f"observer: {len(events)} events per run, {per_event * 1e6:.2f} us each = {len(events) * per_event * 1e3:.1f} ms "
          f"per run ({100 * observer_share:.2f}% of the median --no-live wall)")
    print(f"drawing: {per_frame * 1e3:.2f} ms per frame (snapshot + layout + write) x {args.refresh:g}/s = "
          f"{100 * drawing_share:.2f}% of one core, on the refresh thread")
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())
