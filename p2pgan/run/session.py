"""One training run from a validated scenario: wiring, observers, clean stop, summary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pgan.config.schema import Scenario
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.run.nodes import build_transport, run_nodes
from p2pgan.run.prepare import prepare_run
from p2pgan.errors import P2PGanError
from p2pgan.bus import EventBus
from p2pgan.protocol.events import LogEvent, RunFinished, RunStarted
from p2pgan.run.results import ResultsWriter
from p2pgan.protocol.endpoint import Transport

Observer = Callable[[object], None]


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "completed" | "interrupted" | "failed"
    summary: dict[str, Any]
    prepared: PreparedRun
    error: BaseException | None = None


def run_started_event(prepared: PreparedRun) -> RunStarted:
    from p2pgan.run.latency import scenario_profiles

    scenario = prepared.scenario
    schedule = prepared.plan.schedule
    return RunStarted(scenario.name, scenario.strategy.name, scenario.transport.kind, scenario.seed,
                      str(scenario.results_dir), schedule.rounds, schedule.local_epochs, schedule.steps_per_epoch,
                      prepared.node_infos(scenario_profiles(prepared)))


def run_scenario(scenario: Scenario, observers: Sequence[Observer] = (),
                 transport: Transport | None = None, prepared: PreparedRun | None = None,
                 node_ids: Sequence[str] | None = None) -> RunOutcome:
    """Train ``scenario`` to the end (or until Ctrl-C / a failure) and write its results folder.

    Results written before an interruption or a peer failure are kept; the summary says how
    the run ended. ``node_ids`` limits this process to some nodes (the others run elsewhere).
    """
    prepared = prepared or prepare_run(scenario)
    bus = EventBus()
    writer = ResultsWriter(prepared, scenario.results_dir)
    bus.subscribe(writer)
    for observer in observers:
        bus.subscribe(observer)
    extensions = _attach_extensions(prepared, bus, writer, sees_all_nodes=node_ids is None)
    bus.publish(run_started_event(prepared))
    started = time.perf_counter()
    status, error, detail = "completed", None, ""
    try:
        asyncio.run(run_nodes(prepared, transport or build_transport(scenario), bus, node_ids))
    except KeyboardInterrupt:
        status, detail = "interrupted", "stopped by Ctrl-C"
    except P2PGanError as exc:
        status, error, detail = "failed", exc, str(exc)
    finally:
        wall = time.perf_counter() - started
        for extension in extensions:
            writer.extra_summary.update(extension(status))
        finished = RunFinished(status, wall, detail)
        if status != "completed":
            bus.publish(LogEvent(f"run {status}: {detail}", "error" if error else "warning"))
        bus.publish(finished)
        summary = writer.finish(finished)
    return RunOutcome(status, summary, prepared, error)


def _attach_extensions(prepared: PreparedRun, bus: EventBus, writer: ResultsWriter,
                       sees_all_nodes: bool) -> list[Callable[[str], dict[str, Any]]]:
    """Optional subsystems that observe a run and add to its summary (latency, metrics)."""
    from p2pgan.run.evaluation import metrics_extension
    from p2pgan.run.latency import latency_extension

    return [latency_extension(prepared, bus, writer, sees_all_nodes), metrics_extension(prepared, bus, writer)]
