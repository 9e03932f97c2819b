"""Plain line-by-line progress for non-terminals (CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from p2pgan.protocol.events import (FinalEvaluation, LogEvent, ParticipationChanged, PreparationStep, RoundClosed,
                                    RunFinished, RunStarted)


class PlainProgress:
    """Prints one line per finished preparation step, one at start, one per round, one per change
    of who takes part, the final evaluation's start and end, and one at the end."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._started = time.perf_counter()
        self._rounds = 0

    def __call__(self, event: object) -> None:
        if isinstance(event, PreparationStep):
            if event.state == "done":
                detail = f": {event.detail}" if event.detail else ""
                self._print(f"prepared {event.name}{detail} ({event.seconds or 0.0:.1f}s)")
            elif event.state == "failed":
                self._print(f"preparation step {event.name} failed: {event.detail}")
        elif isinstance(event, RunStarted):
            self._rounds = event.rounds
            clients = sum(1 for n in event.nodes if n.role == "client")
            self._print(f"run {event.scenario}: {clients} clients, strategy {event.strategy}, transport "
                        f"{event.transport}, seed {event.seed}, {event.rounds} rounds x {event.local_epochs} "
                        f"epochs x {event.steps_per_epoch} steps -> {event.results_dir}")
        elif isinstance(event, RoundClosed):
            losses = " ".join(
                f"{cid}:D={v.get('d_loss', 0):.3f}/G={v.get('g_loss', 0):.3f}" for cid, v in list(event.losses.items())[:4])
            more = " ..." if len(event.losses) > 4 else ""
            clusters = sorted(set(event.result.clusters.values()))
            self._print(f"round {event.round}/{self._rounds} done in {time.perf_counter() - self._started:.1f}s "
                        f"clusters={len(clusters)} {losses}{more}")
            if event.simulated_s is not None and event.wall_s:
                self._print(f"  simulated {event.simulated_s:.1f}s after round {event.round} "
                            f"(simulated/wall {event.simulated_s / event.wall_s:.2f}x)")
        elif isinstance(event, ParticipationChanged):
            dropped = f"; dropped: {', '.join(event.dropped)}" if event.dropped else ""
            self._print(f"round {event.round} step {event.step}: {event.reason or 'participation changed'} "
                        f"({len(event.present)} taking part{dropped})")
        elif isinstance(event, FinalEvaluation):
            if event.state == "started":
                self._print(f"evaluating round {event.round} (final metrics)...")
            elif event.state == "done":
                self._print(f"final evaluation done in {event.seconds or 0.0:.1f}s")
            else:
                self._print(f"final evaluation failed: {event.detail}")
        elif isinstance(event, LogEvent):
            self._print(f"[{event.level}] {event.message}")
        elif isinstance(event, RunFinished):
            self._print(f"run {event.status} in {event.wall_s:.1f}s")

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)
