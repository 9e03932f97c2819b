"""Round end, one way: the round closer asks every extension for its section of a round and
publishes one :class:`RoundClosed` record.

Extensions (metrics, latency) do their per-round work on one worker thread, in round order, so
the server's event loop, and with it every peer, stays responsive while a round is evaluated.
The record is handed back to the event loop to publish, so observers always run on the loop's
thread; whatever is still in flight when the loop ends is published by :meth:`RoundCloser.drain`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from p2pgan.bus import EventBus
from p2pgan.protocol.events import LogEvent, RoundAggregated, RoundClosed


_NOT_DETAILS = ("simulated_s", "wall_s", "log", "error")


class Extension(Protocol):
    """A subsystem that observes a run and adds to its rounds and its summary."""

    name: str

    def round_section(self, event: RoundAggregated) -> Mapping[str, Any]:
        """This extension's facts about the round (merged into the round's ``details``)."""

    def finish(self, status: str) -> Mapping[str, Any]:
        """This extension's part of ``summary.json``."""


class RoundCloser:
    def __init__(self, bus: EventBus, extensions: Sequence[Extension], background: bool = True) -> None:
        self._bus = bus
        self._extensions = tuple(extensions)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="round-closer") if background else None
        self._pending: list[tuple[Future, RoundClosed | None]] = []
        self._published: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, event: object) -> None:
        if not isinstance(event, RoundAggregated):
            return
        if self._pool is None:
            self._publish(self._close(event))
            return
        future = self._pool.submit(self._close, event)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            future.add_done_callback(lambda done: self._hand_back(loop, done))
        self._pending.append((future, None))

    def drain(self) -> None:
        """Wait for every round in flight and publish, in round order, what is not yet published."""
        for future, _ in self._pending:
            self._publish(future.result())
        self._pending.clear()

    def finish(self, status: str) -> dict[str, Any]:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        summary: dict[str, Any] = {}
        for extension in self._extensions:
            summary.update(extension.finish(status))
        return summary

    def _close(self, event: RoundAggregated) -> RoundClosed:
        sections: dict[str, dict[str, Any]] = {}
        for extension in self._extensions:
            try:
                sections[extension.name] = dict(extension.round_section(event))
            except Exception as exc:  # an extension never stops training
                sections[extension.name] = {"error": f"{type(exc).__name__}: {exc}"}
        details = dict(event.result.details)
        simulated = wall = None
        for section in sections.values():
            details.update({k: v for k, v in section.items() if k not in _NOT_DETAILS})
            simulated = section.get("simulated_s", simulated)
            wall = section.get("wall_s", wall)
        return RoundClosed(event.round, event.result, event.losses, details, sections, simulated, wall)

    def _hand_back(self, loop: asyncio.AbstractEventLoop, done: Future) -> None:
        if done.exception() is not None:
            return
        try:
            loop.call_soon_threadsafe(self._publish, done.result())
        except RuntimeError:  # the loop has ended; drain() publishes it
            pass

    def _publish(self, closed: RoundClosed) -> None:
        with self._lock:
            if closed.round in self._published:
                return
            self._published.add(closed.round)
        for section in closed.sections.values():
            # Extensions work off the loop's thread: their log lines are published here, on it.
            for level, message in section.get("log", ()):
                self._bus.publish(LogEvent(message, level))
            if "error" in section:
                self._bus.publish(LogEvent(f"round {closed.round}: {section['error']}", "error"))
        self._bus.publish(closed)
