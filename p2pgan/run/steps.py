"""Preparation steps, timed and told to whoever watches the run (the live view, plain progress).

The preparation walk (:mod:`p2pgan.run.prepare`) and the metrics judges
(:mod:`p2pgan.run.evaluation`) run before the run's bus has any observer; they tell a
``progress`` callable instead, which the session wires to the same observers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from p2pgan.protocol.events import PreparationStep

Progress = Callable[[object], None]


@dataclass
class StepNote:
    """What a step reports when it is done (set inside the ``with`` block)."""

    detail: str = ""


@contextmanager
def preparation_step(progress: Progress | None, name: str, detail: str = "") -> Iterator[StepNote]:
    """Tell ``progress`` that step ``name`` started, run the block, then that it is done (with its
    wall seconds and the note's detail) or failed (the error's first line; the error goes on)."""
    note = StepNote(detail)
    if progress is None:
        yield note
        return
    progress(PreparationStep(name, "started", detail))
    started = time.perf_counter()
    try:
        yield note
    except BaseException as exc:
        text = str(exc).strip().splitlines()
        progress(PreparationStep(name, "failed", text[0][:200] if text else type(exc).__name__,
                                 time.perf_counter() - started))
        raise
    progress(PreparationStep(name, "done", note.detail, time.perf_counter() - started))
