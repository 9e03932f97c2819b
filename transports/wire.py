"""The HTTP transport's wire format, request signing and the checks a receiver applies.

A message travels as one binary body::

    offset 0   b"P2PGAN" + version byte (1) + one zero byte         8 bytes
    offset 8   header length H, uint32 little-endian                  4 bytes
    offset 12  header: H bytes of UTF-8 JSON (see below)
               zero padding up to a multiple of 64
               tensor 0 data (C order, little-endian), zero padding to a multiple of 64
               tensor 1 data ...                                     (in header order)

The header is a JSON object with exactly the keys ``v, id, kind, src, dst, round, step, phase,
tensors, meta``; ``tensors`` is a list of ``{"name", "dtype", "shape"}``. The body length must be
exactly what the header describes, so a truncated body, trailing bytes, or a dtype/shape that does
not match the data is refused. Nothing received is ever unpickled: tensors are rebuilt with
``torch.frombuffer`` over a private copy of the raw bytes (never pickle, never ``torch.load``).

Every request is signed twice with the run's secret (HMAC-SHA256): a *head* signature over a
canonical string naming the sender, the receiver, a millisecond timestamp, a random nonce and the
body length, and a *body* signature over the same fields followed by the body. The receiver checks
the head signature, the timestamp window and the nonce (a replay) before it reads one body byte
(:func:`verify_head`), so a stranger cannot make it buffer anything; then it reads exactly the
signed length, checks the body signature (:func:`verify_headers`), decodes and validates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Message, MessageKey, MessageKind, Phase
from p2pgan.protocol.specs import MessageSpecs

from p2pgan.ids import SERVER_ID

WIRE_VERSION = 1
MAGIC = b"P2PGAN" + bytes([WIRE_VERSION, 0])
PREFIX = len(MAGIC) + 4
ALIGN = 64
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
MAX_DIMS = 8
MAX_META = 64
MAX_META_STRING = 1024
MAX_ROUND = 10_000_000
MAX_STEP = 1_000_000_000
SIGNATURE_CONTEXT = b"p2pgan-http-v1\n"
HEAD_SIGNATURE_CONTEXT = b"p2pgan-http-v1-head\n"

NODE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
META_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
NONCE = re.compile(r"^[0-9a-f]{32}$")
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
TIMESTAMP = re.compile(r"^[0-9]{1,16}$")

HEADER_FROM = "X-P2PGan-From"
HEADER_TO = "X-P2PGan-To"
HEADER_TIME = "X-P2PGan-Timestamp"
HEADER_NONCE = "X-P2PGan-Nonce"
HEADER_SIGNATURE = "X-P2PGan-Signature"
HEADER_HEAD_SIGNATURE = "X-P2PGan-Head-Signature"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})
_HEADER_KEYS = frozenset({"v", "id", "kind", "src", "dst", "round", "step", "phase", "tensors", "meta"})
_TENSOR_KEYS = frozenset({"name", "dtype", "shape"})


class WireError(Exception):
    """A request the receiver refuses; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _as_little_endian_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's data as a flat byte view (no copy when already contiguous on CPU)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:  # pragma: no cover - big-endian hosts
        flat = flat.view(torch.uint8).reshape(-1, flat.element_size()).flip(1).contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def encode(msg: Message) -> bytearray:
    """Serialise ``msg`` (header + raw tensor bytes) into one buffer."""
    specs, datas = [], []
    for name, tensor in msg.tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"message {msg.msg_id}: tensor {name!r} is {type(tensor).__name__}, not a tensor")
        dtype = DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise TypeError(f"message {msg.msg_id}: tensor {name!r} has unsupported dtype {tensor.dtype}")
        specs.append({"name": name, "dtype": dtype, "shape": list(tensor.shape)})
        datas.append(_as_little_endian_bytes(tensor))
    header = json.dumps({
        "v": WIRE_VERSION, "id": msg.msg_id, "kind": msg.kind.value, "src": msg.src, "dst": msg.dst,
        "round": msg.round, "step": msg.step, "phase": msg.phase.value, "tensors": specs, "meta": dict(msg.meta),
    }, separators=(",", ":"), allow_nan=True).encode("utf-8")
    offset = _aligned(PREFIX + len(header))
    total = offset + sum(_aligned(d.nbytes) for d in datas)
    buf = bytearray(total)
    buf[: len(MAGIC)] = MAGIC
    struct.pack_into("<I", buf, len(MAGIC), len(header))
    buf[PREFIX: PREFIX + len(header)] = header
    view = memoryview(buf)
    for data in datas:
        view[offset: offset + data.nbytes] = data.cast("B")
        offset += _aligned(data.nbytes)
    return buf


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise WireError(400, f"header repeats key {key!r}")
        out[key] = value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(body: bytes | bytearray | memoryview, share: bool = False) -> Message:
    """Parse and validate one message body. Raises :class:`WireError` (400) on anything malformed.

    ``share``: the tensors may view ``body`` directly (it must be a private, writable buffer the
    caller hands over, e.g. a freshly received request body); otherwise each tensor gets a copy.
    """
    body = memoryview(body).cast("B")
    share = share and not body.readonly
    if len(body) < PREFIX:
        raise WireError(400, f"body of {len(body)} bytes is too short for a message")
    if bytes(body[: len(MAGIC)]) != MAGIC:
        raise WireError(400, "not a p2pgan message (bad magic or version)")
    (header_len,) = struct.unpack_from("<I", body, len(MAGIC))
    if header_len == 0 or header_len > MAX_HEADER_BYTES:
        raise WireError(400, f"header length {header_len} out of range (1..{MAX_HEADER_BYTES})")
    if PREFIX + header_len > len(body):
        raise WireError(400, f"body truncated: header says {header_len} header bytes, only {len(body) - PREFIX} follow")
    try:
        header = json.loads(bytes(body[PREFIX: PREFIX + header_len]).decode("utf-8"),
                            object_pairs_hook=_no_duplicate_keys)
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(400, f"header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise WireError(400, "header must be a JSON object")
    if set(header) != _HEADER_KEYS:
        missing, extra = sorted(_HEADER_KEYS - set(header)), sorted(set(header) - _HEADER_KEYS)
        raise WireError(400, f"header keys wrong (missing {missing}, unexpected {extra})")
    if header["v"] != WIRE_VERSION or not _is_int(header["v"]):
        raise WireError(400, f"unsupported wire version {header['v']!r}")
    try:
        kind = MessageKind(header["kind"])
    except (ValueError, TypeError):
        raise WireError(400, f"unknown message kind {header['kind']!r}") from None
    try:
        phase = Phase(header["phase"])
    except (ValueError, TypeError):
        raise WireError(400, f"unknown phase {header['phase']!r}") from None
    for field in ("src", "dst"):
        if not isinstance(header[field], str) or not NODE_ID.match(header[field]):
            raise WireError(400, f"{field} {header[field]!r} is not a valid node id")
    round_, step = header["round"], header["step"]
    if not _is_int(round_) or not 0 <= round_ <= MAX_ROUND:
        raise WireError(400, f"round {round_!r} out of range (0..{MAX_ROUND})")
    if not _is_int(step) or not ROUND_LEVEL_STEP <= step <= MAX_STEP:
        raise WireError(400, f"step {step!r} out of range ({ROUND_LEVEL_STEP}..{MAX_STEP})")
    key = MessageKey(kind, header["src"], header["dst"], round_, step, phase)
    if header["id"] != str(key):
        raise WireError(400, f"message id {header['id']!r} does not match its fields ({key})")
    meta = _check_meta(header["meta"])
    specs = header["tensors"]
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireError(400, f"tensors must be a list of at most {MAX_TENSORS} entries")
    offset = _aligned(PREFIX + header_len)
    if any(body[PREFIX + header_len: min(offset, len(body))]):
        raise WireError(400, "non-zero padding after the header")
    layout: list[tuple[str, torch.dtype, tuple[int, ...], int, int]] = []
    for spec in specs:
        name, dtype, shape, nbytes = _check_tensor_spec(spec)
        if any(name == seen[0] for seen in layout):
            raise WireError(400, f"tensor {name!r} appears twice")
        layout.append((name, dtype, shape, offset, nbytes))
        offset += _aligned(nbytes)
    if offset != len(body):
        raise WireError(400, f"header/body mismatch: the header describes {offset} bytes, the body has {len(body)}")
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, start, nbytes in layout:
        if any(body[start + nbytes: start + _aligned(nbytes)]):
            raise WireError(400, f"non-zero padding after tensor {name!r}")
        tensors[name] = _tensor_from(body, dtype, shape, start, nbytes, share)
    return Message(kind, header["src"], header["dst"], round_, step, phase, tensors, meta)


def _check_meta(meta: object) -> dict[str, str | int | float]:
    if not isinstance(meta, dict) or len(meta) > MAX_META:
        raise WireError(400, f"meta must be an object with at most {MAX_META} entries")
    for key, value in meta.items():
        if not META_KEY.match(key):
            raise WireError(400, f"meta key {key!r} is not allowed")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise WireError(400, f"meta {key!r} must be a string or a number, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_META_STRING:
            raise WireError(400, f"meta {key!r} is longer than {MAX_META_STRING} characters")
    return dict(meta)


def _check_tensor_spec(spec: object) -> tuple[str, torch.dtype, tuple[int, ...], int]:
    if not isinstance(spec, dict) or set(spec) != _TENSOR_KEYS:
        raise WireError(400, "each tensor entry must have exactly name, dtype, shape")
    name, dtype_name, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not TENSOR_NAME.match(name):
        raise WireError(400, f"tensor name {name!r} is not allowed")
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise WireError(400, f"tensor {name!r}: unsupported dtype {dtype_name!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and 0 <= d < 2**40 for d in shape):
        raise WireError(400, f"tensor {name!r}: shape must be a list of at most {MAX_DIMS} non-negative ints")
    itemsize = torch.empty((), dtype=dtype).element_size()
    return name, dtype, tuple(shape), math.prod(shape) * itemsize


def _tensor_from(body: memoryview, dtype: torch.dtype, shape: tuple[int, ...], start: int, nbytes: int,
                 share: bool) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = torch.frombuffer(bytearray(body[start: start + nbytes]), dtype=torch.uint8)
        return raw.reshape(-1, itemsize).flip(1).contiguous().reshape(-1).view(dtype).reshape(shape)
    if share:  # a view into the caller's private buffer (data offsets are 64-byte aligned)
        return torch.frombuffer(body, dtype=dtype, count=nbytes // _itemsize(dtype), offset=start).reshape(shape)
    # Otherwise copy the bytes out into a buffer the tensor owns.
    return torch.frombuffer(bytearray(body[start: start + nbytes]), dtype=dtype).reshape(shape)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- what a receiver expects ----------------------------------------------------------------------

_INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_.]+$")


def check_protocol(msg: Message, local_node: str, known_nodes: Iterable[str], specs: MessageSpecs | None = None,
                   server_id: str = SERVER_ID) -> None:
    """Is ``msg`` something ``local_node`` can legitimately receive in this run?

    ``specs`` are the messages the run's program sends (``Program.message_specs()``): an
    iteration message must match one in kind, phase, direction, tensor names and dtypes. Raises
    :class:`WireError` (403 for the wrong peers, 422 for a message that does not fit the protocol).
    """
    if msg.dst != local_node:
        raise WireError(403, f"message for {msg.dst!r} sent to node {local_node!r}")
    if msg.src not in set(known_nodes):
        raise WireError(403, f"unknown sender {msg.src!r}")
    if msg.src == msg.dst:
        raise WireError(422, "a node does not send messages to itself")
    if server_id not in (msg.src, msg.dst):
        raise WireError(422, "clients only exchange messages with the server")
    to_server = msg.dst == server_id
    kind = msg.kind
    if kind in (MessageKind.ACTIVATION, MessageKind.GRADIENT):
        if msg.step < 0:
            raise WireError(422, f"{kind.value} messages belong to an iteration (step >= 0), got step {msg.step}")
        if msg.round < 1:
            raise WireError(422, f"round must be >= 1, got {msg.round}")
        if specs is not None:
            problem = specs.problem(msg, server_id)
            if problem is not None:
                raise WireError(422, problem)
        for name, t in msg.tensors.items():
            if DTYPE_NAMES[t.dtype] not in FLOAT_DTYPES | _INTEGER_DTYPES or t.dim() < 1:
                raise WireError(422, f"tensor {name!r} must be a batch, got {t.dtype} {list(t.shape)}")
        if msg.meta:
            raise WireError(422, f"{kind.value} messages carry no meta")
    elif kind in (MessageKind.PARAMS, MessageKind.AGGREGATE):
        if msg.phase is not Phase.FEDERATE or msg.step != ROUND_LEVEL_STEP or msg.round < 1:
            raise WireError(422, f"{kind.value} belongs to the federate phase of a round (step {ROUND_LEVEL_STEP})")
        if (kind is MessageKind.PARAMS) != to_server:
            raise WireError(422, f"{kind.value} goes {'client -> server' if kind is MessageKind.PARAMS else 'server -> client'}")
        for name, t in msg.tensors.items():
            if not _PARAM_NAME.match(name) or DTYPE_NAMES[t.dtype] not in FLOAT_DTYPES:
                raise WireError(422, f"parameter tensor {name!r} ({t.dtype}) is not a block.parameter float tensor")
        if kind is MessageKind.AGGREGATE and msg.meta:
            raise WireError(422, "aggregate messages carry no meta")
    # Kinds added to MessageKind later get the generic checks above (ids, names, dtypes) only.


# -- signing ------------------------------------------------------------------------------------


def _mac(secret: bytes, src: str, dst: str, timestamp: str, nonce: str, body: bytes | bytearray | memoryview) -> str:
    mac = hmac.new(secret, SIGNATURE_CONTEXT, hashlib.sha256)
    mac.update(f"{src}\n{dst}\n{timestamp}\n{nonce}\n".encode("ascii"))
    mac.update(body)
    return mac.hexdigest()


def _head_mac(secret: bytes, src: str, dst: str, timestamp: str, nonce: str, length: int) -> str:
    # Its own context string, so a head signature can never pass as a body signature.
    mac = hmac.new(secret, HEAD_SIGNATURE_CONTEXT, hashlib.sha256)
    mac.update(f"{src}\n{dst}\n{timestamp}\n{nonce}\n{length}\n".encode("ascii"))
    return mac.hexdigest()


def sign_headers(secret: bytes, src: str, dst: str, body: bytes | bytearray | memoryview,
                 now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request (fresh timestamp and nonce every call)."""
    timestamp = str(int((time.time() if now is None else now) * 1000))
    nonce = secrets.token_hex(16)
    return {
        HEADER_FROM: src,
        HEADER_TO: dst,
        HEADER_TIME: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: _mac(secret, src, dst, timestamp, nonce, body),
        HEADER_HEAD_SIGNATURE: _head_mac(secret, src, dst, timestamp, nonce, memoryview(body).nbytes),
    }


@dataclass(frozen=True)
class SignedRequest:
    src: str
    nonce: str
    timestamp_ms: int


def _signature_fields(headers: Mapping[str, str], local_node: str, known_nodes: Iterable[str],
                      names: tuple[str, ...]) -> dict[str, str]:
    """The named signature headers, present, well-formed and naming a known sender and this node."""
    values = {}
    for name in names:
        value = headers.get(name)
        if value is None:
            raise WireError(401, f"unsigned request (no {name} header)")
        values[name] = value
    src, dst = values[HEADER_FROM], values[HEADER_TO]
    if not NODE_ID.match(src) or src not in set(known_nodes):
        raise WireError(403, f"unknown node id {src[:64]!r}")
    if dst != local_node:
        raise WireError(403, f"request addressed to {dst[:64]!r}, this is node {local_node!r}")
    if not TIMESTAMP.match(values[HEADER_TIME]) or not NONCE.match(values[HEADER_NONCE]) \
            or not all(SIGNATURE.match(values[name]) for name in (HEADER_SIGNATURE, HEADER_HEAD_SIGNATURE) if name in values):
        raise WireError(401, "malformed signature headers")
    return values


_BODY_SIGNED = (HEADER_FROM, HEADER_TO, HEADER_TIME, HEADER_NONCE, HEADER_SIGNATURE)
_HEAD_SIGNED = _BODY_SIGNED + (HEADER_HEAD_SIGNATURE,)


def verify_head(secret: bytes, headers: Mapping[str, str], local_node: str, known_nodes: Iterable[str],
                content_length: int) -> SignedRequest:
    """Check a request's head signature (headers and claimed body length) before reading the body.

    Raises :class:`WireError` (401/403). The body signature is checked apart, once the body is in
    (:func:`verify_headers`); replay by :class:`ReplayGuard`.
    """
    values = _signature_fields(headers, local_node, known_nodes, _HEAD_SIGNED)
    src, dst = values[HEADER_FROM], values[HEADER_TO]
    expected = _head_mac(secret, src, dst, values[HEADER_TIME], values[HEADER_NONCE], content_length)
    if not hmac.compare_digest(expected, values[HEADER_HEAD_SIGNATURE]):
        raise WireError(401, f"bad signature from {src!r}")
    return SignedRequest(src, values[HEADER_NONCE], int(values[HEADER_TIME]))


def verify_headers(secret: bytes, headers: Mapping[str, str], local_node: str, known_nodes: Iterable[str],
                   body: bytes | bytearray | memoryview) -> SignedRequest:
    """Check a request's signature headers. Raises :class:`WireError` (401/403); replay is checked apart."""
    values = _signature_fields(headers, local_node, known_nodes, _BODY_SIGNED)
    src, dst = values[HEADER_FROM], values[HEADER_TO]
    expected = _mac(secret, src, dst, values[HEADER_TIME], values[HEADER_NONCE], body)
    if not hmac.compare_digest(expected, values[HEADER_SIGNATURE]):
        raise WireError(401, f"bad signature from {src!r}")
    return SignedRequest(src, values[HEADER_NONCE], int(values[HEADER_TIME]))


class ReplayGuard:
    """Refuses a request whose timestamp is outside the window or whose nonce was seen before."""

    def __init__(self, window_s: float = 300.0, max_entries: int = 1_000_000) -> None:
        self.window_s = window_s
        self._max = max_entries
        self._seen: dict[str, float] = {}
        self._next_prune = 0.0

    def check(self, request: SignedRequest, now: float | None = None) -> None:
        now = time.time() if now is None else now
        skew = request.timestamp_ms / 1000.0 - now
        if abs(skew) > self.window_s:
            raise WireError(401, f"stale or future timestamp ({skew:+.0f} s off, window {self.window_s:g} s)")
        if now >= self._next_prune or len(self._seen) >= self._max:
            self._prune(now)
        if request.nonce in self._seen:
            raise WireError(409, f"replayed request (nonce {request.nonce[:8]}... already used)")
        if len(self._seen) >= self._max:
            raise WireError(429, "too many requests in the replay window")
        # Keep a nonce as long as a request carrying it could still pass the timestamp check.
        self._seen[request.nonce] = request.timestamp_ms / 1000.0 + self.window_s

    def _prune(self, now: float) -> None:
        self._seen = {nonce: expiry for nonce, expiry in self._seen.items() if expiry >= now}
        self._next_prune = now + min(self.window_s, 30.0)


def parse_secret(text: str | bytes) -> bytes:
    """A run secret as stored in a file or env var: hex (>= 32 hex digits, i.e. 16 bytes)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError("the run secret must be hex digits (create one with `p2pgan node secret FILE`)") from None
    if len(secret) < 16:
        raise ValueError(f"the run secret is {len(secret)} bytes; at least 16 are needed")
    return secret
