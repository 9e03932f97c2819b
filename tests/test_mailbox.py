"""Mailbox semantics: claim by key, duplicates, deadlines that ignore local stalls, failures."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from p2pgan.protocol.messages import Message, MessageKey, MessageKind, Phase
from p2pgan.errors import PeerError
from p2pgan.protocol.endpoint import Mailbox


def msg(step: int = 0) -> Message:
    return Message(MessageKind.ACTIVATION, "c000", "server", 1, step, Phase.G_FWD, {"act": torch.ones(2)})


async def test_claim_by_key_in_any_order_and_refuse_duplicates():
    box = Mailbox()
    assert box.put(msg(1)) and box.put(msg(0))
    assert not box.put(msg(1))  # redelivery of an undelivered message is a no-op
    assert (await box.get(msg(0).key, timeout=1)).step == 0
    assert (await box.get(msg(1).key, timeout=1)).step == 1


async def test_silent_peer_fails_with_its_name():
    box = Mailbox()
    start = time.monotonic()
    with pytest.raises(PeerError, match="peer c000"):
        await box.get(msg().key, timeout=0.3)
    assert time.monotonic() - start < 2


async def test_a_blocked_event_loop_is_not_a_silent_peer():
    box = Mailbox()

    async def stall_then_deliver():
        await asyncio.sleep(0.05)
        time.sleep(1.5)  # e.g. a slow observer on the loop, far past the deadline below
        box.put(msg())

    deliver = asyncio.create_task(stall_then_deliver())
    got = await box.get(msg().key, timeout=0.5)
    await deliver
    assert got.step == 0


async def test_failure_wakes_waiters():
    box = Mailbox()
    waiter = asyncio.create_task(box.get(msg().key, timeout=10))
    await asyncio.sleep(0.01)
    box.fail(PeerError("c009", "died"))
    with pytest.raises(PeerError, match="c009"):
        await waiter


def test_a_failed_waiter_cancelled_before_it_wakes_logs_nothing_at_exit(caplog):
    """An aborting run fails every waiter, then cancels the nodes; asyncio must not log the
    error again, with a traceback, for each waiter nobody woke to read."""
    import gc
    import logging

    async def go():
        box = Mailbox()
        key = MessageKey(MessageKind.ACTIVATION, "c0", "server", 1, 0, Phase.D_REAL)
        task = asyncio.create_task(box.get(key, timeout=5))  # as a node waits: in deadline slices
        await asyncio.sleep(0)  # the task now waits
        box.fail(RuntimeError("peer c0 crashed"))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(go())
        gc.collect()
    assert "never retrieved" not in caplog.text
