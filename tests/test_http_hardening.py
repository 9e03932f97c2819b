"""A hardened node: refuses hostile requests before reading their bodies, never decompresses or
preallocates, times out slow headers and bodies, caps concurrent bodies, and logs refusals at a
bounded rate; a bounded loopback fuzz (> 1,000 hostile requests) leaves it serving with bounded RSS."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import random
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Mapping

import pytest
import torch

from p2pgan.protocol.messages import Message, MessageKind, Phase
from transports import wire
from transports.http import MESSAGE_PATH, HttpTransport, parse_url
from transports.middlewares import RefusalLog
from transports.wire import encode, sign_headers

SECRET = os.urandom(32)
NODES = ["server", "c000"]
HEADER_TIMEOUT_S = 1.0
BODY_IDLE_S = 0.5
MIB = 1 << 20
LOGGER = "p2pgan.transport.http"


def activation(step: int = 0) -> Message:
    return Message(MessageKind.ACTIVATION, "c000", "server", 1, step, Phase.G_FWD, {"act": torch.randn(4, 3)})


def gzip_bomb(inflated: int = 200 * MIB) -> bytes:
    """``inflated`` zero bytes, gzip-compressed a MiB at a time (never held inflated)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    return b"".join(packer.compress(zeros) for _ in range(inflated // MIB)) + packer.flush()


def signed_for_length(length: int, src: str = "c000", dst: str = "server", now: float | None = None) -> dict[str, str]:
    """Headers a peer holding the secret (a buggy or compromised node) would send for a body of
    ``length`` bytes: a valid head signature; the body signature is for an empty body."""
    headers = sign_headers(SECRET, src, dst, b"", now=now)
    headers[wire.HEADER_HEAD_SIGNATURE] = wire._head_mac(SECRET, src, dst, headers[wire.HEADER_TIME],
                                                         headers[wire.HEADER_NONCE], length)
    return headers


def request(headers: Mapping[str, str], body: bytes = b"", *, length: int | str | None = -1,
            path: str = MESSAGE_PATH) -> bytes:
    """A raw HTTP/1.1 POST; ``length`` -1 declares ``len(body)``, None declares nothing."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == -1 else length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(port: int, data: bytes, *, close_after_send: bool = False, wait_s: float = 10.0) -> int | None:
    """Send ``data`` on a fresh connection; the answer's status, or None when there is none."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)  # not drained: a refusal comes before the node reads the body
        if close_after_send:
            await writer.drain()
            return None
        line = await asyncio.wait_for(reader.readline(), wait_s)
        return int(line.split()[1]) if line.startswith(b"HTTP/1.") else None
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()


async def slowloris(port: int, pace_s: float = 0.05, give_up_s: float = 10.0) -> tuple[int | None, float]:
    """Trickle one header byte every ``pace_s``; (status if any, seconds until the node hung up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    payload = request({"X-Slow": "a" * 4000}, b"")

    async def trickle() -> None:
        for i in range(len(payload)):
            writer.write(payload[i: i + 1])
            await asyncio.sleep(pace_s)

    feeding = asyncio.create_task(trickle())
    try:
        first = await asyncio.wait_for(reader.read(64), give_up_s)
    except (ConnectionError, asyncio.TimeoutError):
        first = b""
    finally:
        feeding.cancel()
        writer.close()
    status = int(first.split()[1]) if first.startswith(b"HTTP/1.") else None
    return status, time.monotonic() - started


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
async def node():
    transport = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, header_timeout_s=HEADER_TIMEOUT_S,
                              body_idle_timeout_s=BODY_IDLE_S, max_concurrent_bodies=4)
    endpoints = await transport.open(["server"])
    try:
        yield transport, endpoints["server"], parse_url(transport.url_of("server"))[1]
    finally:
        await transport.close()


async def deliver_one_real_message(transport: HttpTransport, endpoint, step: int) -> None:
    sender = HttpTransport(receive_timeout_s=5, secret=SECRET, nodes=NODES, retries=0,
                           peers={"server": transport.url_of("server")})
    await sender.open(["c000"])
    try:
        msg = activation(step)
        await sender.send(msg)
        got = await asyncio.wait_for(endpoint.receive(msg.key), 5)
        assert torch.equal(got.tensors["act"], msg.tensors["act"])
    finally:
        await sender.close()


# -- the fuzz -----------------------------------------------------------------------------------


def hostile_requests(rng: random.Random, bomb: bytes, replayed: bytes) -> list[tuple[str, bytes, set[int | None]]]:
    """(class, raw request, statuses it may get) for every cheap hostile request of the fuzz."""
    valid = bytes(encode(activation(step=7)))
    token = lambda n: "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789-", k=n))  # noqa: E731
    cases: list[tuple[str, bytes, set[int | None]]] = []
    for _ in range(150):
        junk = bytes(rng.randrange(33, 256) for _ in range(rng.randrange(1, 3000)))
        cases.append(("junk request line", junk + b"\r\n\r\n", {400}))
    for _ in range(150):
        headers = {f"x-{token(8)}": "".join(chr(rng.randrange(33, 127)) for _ in range(rng.randrange(1, 200)))
                   for _ in range(rng.randrange(1, 12))}
        cases.append(("garbage headers, unsigned", request(headers, os.urandom(rng.randrange(0, 2000))), {401}))
    for _ in range(100):
        src = rng.choice(["mallory", "c999", "server2", token(10), "../etc", "c000 "])
        cases.append(("unknown sender", request(sign_headers(SECRET, src.strip() + "x", "server", valid), valid), {403}))
    for _ in range(80):
        cases.append(("wrong receiver", request(sign_headers(SECRET, "c000", rng.choice(["c000", "c001", token(6)]),
                                                             valid), valid), {403}))
    for _ in range(100):
        skew = rng.choice([-1, 1]) * rng.uniform(400, 10 ** 7)
        cases.append(("stale timestamp", request(sign_headers(SECRET, "c000", "server", valid, now=time.time() + skew),
                                                 valid), {401}))
    for _ in range(100):
        headers = sign_headers(SECRET, "c000", "server", valid)
        name = rng.choice([wire.HEADER_SIGNATURE, wire.HEADER_HEAD_SIGNATURE])
        headers[name] = os.urandom(32).hex()
        if rng.random() < 0.5:  # a signature from another run's secret
            headers = sign_headers(os.urandom(32), "c000", "server", valid)
        cases.append(("bad signature", request(headers, valid), {401}))
    for _ in range(60):
        headers = sign_headers(SECRET, "c000", "server", valid)
        headers[rng.choice([wire.HEADER_TIME, wire.HEADER_NONCE, wire.HEADER_SIGNATURE])] = token(rng.randrange(1, 80))
        if rng.random() < 0.3:
            del headers[rng.choice(list(headers))]
        cases.append(("malformed or missing signature headers", request(headers, valid), {401}))
    for _ in range(20):  # gzip bombs, validly signed: refused for the encoding alone
        cases.append(("gzip bomb", request({"Content-Encoding": "gzip", **sign_headers(SECRET, "c000", "server", bomb)},
                                           bomb), {415}))
    for _ in range(60):
        encoding = rng.choice(["deflate", "br", "zstd", "identity", "gzip, gzip", "x-" + token(5), "compress"])
        cases.append(("other encodings", request({"Content-Encoding": encoding, **signed_for_length(len(bomb))},
                                                 bomb[:4096]), {415}))
    for _ in range(50):
        cases.append(("chunked, no length", request({"Transfer-Encoding": "chunked", **sign_headers(SECRET, "c000", "server", b"")},
                                                   b"400\r\n" + bytes(1024) + b"\r\n", length=None), {411}))
    for _ in range(60):
        claim = rng.choice([300 * MIB, 257 * MIB, 2 ** 40, 10 ** 15])
        headers = signed_for_length(claim) if rng.random() < 0.5 else {}
        cases.append(("oversized claim", request(headers, bytes(1024), length=claim), {413}))
    for _ in range(30):
        cases.append(("malformed Content-Length", request({}, b"x", length=rng.choice(["abc", "-1", "1e9", "0x10", "1 2"])),
                      {400}))
    for _ in range(40):
        cases.append(("claims 200 MiB, unsigned", request({}, bytes(1024), length=200 * MIB), {401}))
    for _ in range(40):
        cases.append(("replayed nonce", replayed, {409}))
    rng.shuffle(cases)
    return cases


async def test_loopback_fuzz_leaves_the_node_serving_with_bounded_memory(node, caplog):
    transport, endpoint, port = node
    rng = random.Random(11)
    bomb = gzip_bomb()
    assert len(bomb) < 300 * 1024  # ~200 KiB that would inflate to 200 MiB
    # Warm up every code path once (aiohttp, torch, the sender) before the baseline.
    await deliver_one_real_message(transport, endpoint, step=1)
    replay_body = bytes(encode(activation(step=2)))
    replayed = request(sign_headers(SECRET, "c000", "server", replay_body), replay_body)
    assert await exchange(port, replayed) == 200
    await endpoint.receive(activation(step=2).key)
    cases = hostile_requests(rng, bomb, replayed)
    gc.collect()
    rss_before = rss_bytes()

    gate = asyncio.Semaphore(32)

    async def one(data: bytes, **kwargs) -> int | None:
        async with gate:
            return await exchange(port, data, **kwargs)

    stalls = [request(signed_for_length(200 * MIB), bytes(1024), length=200 * MIB) for _ in range(10)]
    closes = [request(signed_for_length(200 * MIB), bytes(1024), length=200 * MIB) for _ in range(10)]
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                asyncio.gather(*(one(data) for _, data, _ in cases)),
                asyncio.gather(*(exchange(port, data) for data in stalls)),
                asyncio.gather(*(exchange(port, data, close_after_send=True) for data in closes)),
                asyncio.gather(*(slowloris(port) for _ in range(20))))
        elapsed = time.monotonic() - started
        cheap, stalled, _, slow = results
        await asyncio.sleep(0.3)  # let the closed bodies be noticed

        by_class: dict[str, Counter] = {}
        for (kind, _, allowed), status in zip(cases, cheap):
            by_class.setdefault(kind, Counter())[status] += 1
        for kind, statuses in sorted(by_class.items()):
            allowed = next(a for k, _, a in cases if k == kind)
            assert set(statuses) <= allowed, (kind, statuses)
        assert stalled == [408] * 10
        assert all(status is None and HEADER_TIMEOUT_S * 0.8 < took < HEADER_TIMEOUT_S + 2.5 for status, took in slow), slow
        total = len(cases) + len(stalls) + len(closes) + len(slow)
        assert total >= 1000 and elapsed < 30, (total, elapsed)

        # Still accepting a valid signed message, and memory came back.
        await deliver_one_real_message(transport, endpoint, step=3)
        gc.collect()
        rss_after = rss_bytes()
        assert rss_after - rss_before < 50 * MIB, (rss_before, rss_after)

        refusals = transport.stats.refusals
        assert refusals.by_status[400] >= 150 + 30 + 10  # junk, bad lengths, the bodies closed half-way
        assert refusals.total >= len(cases) + len(stalls) + len(closes)
        assert len(transport.stats.refused) <= 256  # the record is bounded
        assert transport._body_readers["server"].most_bodies_in_flight <= 4
        transport.stats.refusals.flush()
    node_lines = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    windows = math.ceil(elapsed / refusals.interval_s) + 1
    assert len(node_lines) <= windows * (refusals.lines_per_interval + 1), len(node_lines)
    assert any("more refusals" in r.getMessage() for r in node_lines)
    assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
    assert all(status != 500 for status in cheap)
    print(f"\nfuzz: {total} hostile requests in {elapsed:.1f} s; answers "
          f"{dict(sorted(Counter(cheap + stalled).items(), key=str))}, slowloris closed {len(slow)}; "
          f"node refusals by status {dict(sorted(refusals.by_status.items()))}; "
          f"RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB; {len(node_lines)} log lines")


# -- one behaviour each ---------------------------------------------------------------------------


async def test_claimed_length_is_never_preallocated_and_a_stalled_body_times_out(node):
    transport, endpoint, port = node
    tracemalloc.start()
    try:
        started = time.monotonic()
        statuses = await asyncio.gather(*(exchange(port, request(signed_for_length(200 * MIB), bytes(1024),
                                                                 length=200 * MIB)) for _ in range(3)))
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert statuses == [408] * 3
    assert BODY_IDLE_S * 0.8 < took < BODY_IDLE_S + 2.0
    assert peak < 8 * MIB, peak
    assert "stalled" in transport.stats.refused[-1].reason
    await deliver_one_real_message(transport, endpoint, step=1)


async def test_an_unsigned_body_is_refused_before_it_is_read(node):
    transport, endpoint, port = node
    started = time.monotonic()
    status = await exchange(port, request({}, bytes(1024), length=200 * MIB))
    assert status == 401 and time.monotonic() - started < BODY_IDLE_S  # no wait for the missing body
    stale = signed_for_length(200 * MIB, now=time.time() - 3600)
    assert await exchange(port, request(stale, bytes(1024), length=200 * MIB)) == 401
    assert "stale" in transport.stats.refused[-1].reason
    assert transport._body_readers["server"].most_bodies_in_flight == 0


async def test_a_gzip_bomb_is_refused_with_415_and_never_inflated(node, caplog):
    transport, endpoint, port = node
    bomb = gzip_bomb(64 * MIB)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.DEBUG):
            for encoding in ("gzip", "deflate", "br", "x-unknown"):
                data = request({"Content-Encoding": encoding, **sign_headers(SECRET, "c000", "server", bomb)}, bomb)
                assert await exchange(port, data) == 415
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, peak
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    await deliver_one_real_message(transport, endpoint, step=1)


async def test_chunked_bodies_and_oversized_claims_are_refused(node):
    transport, endpoint, port = node
    chunked = request({"Transfer-Encoding": "chunked", **sign_headers(SECRET, "c000", "server", b"")},
                      b"3\r\nabc\r\n0\r\n\r\n", length=None)
    assert await exchange(port, chunked) == 411
    assert await exchange(port, request(signed_for_length(300 * MIB), b"", length=300 * MIB)) == 413


async def test_slow_headers_are_cut_off(node):
    transport, endpoint, port = node
    results = await asyncio.gather(*(slowloris(port) for _ in range(5)))
    for status, took in results:
        assert status is None and took < HEADER_TIMEOUT_S + 2.0, results
    # A connection that never sends a byte is closed too.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(10), HEADER_TIMEOUT_S + 3) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2.0
    writer.close()
    await deliver_one_real_message(transport, endpoint, step=1)


async def test_concurrent_bodies_wait_for_one_of_a_few_slots(node):
    transport, endpoint, port = node
    stalls = [request(signed_for_length(MIB), bytes(100), length=MIB) for _ in range(8)]
    started = time.monotonic()
    assert await asyncio.gather(*(exchange(port, data) for data in stalls)) == [408] * 8
    reader = transport._body_readers["server"]
    assert reader.most_bodies_in_flight == 4 and reader.bodies_in_flight == 0
    assert time.monotonic() - started > 2 * BODY_IDLE_S * 0.8  # two waves of four
    await deliver_one_real_message(transport, endpoint, step=1)


async def test_a_blocked_event_loop_is_not_blamed_on_a_slow_sender():
    """The node's own loop stalls (a long compute) mid-body; the idle timeout counts only
    responsive waiting, so the sender is not refused."""
    transport = HttpTransport(receive_timeout_s=10, secret=SECRET, nodes=NODES, body_idle_timeout_s=2.0)
    endpoints = await transport.open(["server"])
    try:
        port = parse_url(transport.url_of("server"))[1]
        msg = activation(step=4)
        body = bytes(encode(msg))
        data = request(sign_headers(SECRET, "c000", "server", body), body)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data[:-100])
        await asyncio.sleep(0.3)  # the node is now waiting for the rest
        time.sleep(2.5)  # blocks this loop (and the node in it) past the idle timeout
        await asyncio.sleep(0.5)
        writer.write(data[-100:])
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert line.split()[1] == b"200", line
        assert torch.equal((await endpoints["server"].receive(msg.key)).tensors["act"], msg.tensors["act"])
    finally:
        await transport.close()


def test_refusal_log_is_rate_limited_and_bounded(caplog):
    now = [0.0]
    refusals = RefusalLog(logging.getLogger(LOGGER), keep=10, lines_per_interval=5, interval_s=10.0,
                          clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(1000):
            refusals.record("server", 401 if i % 2 else 415, f"reason {i}\nsecond line", "10.0.0.1", "x" * 500)
        assert len(caplog.records) == 5
        now[0] = 10.5
        refusals.record("server", 403, "late")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7  # 5 + the summary of the first interval + the first line of the next
    assert lines[5].startswith("995 more refusals in the last 10 s") and "498 x HTTP 401" in lines[5]
    assert "late" in lines[6]
    assert all("\n" not in line and len(line) < 400 for line in lines)
    assert refusals.total == 1001 and refusals.suppressed == 995
    assert refusals.by_status == Counter({401: 500, 415: 500, 403: 1})
    assert len(refusals.recent) == 10 and refusals.recent[-1].reason == "late"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusals.flush()  # nothing suppressed since: nothing to say
    assert not caplog.records
