"""Round end, one way: extensions answer off the event loop, one RoundClosed per round, in order."""

from __future__ import annotations

import asyncio
import threading
import time

from p2pgan.bus import EventBus
from p2pgan.protocol.events import LogEvent, RoundAggregated, RoundClosed
from p2pgan.protocol.federation import FederationResult
from p2pgan.run.closer import RoundCloser


class SlowExtension:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []

    def round_section(self, event: RoundAggregated) -> dict:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)  # a judge's inference: heavy, synchronous
        return {"score": event.round * 10, "log": [("info", f"scored round {event.round}")]}

    def finish(self, status: str) -> dict:
        return {"slow": {"status": status}}


class Failing:
    name = "broken"

    def round_section(self, event):
        raise RuntimeError("boom")

    def finish(self, status):
        return {}


def aggregated(round_: int) -> RoundAggregated:
    details = {"strategy": "test"}
    return RoundAggregated(round_, FederationResult({}, {}, {"c000": 0}, {}, details), {"c000": {"d_loss": 1.0}})


def test_extensions_run_off_the_loop_and_rounds_close_in_order():
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(lambda e: seen.append((e, threading.current_thread().name)))
    slow = SlowExtension(0.6)
    closer = RoundCloser(bus, [slow, Failing()])
    bus.subscribe(closer)
    gaps: list[float] = []

    async def server() -> None:
        for round_ in (1, 2, 3):
            bus.publish(aggregated(round_))
            last = time.perf_counter()
            for _ in range(10):  # the server keeps serving its peers meanwhile
                await asyncio.sleep(0.02)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

    started = time.perf_counter()
    asyncio.run(server())
    loop_time = time.perf_counter() - started
    summary = closer.finish("completed")
    assert loop_time < 3 * 0.6, "the loop waited for the extension"
    assert max(gaps) < 0.3, max(gaps)
    assert all(name.startswith("round-closer") for name in slow.threads)
    closed = [(e, thread) for e, thread in seen if isinstance(e, RoundClosed)]
    assert [e.round for e, _ in closed] == [1, 2, 3]
    for e, _ in closed:
        assert e.details["score"] == e.round * 10 and e.details["strategy"] == "test"
        assert "log" not in e.details and e.sections["broken"]["error"] == "RuntimeError: boom"
        assert e.result.details == {"strategy": "test"}, "the aggregation's own record was mutated"
    # observers only ever run on the publishing (main) thread, never on the closer's
    assert {thread for _, thread in seen} == {threading.main_thread().name}
    logs = [e.message for e, _ in seen if isinstance(e, LogEvent)]
    assert "scored round 3" in logs and any("boom" in m for m in logs)
    assert summary == {"slow": {"status": "completed"}}


def test_without_background_the_round_closes_at_once():
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    closer = RoundCloser(bus, [SlowExtension(0.0)], background=False)
    bus.subscribe(closer)
    bus.publish(aggregated(1))
    assert [e.round for e in seen if isinstance(e, RoundClosed)] == [1]
