"""The guards of an HTTP node: aiohttp middlewares that refuse a hostile request before any body
byte is read, the bounded reader for the bodies that get past them, and the refusal record.

Order on a request (outermost first), one job each:

``map_errors``      turns every refusal into a 4xx answer, one rate-limited log line and an entry
                    in a bounded record; anything unexpected into a one-line 500, no traceback.
``check_framing``   no ``Content-Encoding`` (the server never decompresses: 415) and no
                    ``Transfer-Encoding`` (a body must declare its length: 411).
``limit_size``      a declared length over the node's limit: 413.
``authenticate``    the head signature (sender, receiver, timestamp, nonce, declared length), the
                    timestamp window and the nonce: 401/403/409.

Only then does the handler call :class:`SignedBodyReader`, which reads at most the signed length in
bounded chunks (never preallocating it), with an idle and a total timeout, while holding one of a
few process-wide body slots, and checks the body signature.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from transports.wire import HEADER_FROM, ReplayGuard, WireError, verify_head, verify_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
KnownNodes = Callable[[], Iterable[str]]

MAX_REASON_CHARS = 200
RELEASE_AFTER_BYTES = 1 << 20
"""A refused body at least this big is followed by handing free heap pages back to the OS."""
READ_CHUNK_BYTES = 1 << 20


# -- the refusal record -----------------------------------------------------------------------


class Refusal(NamedTuple):
    node: str
    status: int
    reason: str
    peer: str


class RefusalLog:
    """Counts every refusal, keeps the last ``keep`` and logs at most ``lines_per_interval`` lines
    per ``interval_s``; the rest are summed into one line when the interval ends (or at
    :meth:`flush`), so a flood of hostile requests cannot flood the log or grow memory."""

    def __init__(self, logger: logging.Logger, keep: int = 256, lines_per_interval: int = 20,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.recent: deque[Refusal] = deque(maxlen=keep)
        self.by_status: Counter[int] = Counter()
        self.total = 0
        self.suppressed = 0
        """Refusals never logged on a line of their own (all time)."""
        self.lines_per_interval = lines_per_interval
        self.interval_s = interval_s
        self._clock = clock
        self._window_start = clock()
        self._window_lines = 0
        self._window_suppressed: Counter[int] = Counter()

    def record(self, node: str, status: int, reason: str, peer: str = "?", claimed: str = "?",
               level: int = logging.WARNING) -> None:
        reason = reason.replace("\n", " ")[:MAX_REASON_CHARS]
        self.total += 1
        self.by_status[status] += 1
        self.recent.append(Refusal(node, status, reason, peer))
        if self._clock() - self._window_start >= self.interval_s:
            self.flush()
        if self._window_lines < self.lines_per_interval:
            self._window_lines += 1
            self.logger.log(level, "node %s refused a request from %s (claims %r): HTTP %d %s",
                            node, peer, claimed[:64], status, reason)
        else:
            self.suppressed += 1
            self._window_suppressed[status] += 1

    def flush(self) -> None:
        """Log the summary of the current interval's unlogged refusals (if any) and start a new one."""
        now = self._clock()
        if self._window_suppressed:
            count = sum(self._window_suppressed.values())
            statuses = ", ".join(f"{n} x HTTP {s}" for s, n in sorted(self._window_suppressed.items()))
            self.logger.warning("%d more refusals in the last %.0f s not logged one by one (%s)",
                                count, now - self._window_start, statuses)
        self._window_start = now
        self._window_lines = 0
        self._window_suppressed = Counter()


def _peer(request: web.BaseRequest) -> str:
    return request.remote or "?"


def refusal_response(status: int, reason: str) -> web.Response:
    response = web.json_response({"status": "refused", "reason": reason[:MAX_REASON_CHARS]}, status=status)
    response.force_close()  # a refused peer gets no kept-alive connection
    return response


