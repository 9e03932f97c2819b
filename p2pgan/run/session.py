"""One training run from a validated scenario: the composition root of a run.

It prepares the run (one walk), wires the nodes over the transport, the extensions behind the
round closer, the results writer and the caller's observers, stops cleanly, and writes the summary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pgan.bus import EventBus
from p2pgan.config.schema import Scenario
from p2pgan.errors import P2PGanError
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.plan.program import Program
from p2pgan.protocol.endpoint import Transport
from p2pgan.protocol.events import LogEvent, RunFinished, RunStarted
from p2pgan.run.closer import Extension, RoundCloser
from p2pgan.run.evaluation import metrics_extension
from p2pgan.run.latency import latency_extension, scenario_profiles
from p2pgan.run.nodes import build_transport, run_nodes
from p2pgan.run.prepare import prepare_run
from p2pgan.run.privacy import privacy_extension
from p2pgan.report.write import write_report
from p2pgan.run.results import ResultsWriter
from p2pgan.strategies.catalogue import strategy_for

Observer = Callable[[object], None]


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "completed" | "interrupted" | "failed"
    summary: dict[str, Any]
    prepared: PreparedRun
    error: BaseException | None = None


def run_started_event(prepared: PreparedRun) -> RunStarted:
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
    strategy = strategy_for(scenario)
    prepared = prepared or prepare_run(scenario)
    bus = EventBus()
    writer = ResultsWriter(prepared, scenario.results_dir)
    bus.subscribe(writer)
    for observer in observers:
        bus.subscribe(observer)
    closer = RoundCloser(bus, _extensions(prepared, bus, writer, strategy.program, sees_all_nodes=node_ids is None))
    bus.subscribe(closer)
    bus.publish(run_started_event(prepared))
    started = time.perf_counter()
    status, error, detail = "completed", None, ""
    internal: BaseException | None = None
    try:
        asyncio.run(run_nodes(prepared, transport or build_transport(prepared), bus, node_ids, strategy))
    except KeyboardInterrupt:
        status, detail = "interrupted", "stopped by Ctrl-C"
    except P2PGanError as exc:
        status, error, detail = "failed", exc, str(exc)
    except Exception as exc:  # a bug, not the user's input: recorded as a failure, then raised
        status, internal, detail = "failed", exc, f"internal error: {type(exc).__name__}: {exc}"
    finally:
        wall = time.perf_counter() - started
        writer.extra_summary.update(closer.finish(status))
        finished = RunFinished(status, wall, detail)
        if status != "completed":
            bus.publish(LogEvent(f"run {status}: {detail}", "error" if error or internal else "warning"))
        bus.publish(finished)
        summary = writer.finish(finished)
        _write_report(scenario, bus)
    if internal is not None:
        raise internal
    return RunOutcome(status, summary, prepared, error)


def _write_report(scenario: Scenario, bus: EventBus) -> None:
    try:
        write_report(scenario.results_dir)
    except Exception as exc:  # the report reads what the run wrote; it never fails a run
        bus.publish(LogEvent(f"report not written: {type(exc).__name__}: {exc}", "warning"))


def _extensions(prepared: PreparedRun, bus: EventBus, writer: ResultsWriter, program: Program,
                sees_all_nodes: bool) -> list[Extension]:
    """Optional subsystems that observe a run and add to its rounds and summary (latency, metrics)."""
    found = [latency_extension(prepared, bus, writer.directory, program, sees_all_nodes),
             metrics_extension(prepared, bus, writer.directory),
             privacy_extension(prepared, bus, writer.directory, program)]
    return [extension for extension in found if extension is not None]
