"""HTTP transport: every node is an aiohttp server, and a client session to its peers.

Same :class:`~transports.base.Transport` interface as ``memory``. One instance can host several
nodes (each gets its own aiohttp site and port; messages between them still cross loopback
HTTP), or only the node of the current process, with the others listed in a peer table.

Sending is a signed ``POST /p2pgan/v1/message`` that returns once the message sits in the
receiver's mailbox. A failed attempt (connection refused, timeout, 5xx) is retried with backoff,
at most ``retries`` times and never past the send deadline; message ids make a redelivery
idempotent. A peer that stays unreachable fails the run with a :class:`PeerError` naming it.
See :mod:`transports.wire` for the format and the signature.

A node refuses a hostile request before reading its body (see :mod:`transports.middlewares`):
no decompression ever, no chunked bodies, a declared length within the limit, a valid head
signature; a slow header or body is timed out, and refusals are logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import secrets
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from p2pgan.protocol.messages import Message, MessageKey
from p2pgan.errors import PeerError
from p2pgan.protocol.endpoint import Transport
from transports.middlewares import BodyLimits, Refusal, RefusalLog, ServerLog, SignedBodyReader, node_middlewares
from p2pgan.protocol.specs import MessageSpecs
from transports.wire import HEADER_FROM, ReplayGuard, WireError, check_protocol, decode, encode, sign_headers

MESSAGE_PATH = "/p2pgan/v1/message"
PING_PATH = "/p2pgan/v1/ping"
log = logging.getLogger("p2pgan.transport.http")
MAX_HEADERS = 32
"""Headers a request may carry (ours need about a dozen); bounds what a slow header can make us buffer."""
MAX_HEADER_LINE = 4096

Rendezvous = Callable[[dict[str, str]], Awaitable[Mapping[str, str]]]
"""Given the URLs of the nodes this process just bound, return the full peer table."""


class PeerRefusedError(PeerError):
    """The peer answered, but refused the request (4xx): retrying will not help."""


@dataclass
class HttpStats:
    """Counters for tests, benchmarks and the log."""

    sent: int = 0
    sent_bytes: int = 0
    retries: int = 0
    received: int = 0
    received_bytes: int = 0
    duplicates: int = 0
    refusals: RefusalLog = field(default_factory=lambda: RefusalLog(log))
    """Counts of every refused request by status, the latest few, and the rate-limited log."""

    @property
    def refused(self) -> deque[Refusal]:
        """(node, status, reason, peer) of the latest refused requests (bounded)."""
        return self.refusals.recent


class _NodeSite:
    """One local node's aiohttp server."""

    def __init__(self, node_id: str, runner: web.AppRunner, url: str) -> None:
        self.node_id = node_id
        self.runner = runner
        self.url = url
        self.delivered: OrderedDict[MessageKey, None] = OrderedDict()


def parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"peer address {url!r} must look like http://HOST:PORT")
    return parts.hostname, parts.port


