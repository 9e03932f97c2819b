"""The live dashboard observer: a ``rich.live.Live`` redrawn at a bounded rate from snapshots."""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from p2pgan.protocol.events import PreparationStep, RunFinished, RunStarted
from p2pgan.ui.live.rendering import render
from p2pgan.ui.live.state import DashboardState, Snapshot

REFRESH_PER_SECOND = 4.0


class LiveView:
    """An event-bus observer that shows the dashboard while a run trains.

    Events only update :class:`DashboardState` under a lock (O(1) each); rich's own refresh thread
    takes a snapshot under the same lock at ``refresh_per_second`` and renders it outside the lock,
    so nodes are never blocked by drawing. The display starts on the first ``PreparationStep`` (or
    on ``RunStarted``) and stops on ``RunFinished``; :meth:`stop` is idempotent and also runs at interpreter exit, so the terminal is
    restored after an exception or a second Ctrl-C. Usable as a context manager.
    """

    def __init__(self, scenario: Any = None, *, console: Console | None = None,
                 refresh_per_second: float = REFRESH_PER_SECOND, max_node_rows: int | None = None,
                 clock: Callable[[], float] = time.monotonic, transient: bool = False) -> None:
        self.scenario = scenario
        self.console = console if console is not None else Console()
        self.refresh_per_second = refresh_per_second
        self.state = DashboardState(clock, title=str(getattr(scenario, "name", "") or ""))
        self.frames = 0
        self.render_s = 0.0
        self._max_node_rows = max_node_rows
        self._transient = transient
        self._lock = threading.Lock()
        self._live_lock = threading.Lock()
        self._live: Live | None = None

    # -- observer ------------------------------------------------------------------------------

    def __call__(self, event: object) -> None:
        try:
            with self._lock:
                self.state.apply(event)
        except Exception:  # never let the display break training
            self.state.observer_errors += 1
        try:
            if isinstance(event, (RunStarted, PreparationStep)):
                self.start()
            elif isinstance(event, RunFinished):
                self.stop()
        except Exception:  # a console that cannot draw must not stop the run either
            self.state.observer_errors += 1

    # -- display -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.state.snapshot()

    def renderable(self) -> RenderableType:
        started = time.perf_counter()
        try:
            if not self.console.is_terminal:
                return render(self.snapshot(), max_node_rows=self._max_node_rows)
            # On a terminal, end with an empty line: the cursor then rests at its start, so the tty's
            # "^C" echo on Ctrl-C cannot wrap a full-width line and shift the next frame down (the
            # frame leaves the terminal's last line for it).
            frame = render(self.snapshot(), max_node_rows=self._max_node_rows, height=self.console.size.height)
            return Group(frame, Text(""))
        except Exception as exc:  # a drawing bug must not kill the refresh thread
            return Text(f"p2pgan live view: cannot render ({type(exc).__name__}: {exc})", style="red")
        finally:
            self.frames += 1
            self.render_s += time.perf_counter() - started

    @property
    def running(self) -> bool:
        return self._live is not None

    def start(self) -> None:
        with self._live_lock:
            if self._live is not None:
                return
            live = Live(get_renderable=self.renderable, console=self.console, auto_refresh=True,
                        refresh_per_second=self.refresh_per_second, transient=self._transient,
                        redirect_stdout=True, redirect_stderr=True)
            live.start()
            self._live = live
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop drawing (one last frame stays on screen). Safe to call any number of times."""
        with self._live_lock:
            live, self._live = self._live, None
            if live is None:
                return
            atexit.unregister(self.stop)
            live.stop()
            if not self.console.is_terminal and not self._transient:
                self.console.line()  # rich ends the final frame without a newline on non-terminals

    close = stop

    def __enter__(self) -> "LiveView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
