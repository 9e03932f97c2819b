"""The event bus: synchronous fan-out of run events to observers.

Publishing never blocks: an observer must only record, never await or compute heavily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Observer(Protocol):
    def __call__(self, event: object) -> None: ...


class EventBus:
    """Synchronous fan-out to observers, in subscription order."""

    def __init__(self) -> None:
        self._observers: list[Callable[[object], None]] = []

    def subscribe(self, observer: Callable[[object], None], first: bool = False) -> None:
        """Add ``observer``; ``first`` puts it ahead of the others (an observer that enriches an
        event, such as per-round metrics, before the results writer and live views read it)."""
        if first:
            self._observers.insert(0, observer)
        else:
            self._observers.append(observer)

    def publish(self, event: object) -> None:
        for observer in list(self._observers):
            observer(event)
