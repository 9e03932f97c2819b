"""A live aiohttp node on 127.0.0.1: bad requests are refused with 4xx, valid ones still served;
sends retry, redelivery is idempotent, and an unreachable or silent peer fails within the deadline."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time

import aiohttp
import pytest
import torch

from p2pgan.plan.program import MD_GAN, U_SHAPED
from p2pgan.protocol.messages import Message, MessageKind, Phase
from p2pgan.protocol.specs import MessageSpecs
from p2pgan.errors import PeerError
from transports import wire
from transports.catalogue import create_transport
from transports.http import MESSAGE_PATH, HttpTransport
from transports.wire import encode, sign_headers

# The messages the run's program sends: what a real run passes its transport.
SPECS = MessageSpecs.union(p.message_specs() for p in (U_SHAPED, MD_GAN))

SECRET = os.urandom(32)
NODES = ["server", "c000"]
TIMEOUT = aiohttp.ClientTimeout(total=10)


def activation(step: int = 0, shape=(4, 3)) -> Message:
    return Message(MessageKind.ACTIVATION, "c000", "server", 1, step, Phase.G_FWD, {"act": torch.randn(*shape)})


def body_with_header(edit=None, data: bytes | None = None) -> bytes:
    msg = activation()
    header = {"v": 1, "id": msg.msg_id, "kind": "activation", "src": "c000", "dst": "server", "round": 1, "step": 0,
              "phase": "g_fwd", "tensors": [{"name": "act", "dtype": "float32", "shape": [4, 3]}], "meta": {}}
    if edit:
        edit(header)
    import json

    head = json.dumps(header).encode()
    prefix = wire.MAGIC + struct.pack("<I", len(head)) + head
    data = msg.tensors["act"].numpy().tobytes() if data is None else data
    return prefix + b"\0" * ((-len(prefix)) % 64) + data + b"\0" * ((-len(data)) % 64)


@pytest.fixture
async def node():
    """A server node on an ephemeral loopback port that accepts messages from c000."""
    transport = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, max_message_mb=0.05,
                              message_specs=SPECS)
    endpoints = await transport.open(["server"])
    session = aiohttp.ClientSession(timeout=TIMEOUT)
    try:
        yield transport, endpoints["server"], session, transport.url_of("server") + MESSAGE_PATH
    finally:
        await session.close()
        await transport.close()


async def post(session, url, body, headers):
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def assert_still_serves(transport, endpoint, session, url, step):
    msg = activation(step)
    body = bytes(encode(msg))
    status, text = await post(session, url, body, sign_headers(SECRET, "c000", "server", body))
    assert status == 200, text
    got = await endpoint.receive(msg.key)
    assert torch.equal(got.tensors["act"], msg.tensors["act"])


def signed(body: bytes, secret: bytes = SECRET, src: str = "c000", dst: str = "server", now=None):
    return sign_headers(secret, src, dst, body, now=now)


VALID = bytes(encode(activation(step=99)))
BAD_REQUESTS = {
    "unsigned": lambda: (VALID, {}, 401),
    "wrong key": lambda: (VALID, signed(VALID, secret=os.urandom(32)), 401),
    "unknown node id": lambda: (VALID, signed(VALID, src="mallory"), 403),
    "addressed to another node": lambda: (VALID, signed(VALID, dst="c000"), 403),
    "stale timestamp": lambda: (VALID, signed(VALID, now=time.time() - 3600), 401),
    "truncated body, original signature": lambda: (VALID[:-70], signed(VALID), 401),
    "truncated body, re-signed": lambda: (VALID[:-70], signed(VALID[:-70]), 400),
    "header/body mismatch (shape)": lambda: (b := body_with_header(lambda h: h["tensors"][0].update(shape=[4, 5])), signed(b), 400),
    "header/body mismatch (dtype)": lambda: (b := body_with_header(lambda h: h["tensors"][0].update(dtype="float64")), signed(b), 400),
    "oversized": lambda: (b := bytes(encode(activation(shape=(200, 100)))), signed(b), 413),
    "unknown kind": lambda: (b := body_with_header(lambda h: h.update(kind="exploit")), signed(b), 400),
    "random bytes, signed": lambda: (b := os.urandom(3000), signed(b), 400),
    "random bytes, unsigned": lambda: (os.urandom(3000), {}, 401),
    "sender spoofs another node": lambda: (b := body_with_header(lambda h: h.update(src="server", dst="server", id="server>server/r1/s0/g_fwd/activation")), signed(b), 403),
    "protocol violation (tensor name)": lambda: (b := bytes(encode(Message(MessageKind.ACTIVATION, "c000", "server", 1, 0, Phase.G_FWD, {"payload": torch.ones(2, 2)}))), signed(b), 422),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_request_is_refused_and_node_keeps_serving(node, case, caplog):
    transport, endpoint, session, url = node
    body, headers, expected = BAD_REQUESTS[case]()
    with caplog.at_level(logging.WARNING, logger="p2pgan.transport.http"):
        status, text = await post(session, url, body, headers)
    assert status == expected, text
    assert 400 <= status < 500
    assert transport.stats.refused and transport.stats.refused[-1][1] == status
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert not transport._mailboxes["server"]._ready  # nothing was delivered
    await assert_still_serves(transport, endpoint, session, url, step=1)


async def test_replayed_request_is_refused(node):
    transport, endpoint, session, url = node
    msg = activation(step=5)
    body = bytes(encode(msg))
    headers = signed(body)
    assert (await post(session, url, body, headers))[0] == 200
    status, text = await post(session, url, body, headers)
    assert status == 409 and "replayed" in text
    await endpoint.receive(msg.key)
    await assert_still_serves(transport, endpoint, session, url, step=6)


async def test_wrong_method_and_path(node):
    transport, endpoint, session, url = node
    async with session.get(url) as response:
        assert response.status == 405
    async with session.post(url.replace("message", "nothing"), data=b"x") as response:
        assert response.status == 404
    await assert_still_serves(transport, endpoint, session, url, step=2)


async def test_garbage_on_the_socket_does_not_kill_the_node(node):
    transport, endpoint, session, url = node
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(os.urandom(2048) + b"\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(200), 5)
    assert reply.startswith(b"HTTP/1.") and reply[9:10] == b"4", reply[:40]
    writer.close()
    await assert_still_serves(transport, endpoint, session, url, step=3)


async def test_redelivery_is_idempotent():
    transport = HttpTransport(receive_timeout_s=5)
    endpoints = await transport.open(NODES)
    try:
        msg = activation(step=0)
        await transport.send(msg)
        await transport.send(msg)  # a retry after a lost answer looks exactly like this
        got = await endpoints["server"].receive(msg.key)
        assert torch.equal(got.tensors["act"], msg.tensors["act"])
        assert transport.stats.duplicates == 1 and not transport._mailboxes["server"]._ready
    finally:
        await transport.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_send_retries_until_the_peer_comes_up():
    port = closed_port()
    receiver = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, port=port)
    sender = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, retries=6,
                           peers={"server": f"http://127.0.0.1:{port}"})
    await sender.open(["c000"])
    try:
        async def late_start():
            await asyncio.sleep(0.4)
            return await receiver.open(["server"])

        starting = asyncio.create_task(late_start())
        msg = activation()
        await sender.send(msg)
        endpoints = await starting
        assert sender.stats.retries >= 1
        assert torch.equal((await endpoints["server"].receive(msg.key)).tensors["act"], msg.tensors["act"])
    finally:
        await sender.close()
        await receiver.close()


async def test_unreachable_peer_fails_with_its_name_within_the_deadline():
    sender = create_transport("http", receive_timeout_s=2, host="127.0.0.1", port=0, retries=3, max_message_mb=1,
                              secret=SECRET, nodes=NODES, peers={"server": f"http://127.0.0.1:{closed_port()}"})
    await sender.open(["c000"])
    try:
        started = time.monotonic()
        with pytest.raises(PeerError) as err:
            await sender.send(activation())
        assert err.value.peer == "server" and "unreachable" in str(err.value)
        assert time.monotonic() - started < 2.5
        assert "\n" not in str(err.value)
    finally:
        await sender.close()


async def test_silent_peer_fails_at_the_deadline():
    """A peer that accepts connections but never answers: the send gives up at the deadline."""
    accepted = []

    async def hold(reader, writer):
        accepted.append(writer)
        await asyncio.sleep(30)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = HttpTransport(receive_timeout_s=1.0, secret=SECRET, nodes=NODES, retries=5,
                           peers={"server": f"http://127.0.0.1:{port}"})
    await sender.open(["c000"])
    try:
        started = time.monotonic()
        with pytest.raises(PeerError, match="peer server: unreachable") as err:
            await sender.send(activation())
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 2.0, elapsed
        assert "no answer" in str(err.value)
    finally:
        await sender.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_fail_all_interrupts_a_retrying_sender():
    sender = HttpTransport(receive_timeout_s=30, secret=SECRET, nodes=NODES, retries=50,
                           peers={"server": f"http://127.0.0.1:{closed_port()}"})
    await sender.open(["c000"])
    try:
        task = asyncio.create_task(sender.send(activation()))
        await asyncio.sleep(0.3)
        sender.fail_all(PeerError("c001", "died"))
        with pytest.raises(PeerError, match="c001"):
            await asyncio.wait_for(task, 3)
    finally:
        await sender.close()


async def test_a_node_with_another_secret_is_refused_at_startup():
    receiver = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES)
    await receiver.open(["server"])
    sender = HttpTransport(receive_timeout_s=5, secret=os.urandom(32), nodes=NODES,
                           peers={"server": receiver.url_of("server")})
    await sender.open(["c000"])
    try:
        with pytest.raises(PeerError, match="refused ping: HTTP 401"):
            await sender.wait_until_ready("c000", ["server"], 5)
        receiver.mark_ready("server")
        good = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, peers={"server": receiver.url_of("server")})
        await good.open(["c000"])
        await good.wait_until_ready("c000", ["server"], 5, need_ready=True)
        await good.close()
    finally:
        await sender.close()
        await receiver.close()


async def test_every_local_node_gets_its_own_port_and_messages_cross_http():
    transport = create_transport("http", receive_timeout_s=5, host="127.0.0.1", port=0, retries=1, max_message_mb=4)
    endpoints = await transport.open(["server", "c000", "c001"])
    try:
        urls = transport.local_urls
        assert len(set(urls.values())) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls.values())
        msg = Message(MessageKind.GRADIENT, "server", "c001", 1, 0, Phase.D_BWD,
                      {"fake": torch.randn(3, 2), "real": torch.randn(3, 2)})
        await endpoints["server"].send(msg)
        got = await endpoints["c001"].receive(msg.key)
        assert torch.equal(got.tensors["real"], msg.tensors["real"])
        assert transport.stats.sent == 1 and transport.stats.received == 1
    finally:
        await transport.close()
