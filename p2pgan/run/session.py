"""One training run from a validated scenario: the composition root of a run.

It prepares the run (one walk), wires the nodes over the transport, the extensions behind the
round closer, the results writer, the checkpointer and the caller's observers, stops cleanly, and
writes the summary. A resumed run restores the writer, the extensions and every node from a
checkpoint and starts at the round after it (run/checkpoint.py).
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
from p2pgan.ids import SERVER_ID
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.plan.program import Program
from p2pgan.protocol.endpoint import Transport
from p2pgan.protocol.events import LogEvent, RunFinished, RunStarted
from p2pgan.run.checkpoint import (Checkpointable, CheckpointMarkers, Completed, ResumePoint, RoundCheckpointer,
                                   RunSide)
from p2pgan.run.cohort import run_cohort
from p2pgan.run.closer import Extension, RoundCloser
from p2pgan.run.evaluation import metrics_extension
from p2pgan.run.latency import latency_extension, scenario_profiles
from p2pgan.run.nodes import build_transport, run_nodes
from p2pgan.run.prepare import prepare_run
from p2pgan.run.privacy import privacy_extension
from p2pgan.report.write import write_report
from p2pgan.run.results import ResultsWriter
from p2pgan.run.tensorboard import tensorboard_extension
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
                 node_ids: Sequence[str] | None = None, resume: ResumePoint | None = None,
                 checkpoint_written: Completed | None = None) -> RunOutcome:
    """Train ``scenario`` to the end (or until Ctrl-C / a failure) and write its results folder.

    Results written before an interruption or a peer failure are kept; the summary says how
    the run ended. ``node_ids`` limits this process to some nodes (the others run elsewhere).
    ``resume`` continues a run from its checkpoint (the results files already cut back to it).
    Checkpoints (run/checkpoint.py) are written at round ends; this process completes them itself
    when it runs every node, else it reports its part to ``checkpoint_written`` (the coordinator).
    """
    strategy = strategy_for(scenario)
    progress = preparation_progress(observers)
    prepared = prepared or prepare_run(scenario, progress=progress)
    all_nodes = [SERVER_ID, *prepared.plan.client_ids]
    local = list(node_ids) if node_ids is not None else all_nodes
    checkpointing = scenario.checkpoint.enabled and (node_ids is None or checkpoint_written is not None)
    bus = EventBus()
    writer = ResultsWriter(prepared, scenario.results_dir)
    bus.subscribe(writer)
    extensions = _extensions(prepared, bus, writer, strategy.program, sees_all_nodes=node_ids is None,
                             checkpointed=checkpointing, fresh=resume is None, progress=progress)
    run_side = RunSide(scenario.results_dir, [p for p in (writer, *extensions) if isinstance(p, Checkpointable)])
    markers = CheckpointMarkers(scenario.results_dir, all_nodes, prepared.plan.schedule.rounds, "one process")
    checkpointer = None
    if checkpointing:
        checkpointer = RoundCheckpointer(scenario.results_dir, scenario.checkpoint.every, prepared.plan.schedule.rounds,
                                         local, run_side, checkpoint_written or markers.report)
        bus.subscribe(checkpointer.observe)  # after the writer: a round is captured once it is recorded
    for observer in observers:
        bus.subscribe(observer)
    closer = RoundCloser(bus, extensions)
    bus.subscribe(closer)
    bus.publish(run_started_event(prepared))
    states = None
    if resume is not None:
        run_side.restore(resume)
        states = resume.node_states(local)
        bus.publish(LogEvent(f"resumed after round {resume.round} of {prepared.plan.schedule.rounds} "
                             f"from {resume.folder}"))
    started = time.perf_counter()
    status, error, detail = "completed", None, ""
    internal: BaseException | None = None
    try:
        first = resume.first_round if resume is not None else 1
        if scenario.execution.engine == "cohort":
            asyncio.run(run_cohort(prepared, bus, strategy, first, states, checkpointer))
        else:
            asyncio.run(run_nodes(prepared, transport or build_transport(prepared), bus, node_ids, strategy,
                                  first, states, checkpointer))
    except KeyboardInterrupt:
        status, detail = "interrupted", "stopped by Ctrl-C"
    except P2PGanError as exc:
        status, error, detail = "failed", exc, str(exc)
    except Exception as exc:  # a bug, not the user's input: recorded as a failure, then raised
        status, internal, detail = "failed", exc, f"internal error: {type(exc).__name__}: {exc}"
    finally:
        wall = time.perf_counter() - started
        writer.extra_summary.update(closer.finish(status))
        if checkpointer is not None:
            if status != "completed":
                checkpointer.flush()  # the last round every local node finished, if not yet written
            writer.extra_summary["checkpoints"] = _checkpoint_summary(checkpointer, markers, resume)
        finished = RunFinished(status, wall, detail)
        if status != "completed":
            bus.publish(LogEvent(f"run {status}: {detail}", "error" if error or internal else "warning"))
        bus.publish(finished)
        summary = writer.finish(finished)
        _write_report(scenario, bus)
    if internal is not None:
        raise internal
    return RunOutcome(status, summary, prepared, error)


def preparation_progress(observers: Sequence[Observer]) -> Observer:
    """Tells the observers of the preparation steps, which run before the run's bus exists."""
    bus = EventBus()
    for observer in observers:
        bus.subscribe(observer)
    return bus.publish


def _checkpoint_summary(checkpointer: RoundCheckpointer, markers: CheckpointMarkers,
                        resume: ResumePoint | None) -> dict[str, Any]:
    seconds = list(checkpointer.seconds.values())
    return {
        "resumed_after_round": resume.round if resume is not None else None,
        "last_complete_round": markers.complete[-1] if markers.complete else None,
        "written": len(seconds),
        "write_s_mean": round(sum(seconds) / len(seconds), 4) if seconds else None,
    }


def _write_report(scenario: Scenario, bus: EventBus) -> None:
    try:
        write_report(scenario.results_dir)
    except Exception as exc:  # the report reads what the run wrote; it never fails a run
        bus.publish(LogEvent(f"report not written: {type(exc).__name__}: {exc}", "warning"))


def _extensions(prepared: PreparedRun, bus: EventBus, writer: ResultsWriter, program: Program,
                sees_all_nodes: bool, checkpointed: bool = False, fresh: bool = True,
                progress: Observer | None = None) -> list[Extension]:
    """Optional subsystems that observe a run and add to its rounds and summary (latency, metrics).
    ``checkpointed``: they keep what checkpoints need; ``fresh=False``: a resumed run's;
    ``progress``: told their preparation steps (the metrics judges)."""
    found = [latency_extension(prepared, bus, writer.directory, program, sees_all_nodes, checkpointed),
             metrics_extension(prepared, bus, writer.directory, fresh, progress),
             privacy_extension(prepared, bus, writer.directory, program),
             tensorboard_extension(prepared, bus, fresh)]
    return [extension for extension in found if extension is not None]
