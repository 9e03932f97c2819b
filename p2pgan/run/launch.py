"""The one place that picks the engine a validated scenario asks for and runs it.

The CLI (with its live view) and the Python API (without one) both start runs here, so a
scenario runs the same way whichever door it came through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO

from p2pgan.config.schema import Scenario
from p2pgan.ids import SERVER_ID
from p2pgan.run.checkpoint import ResumePoint
from p2pgan.run.prepare import prepare_run
from p2pgan.run.processes import run_processes
from p2pgan.run.session import RunOutcome, run_scenario

Observer = Callable[[object], None]


def launch(scenario: Scenario, observers: Sequence[Observer] = (), resume: ResumePoint | None = None, *,
           coordinator_progress: Observer | None = None, coordinator_out: TextIO | None = None) -> RunOutcome:
    """Train ``scenario`` in its (already claimed) results folder on the engine it names.

    With ``transport.processes`` every node prints its own lines and no observer runs in this
    process: ``coordinator_progress`` is told the coordinator's preparation steps and
    ``coordinator_out`` gets its round lines (None: standard output).
    """
    if scenario.execution.engine == "ray":
        from p2pgan.run.ray import run_ray  # Ray is an optional extra: imported only when asked for

        return run_ray(scenario, list(observers), resume=resume)
    if scenario.transport.processes:
        prepared = prepare_run(scenario, for_node=SERVER_ID, progress=coordinator_progress)
        return run_processes(scenario, resume=resume, prepared=prepared, out=coordinator_out)
    return run_scenario(scenario, list(observers), resume=resume)
