"""NodePort under ``faults.policy: continue``: how long a receive waits for a peer."""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pgan.bus import EventBus
from p2pgan.engine.port import NodePort, PeerLost
from p2pgan.protocol.messages import MessageKind, Phase


class _SilentEndpoint:
    """A transport whose peers never answer."""

    class mailbox:  # noqa: N801 (stands in for the endpoint's mailbox attribute)
        @staticmethod
        async def get(key, timeout):
            await asyncio.Event().wait()


async def test_a_receive_for_a_peer_dropped_meanwhile_gives_up_at_once():
    """A Ray shard that died has its clients dropped by the driver; a receive already waiting for
    one of them must not wait out the whole peer deadline."""
    wanted = {"c001": True}
    port = NodePort("server", _SilentEndpoint(), EventBus(), None, peer_deadline_s=30.0,
                    wanted=lambda peer: wanted[peer])
    asyncio.get_running_loop().call_later(0.2, wanted.__setitem__, "c001", False)
    started = time.monotonic()
    with pytest.raises(PeerLost, match="c001: dropped while the server waited for it"):
        await port.receive(MessageKind.ACTIVATION, "c001", Phase.G_FWD)
    assert time.monotonic() - started < 5.0  # one 1 s slice, not the 30 s deadline


async def test_a_silent_peer_still_wanted_is_lost_at_its_deadline():
    port = NodePort("server", _SilentEndpoint(), EventBus(), None, peer_deadline_s=1.0, wanted=lambda peer: True)
    with pytest.raises(PeerLost, match="within 1 s"):
        await port.receive(MessageKind.ACTIVATION, "c001", Phase.G_FWD)