class ServerLog(logging.LoggerAdapter):
    """Stands in for aiohttp's server logger on one node: a request the HTTP parser rejects (bad
    request line, header or length) becomes one rate-limited refusal line, never a traceback."""

    def __init__(self, node_id: str, refusals: RefusalLog) -> None:
        super().__init__(refusals.logger, {})
        self._node_id = node_id
        self._refusals = refusals

    def log(self, level: int, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else (sys.exc_info()[1] if exc_info else None)
        peer = str(args[0]) if args else "?"
        if isinstance(exc, HttpProcessingError):
            status = exc.code if 400 <= exc.code < 500 else 400
            self._refusals.record(self._node_id, status, f"malformed request ({exc.message or type(exc).__name__})",
                                  peer)
        elif exc is not None:
            self._refusals.record(self._node_id, 500, f"internal error ({type(exc).__name__}: {exc})", peer,
                                  level=logging.ERROR)
            self.logger.debug("traceback of the internal error", exc_info=exc)
        else:
            self.logger.log(level, msg, *args, **kwargs)


# -- middlewares --------------------------------------------------------------------------------


def map_errors(node_id: str, refusals: RefusalLog) -> Middleware:
    """Every refusal becomes a 4xx JSON answer plus a record; nothing escapes as a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:  # the router's own 404/405
            raise
        except WireError as exc:
            status, reason = exc.status, exc.reason
        except (web.RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            status, reason = 400, f"incomplete or malformed body ({type(exc).__name__})"
        except Exception as exc:  # a bug here must not hand a peer a traceback; the log keeps it at debug
            refusals.record(node_id, 500, f"internal error ({type(exc).__name__}: {exc})", _peer(request),
                            request.headers.get(HEADER_FROM, "?"), level=logging.ERROR)
            refusals.logger.debug("traceback of the internal error", exc_info=exc)
            response = web.json_response({"status": "error", "reason": "internal error"}, status=500)
            response.force_close()
            return response
        refusals.record(node_id, status, reason, _peer(request), request.headers.get(HEADER_FROM, "?"))
        return refusal_response(status, reason)

    return middleware


def _guard(check: Callable[[web.Request], None]) -> Middleware:
    """A middleware that runs ``check`` on a routed request (404/405 stay the router's answer)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            check(request)
        return await handler(request)

    return middleware


def check_framing() -> Middleware:
    """Bodies travel as they are with a declared length: any encoding or chunking is refused."""

    def check(request: web.Request) -> None:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING)
        if encoding is not None:
            raise WireError(415, f"Content-Encoding {encoding[:32]!r} is not accepted (bodies are sent as they are)")
        if hdrs.TRANSFER_ENCODING in request.headers:
            raise WireError(411, "a body needs a Content-Length (Transfer-Encoding is not accepted)")

    return _guard(check)


def limit_size(max_bytes: int) -> Middleware:
    def check(request: web.Request) -> None:
        length = request.content_length or 0
        if length > max_bytes:
            raise WireError(413, f"body of {length} bytes is over the {max_bytes} byte limit")

    return _guard(check)


def authenticate(node_id: str, secret: bytes, known_nodes: KnownNodes, replay: ReplayGuard) -> Middleware:
    """The head signature, timestamp and nonce, checked on the headers alone."""

    def check(request: web.Request) -> None:
        signed = verify_head(secret, request.headers, node_id, known_nodes(), request.content_length or 0)
        replay.check(signed)

    return _guard(check)


def node_middlewares(node_id: str, secret: bytes, known_nodes: KnownNodes, replay: ReplayGuard,
                     max_body_bytes: int, refusals: RefusalLog) -> list[Middleware]:
    return [map_errors(node_id, refusals), check_framing(), limit_size(max_body_bytes),
            authenticate(node_id, secret, known_nodes, replay)]


# -- the body -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyLimits:
    idle_timeout_s: float
    """Longest wait for the next bytes of a body."""
    deadline_s: float
    """Longest wait for a whole body (and for a body slot)."""
    slice_s: float = 1.0


async def wait_responsive(future: asyncio.Future[Any], limit_s: float, slice_s: float) -> tuple[bool, float]:
    """Wait for ``future`` up to ``limit_s`` seconds of *responsive* waiting; returns (done, waited).

    Like the mailbox's receive deadline: if this process's event loop was blocked (a long
    compute), a slice still counts only its own length, so a local stall is never blamed on the
    peer. ``asyncio.wait`` does not cancel ``future``; the caller decides what to do with it.
    """
    loop = asyncio.get_running_loop()
    waited = 0.0
    while waited < limit_s:
        step = min(slice_s, limit_s - waited)
        started = loop.time()
        done, _ = await asyncio.wait({future}, timeout=step)
        waited += min(loop.time() - started, step)
        if done:
            return True, waited
    return future.done(), waited


class SignedBodyReader:
    """Reads the body of a request whose head signature already passed.

    At most ``slots`` bodies (shared by every node of the transport) are read at once, so memory
    is bounded by slots x the size limit; the claimed length is never allocated up front, only
    what arrives, in chunks of at most 1 MiB; a body that stalls for ``idle_timeout_s`` or takes
    longer than ``deadline_s`` is refused with 408; the body signature is checked last.
    """

    def __init__(self, node_id: str, secret: bytes, known_nodes: KnownNodes, limits: BodyLimits,
                 slots: asyncio.Semaphore) -> None:
        self._node_id = node_id
        self._secret = secret
        self._known_nodes = known_nodes
        self.limits = limits
        self._slots = slots
        self.bodies_in_flight = 0
        self.most_bodies_in_flight = 0

    async def read(self, request: web.Request) -> bytearray:
        length = request.content_length or 0
        body = bytearray()
        if length:
            await self._take_slot()
            self.bodies_in_flight += 1
            self.most_bodies_in_flight = max(self.most_bodies_in_flight, self.bodies_in_flight)
            try:
                await self._read_into(body, request.content, length)
            except BaseException:
                _drop(body)
                raise
            finally:
                self.bodies_in_flight -= 1
                self._slots.release()
        try:
            verify_headers(self._secret, request.headers, self._node_id, self._known_nodes(), body)
        except WireError:
            _drop(body)
            raise
        return body

    async def _take_slot(self) -> None:
        acquire = asyncio.ensure_future(self._slots.acquire())
        done, _ = await wait_responsive(acquire, self.limits.deadline_s, self.limits.slice_s)
        if done:
            acquire.result()
            return
        acquire.cancel()
        # A grant that races with the cancel must not leak the slot.
        acquire.add_done_callback(lambda task: None if task.cancelled() else self._slots.release())
        raise WireError(503, f"busy: no body slot free within {self.limits.deadline_s:g} s")

    async def _read_into(self, body: bytearray, stream: StreamReader, length: int) -> None:
        limits, waited_total = self.limits, 0.0
        while len(body) < length:
            left = limits.deadline_s - waited_total
            wait_s = min(limits.idle_timeout_s, left)
            read = asyncio.ensure_future(stream.read(min(length - len(body), READ_CHUNK_BYTES)))
            try:
                done, waited = await wait_responsive(read, wait_s, limits.slice_s)
            finally:
                if not read.done():
                    read.cancel()
            waited_total += waited
            if not done:
                what = f"stalled for {wait_s:g} s" if wait_s == limits.idle_timeout_s else \
                    f"not complete within {limits.deadline_s:g} s"
                raise WireError(408, f"body {what} ({len(body)} of {length} bytes)")
            chunk = read.result()
            if not chunk:
                raise WireError(400, f"incomplete body ({len(body)} of {length} bytes)")
            body += chunk


def _drop(body: bytearray) -> None:
    """Empty a refused body and, if it was big, hand the freed heap back to the OS."""
    big = len(body) >= RELEASE_AFTER_BYTES
    del body[:]
    if big:
        release_memory()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_memory() -> None:
    """Return free heap pages to the OS (glibc keeps freed buffers under its mmap threshold)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


__all__ = ["BodyLimits", "Refusal", "RefusalLog", "ServerLog", "SignedBodyReader", "authenticate", "check_framing",
           "limit_size", "map_errors", "node_middlewares", "refusal_response", "release_memory", "wait_responsive"]
