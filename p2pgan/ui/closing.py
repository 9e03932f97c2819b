"""The closing summary a run prints once it has ended (after the live view stops, or after the
plain progress lines): how it ended, how far and how long it ran, and where its results are."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from p2pgan.protocol.events import TransferEvent
from p2pgan.ui.live.rendering import human_bytes

_STATUS_STYLE = {"completed": "bold green", "interrupted": "bold yellow", "failed": "bold red"}


class TrafficTally:
    """Observer counting the bytes of every message the run reports (O(1) per event)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.messages = 0

    def __call__(self, event: object) -> None:
        if type(event) is TransferEvent:
            self.bytes += event.nbytes
            self.messages += 1


@dataclass(frozen=True)
class ClosingSummary:
    status: str
    detail: str
    rounds_completed: int | None
    rounds_planned: int | None
    wall_s: float
    """The whole run as the user waited for it: preparation, training, final metrics, report."""
    training_s: float | None
    """Training alone (``summary.json``'s ``wall_s``)."""
    simulated_s: float | None
    traffic_bytes: int | None
    results_dir: Path
    report: Path | None


def closing_summary(summary: Mapping[str, Any], results_dir: Path, wall_s: float,
                    traffic_bytes: int | None = None) -> ClosingSummary:
    """From the run's ``summary.json`` contents and what the command itself measured."""
    latency = summary.get("latency") if isinstance(summary.get("latency"), Mapping) else {}
    report = Path(results_dir) / "report.html"
    return ClosingSummary(
        status=str(summary.get("status", "unknown")), detail=str(summary.get("detail", "") or ""),
        rounds_completed=_int(summary.get("rounds_completed")), rounds_planned=_int(summary.get("rounds_planned")),
        wall_s=wall_s, training_s=_float(summary.get("wall_s")), simulated_s=_float(latency.get("sim_total_s")),
        traffic_bytes=traffic_bytes if traffic_bytes else None, results_dir=Path(results_dir),
        report=report if report.is_file() else None)


def closing_text(c: ClosingSummary, width: int = 80) -> Text:
    """The summary as lines no wider than ``width`` where the values allow (paths are never cut)."""
    head = Text("run ", style="bold")
    head.append(c.status, style=_STATUS_STYLE.get(c.status, "bold"))
    facts = []
    if c.rounds_planned is not None:
        facts.append(f"{c.rounds_completed if c.rounds_completed is not None else '?'}/{c.rounds_planned} rounds")
    facts.append(f"wall {_seconds(c.wall_s)}" + (f" (training {_seconds(c.training_s)})" if c.training_s is not None
                                                  else ""))
    if c.simulated_s is not None:
        facts.append(f"simulated {_seconds(c.simulated_s)}")
    if c.traffic_bytes is not None:
        facts.append(f"traffic {human_bytes(c.traffic_bytes)}")
    out = Text(no_wrap=False)
    out.append_text(head)
    used = head.cell_len
    for fact in facts:
        if used + 3 + len(fact) > width:
            out.append("\n")
            used = 0
        else:
            out.append(" · ", style="dim")
            used += 3
        out.append(fact)
        used += len(fact)
    if c.detail:
        out.append(f"\n  {c.detail}", style="dim")
    out.append("\nresults ", style="dim")
    out.append(str(c.results_dir))
    if c.report is not None:
        out.append("\nreport  ", style="dim")
        out.append(str(c.report))
    return out


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(round(value)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None