class HttpTransport(Transport):
    """Messages over signed HTTP requests between aiohttp servers.

    Options (``create_transport("http", ...)``):

    ``host``/``port``: where local nodes listen; with several local nodes and ``port > 0`` they
    take consecutive ports. ``listen`` maps a node id to its own ``(host, port)`` instead.
    ``secret``: the run's HMAC key (bytes); a fresh random one when omitted, which is right only
    when every node lives in this transport. ``peers``: ``{node: "http://host:port"}`` for remote
    nodes known in advance. ``rendezvous``: an async callback given the local URLs after binding
    that returns the full peer table (used by the multi-process coordinator). ``nodes``: every node
    id of the run (requests from others are refused); defaults to local ids plus peers.
    ``send_timeout_s``: deadline for one message to be accepted (defaults to
    ``receive_timeout_s``, else 60 s). ``replay_window_s``: accepted clock skew and nonce memory.
    ``check_messages``: apply the split-GAN protocol checks to received messages.
    ``header_timeout_s``: a connection whose request headers are not complete this long after it
    opened (or after its previous answer) is closed. ``body_idle_timeout_s`` (default: the send
    timeout, at most 30 s): a body that stalls this long is refused (408); a whole body gets at most
    the send timeout. ``max_concurrent_bodies``: bodies read at once by all local nodes together
    (memory stays under this many times ``max_message_mb``); more wait for a slot.
    """

    name = "http"

    def __init__(self, receive_timeout_s: float | None = None, host: str = "127.0.0.1", port: int = 0,
                 retries: int = 3, max_message_mb: float = 256.0, *, secret: bytes | None = None,
                 peers: Mapping[str, str] | None = None, listen: Mapping[str, tuple[str, int]] | None = None,
                 rendezvous: Rendezvous | None = None, nodes: Iterable[str] | None = None,
                 send_timeout_s: float | None = None, replay_window_s: float = 300.0,
                 check_messages: bool = True, header_timeout_s: float = 20.0,
                 body_idle_timeout_s: float | None = None, max_concurrent_bodies: int = 8,
                 message_specs: MessageSpecs | None = None) -> None:
        super().__init__()
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if max_concurrent_bodies < 1:
            raise ValueError("max_concurrent_bodies must be >= 1")
        self.receive_timeout_s = receive_timeout_s
        self.message_specs = message_specs
        """The run program's messages; received iteration messages must be one of them."""
        self.host = host
        self.port = port
        self.retries = retries
        self.max_message_bytes = int(max_message_mb * 2**20)
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        if len(self.secret) < 16:
            raise ValueError("the run secret must be at least 16 bytes")
        self.peers: dict[str, str] = dict(peers or {})
        self._listen = dict(listen or {})
        self._rendezvous = rendezvous
        self._nodes = set(nodes) if nodes is not None else None
        self.send_timeout_s = send_timeout_s if send_timeout_s is not None else (receive_timeout_s or 60.0)
        idle_s = body_idle_timeout_s if body_idle_timeout_s is not None else min(self.send_timeout_s, 30.0)
        for name, value in (("header_timeout_s", header_timeout_s), ("body_idle_timeout_s", idle_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        self.header_timeout_s = header_timeout_s
        # A sender gives up after its send timeout, so a body still arriving later is of no use.
        self._body_limits = BodyLimits(idle_timeout_s=idle_s, deadline_s=self.send_timeout_s,
                                       slice_s=min(1.0, idle_s))
        self._body_slots = asyncio.Semaphore(max_concurrent_bodies)
        self._body_readers: dict[str, SignedBodyReader] = {}
        self._replay = ReplayGuard(replay_window_s)
        self._check_messages = check_messages
        self._sites: dict[str, _NodeSite] = {}
        self._session: aiohttp.ClientSession | None = None
        self._failure: BaseException | None = None
        self._abort: asyncio.Event | None = None
        self._closed = False
        self._ready: set[str] = set()
        self.stats = HttpStats()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def local_urls(self) -> dict[str, str]:
        return {node: site.url for node, site in self._sites.items()}

    @property
    def known_nodes(self) -> set[str]:
        if self._nodes is not None:
            return self._nodes
        return set(self.peers) | set(self._sites)

    def url_of(self, node_id: str) -> str:
        return self.peers[node_id] if node_id in self.peers else self._sites[node_id].url

    async def _start(self, local_node_ids: list[str]) -> None:
        self._abort = asyncio.Event()
        new = [n for n in local_node_ids if n not in self._sites]
        try:
            for index, node_id in enumerate(new):
                host, port = self._listen.get(node_id, (self.host, self.port + index if self.port else 0))
                self._sites[node_id] = await self._serve(node_id, host, port)
            for node_id, site in self._sites.items():
                self.peers.setdefault(node_id, site.url)
            if self._session is None:
                # Idle connections are dropped well before a peer's header timeout closes them.
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300,
                                                   keepalive_timeout=min(15.0, self.header_timeout_s / 2)),
                    auto_decompress=False)
            if self._rendezvous is not None and new:
                table = await self._rendezvous(self.local_urls)
                for node_id, url in table.items():
                    parse_url(url)
                    if node_id not in self._sites:
                        self.peers[node_id] = url
        except BaseException:
            await self.close()
            raise

    async def _serve(self, node_id: str, host: str, port: int) -> _NodeSite:
        refusals = self.stats.refusals
        app = web.Application(client_max_size=self.max_message_bytes, middlewares=node_middlewares(
            node_id, self.secret, lambda: self.known_nodes, self._replay, self.max_message_bytes, refusals))
        bodies = SignedBodyReader(node_id, self.secret, lambda: self.known_nodes, self._body_limits, self._body_slots)
        self._body_readers[node_id] = bodies
        app.router.add_post(MESSAGE_PATH, functools.partial(self._handle_message, node_id, bodies))
        app.router.add_post(PING_PATH, functools.partial(self._handle_ping, node_id, bodies))
        # auto_decompress=False: the parser hands over the raw bytes, never inflating a body (a
        # Content-Encoding is refused anyway). The keep-alive timer also runs from the moment a
        # connection opens until its request headers are complete: the slow-header timeout.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                               keepalive_timeout=self.header_timeout_s, lingering_time=min(2.0, self.header_timeout_s),
                               max_headers=MAX_HEADERS, max_line_size=MAX_HEADER_LINE, max_field_size=MAX_HEADER_LINE,
                               logger=ServerLog(node_id, refusals))
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise PeerError(node_id, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        site = web.SockSite(runner, sock)
        await site.start()
        bound_port = sock.getsockname()[1]
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        if ":" in url_host and not url_host.startswith("["):
            url_host = f"[{url_host}]"
        return _NodeSite(node_id, runner, f"http://{url_host}:{bound_port}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stats.refusals.flush()
        if self._session is not None:
            await self._session.close()
            self._session = None
        for site in self._sites.values():
            await site.runner.cleanup()

    def fail_all(self, error: BaseException) -> None:
        self._failure = error
        if self._abort is not None:
            self._abort.set()
        super().fail_all(error)

    # -- sending ------------------------------------------------------------------------------

    async def _deliver(self, msg: Message) -> None:
        body = encode(msg)
        if len(body) > self.max_message_bytes:
            raise PeerError(msg.dst, f"message {msg.msg_id} is {len(body) / 2**20:.1f} MiB, over the "
                                     f"{self.max_message_bytes / 2**20:g} MiB limit (transport.max_message_mb)")
        await self._post(msg.src, msg.dst, MESSAGE_PATH, body, what=f"message {msg.msg_id}")
        self.stats.sent += 1
        self.stats.sent_bytes += len(body)

    async def ping(self, src: str, dst: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """One signed no-op request to ``dst``; returns its answer (``{"node", "ready"}``)."""
        return await self._post(src, dst, PING_PATH, b"", what="ping", deadline_s=timeout_s, attempts=1)

    async def wait_until_ready(self, src: str, peers: Sequence[str], deadline_s: float,
                               need_ready: bool = False) -> None:
        """Poll ``peers`` until each answers a signed ping (and says it is ready, if asked).

        Raises :class:`PeerError` naming the first peer still missing at the deadline, or at once
        when a peer refuses the ping (e.g. a different secret).
        """
        deadline = time.monotonic() + deadline_s

        async def one(peer: str) -> None:
            problem = "never answered"
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(peer, f"not reachable at {self.peers.get(peer)} within {deadline_s:g} s ({problem})")
                try:
                    answer = await self.ping(src, peer, min(left, 5.0))
                except PeerRefusedError:
                    raise
                except PeerError as exc:
                    problem = str(exc).partition(": ")[2]
                else:
                    if answer.get("ready") or not need_ready:
                        return
                    problem = "up but not ready"
                await asyncio.sleep(min(0.25, max(deadline - time.monotonic(), 0)))

        await asyncio.gather(*(one(peer) for peer in peers))

    def mark_ready(self, node_id: str) -> None:
        """Pings to ``node_id`` answer ``ready: true`` from now on."""
        self._ready.add(node_id)

    async def _post(self, src: str, dst: str, path: str, body: bytes | bytearray, what: str,
                    deadline_s: float | None = None, attempts: int | None = None) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        if self._session is None:
            raise RuntimeError("the http transport is not open")
        url = self.peers.get(dst)
        if url is None:
            raise PeerError(dst, "no address known for this node (missing from the peer table)")
        started = time.monotonic()
        deadline = started + (deadline_s if deadline_s is not None else self.send_timeout_s)
        attempt, last_problem = 0, ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            headers = sign_headers(self.secret, src, dst, body)
            try:
                async with self._session.post(url + path, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=remaining)) as response:
                    raw = await response.read()
                    if 200 <= response.status < 300:
                        try:
                            answer = json.loads(raw)
                        except ValueError:
                            answer = None
                        return answer if isinstance(answer, dict) else {}
                    text = raw[:300].decode("utf-8", errors="replace")
                    last_problem = f"HTTP {response.status} {text.strip()}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        raise PeerRefusedError(dst, f"refused {what}: {last_problem}")
            except PeerError:
                raise
            except asyncio.TimeoutError:
                last_problem = f"no answer within {remaining:.1f} s"
            except aiohttp.ClientError as exc:
                last_problem = _describe(exc)
            except OSError as exc:
                last_problem = exc.strerror or str(exc)
            attempt += 1
            if attempt > (self.retries if attempts is None else attempts - 1):
                break
            self.stats.retries += 1
            pause = min(0.1 * 2 ** min(attempt - 1, 6), 2.0, max(deadline - time.monotonic(), 0.0))
            if pause > 0 and await self._aborted_within(pause):
                raise self._failure  # type: ignore[misc]
        elapsed = time.monotonic() - started
        tries = f"{attempt} attempt{'s' if attempt != 1 else ''}"
        raise PeerError(dst, f"unreachable at {url}: {what} not delivered after {tries} in {elapsed:.1f} s "
                             f"({last_problem or 'deadline passed'})")

    async def _aborted_within(self, seconds: float) -> bool:
        assert self._abort is not None
        try:
            await asyncio.wait_for(self._abort.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return self._failure is not None

    # -- receiving ----------------------------------------------------------------------------

    async def _handle_message(self, node_id: str, bodies: SignedBodyReader, request: web.Request) -> web.Response:
        # The middlewares have checked the framing, the length and the head signature; a WireError
        # raised here becomes a refusal there.
        body = await bodies.read(request)
        msg = decode(body, share=True)  # the body buffer is ours alone: tensors view it
        sender = request.headers[HEADER_FROM]
        if msg.src != sender:
            raise WireError(403, f"node {sender!r} cannot send as {msg.src!r}")
        if self._check_messages:
            check_protocol(msg, node_id, self.known_nodes, self.message_specs)
        elif msg.dst != node_id:
            raise WireError(403, f"message for {msg.dst!r} sent to node {node_id!r}")
        site = self._sites[node_id]
        self.stats.received += 1
        self.stats.received_bytes += len(body)
        if msg.key in site.delivered:
            self.stats.duplicates += 1
            return web.json_response({"status": "duplicate", "id": msg.msg_id})
        site.delivered[msg.key] = None
        while len(site.delivered) > 100_000:
            site.delivered.popitem(last=False)
        self._mailboxes[node_id].put(msg)
        return web.json_response({"status": "ok", "id": msg.msg_id})

    async def _handle_ping(self, node_id: str, bodies: SignedBodyReader, request: web.Request) -> web.Response:
        if await bodies.read(request):
            raise WireError(400, "a ping has an empty body")
        return web.json_response({"status": "ok", "node": node_id, "ready": node_id in self._ready})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed ({exc.os_error.strerror or exc.os_error})" if exc.os_error else "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "peer closed the connection"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


__all__ = ["HttpTransport", "HttpStats", "PeerRefusedError", "MESSAGE_PATH", "PING_PATH", "parse_url"]
