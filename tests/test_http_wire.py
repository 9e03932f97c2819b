"""The HTTP wire format, signatures and replay guard, without sockets."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Message, MessageKind, Phase
from transports import wire
from p2pgan.plan.program import MD_GAN, U_SHAPED
from p2pgan.protocol.specs import MessageSpecs
from transports.wire import ReplayGuard, WireError, check_protocol, decode, encode, sign_headers, verify_headers

# Every message some catalogued program sends (the split engine's and MD-GAN's).
SPECS = MessageSpecs.union(p.message_specs() for p in (U_SHAPED, MD_GAN))

SECRET = bytes(range(32))
NODES = ("server", "c000", "c001")


def activation(step: int = 0, tensor: torch.Tensor | None = None) -> Message:
    t = torch.randn(4, 3, 5, 5) if tensor is None else tensor
    return Message(MessageKind.ACTIVATION, "c000", "server", 1, step, Phase.G_FWD, {"act": t})


def raw_body(header: dict, data: bytes = b"") -> bytes:
    """A body laid out like :func:`wire.encode`, from an arbitrary header and data."""
    head = json.dumps(header).encode()
    prefix = wire.MAGIC + struct.pack("<I", len(head)) + head
    pad = (-len(prefix)) % wire.ALIGN
    return prefix + b"\0" * pad + data + b"\0" * ((-len(data)) % wire.ALIGN)


def header_of(msg: Message) -> dict:
    return {"v": 1, "id": msg.msg_id, "kind": msg.kind.value, "src": msg.src, "dst": msg.dst, "round": msg.round,
            "step": msg.step, "phase": msg.phase.value,
            "tensors": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                        for n, t in msg.tensors.items()], "meta": dict(msg.meta)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.uint8, torch.bool])
def test_round_trip_is_exact_for_every_dtype(dtype):
    t = (torch.randn(3, 7, 2) * 100).to(dtype)
    msg = Message(MessageKind.PARAMS, "c001", "server", 2, ROUND_LEVEL_STEP, Phase.FEDERATE,
                  {"g1.weight": t, "g1.empty": torch.empty(0, 3, dtype=dtype), "g1.scalar": t.flatten()[0].clone()},
                  {"num_examples": 120, "d_loss": 0.1 + 0.2, "note": "x"})
    got = decode(bytes(encode(msg)))
    assert got.key == msg.key and got.meta == msg.meta
    assert type(got.meta["num_examples"]) is int
    for name, tensor in msg.tensors.items():
        assert got.tensors[name].dtype == tensor.dtype and got.tensors[name].shape == tensor.shape
        assert torch.equal(got.tensors[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_float32_bits_survive_including_nan_and_negative_zero():
    t = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45, 3.4028235e38], dtype=torch.float32)
    got = decode(bytes(encode(activation(tensor=t.reshape(5, 1))))).tensors["act"]
    assert torch.equal(got.view(torch.int32), t.reshape(5, 1).view(torch.int32))


def test_non_contiguous_and_grad_tensors_are_sent_as_values():
    base = torch.randn(6, 4, requires_grad=True)
    t = base.t()[1:3] * 2
    got = decode(bytes(encode(activation(tensor=t)))).tensors["act"]
    assert torch.equal(got, t.detach()) and not got.requires_grad
    got.add_(1)  # received tensors own writable memory


def test_layout_is_aligned_and_exactly_sized():
    body = encode(activation())
    header_len = struct.unpack_from("<I", body, 8)[0]
    assert body[:8] == wire.MAGIC and len(body) % wire.ALIGN == 0
    data_at = (12 + header_len + 63) // 64 * 64
    assert len(body) == data_at + 1216  # 300 float32 = 1200 bytes, padded to 1216


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:-64], "header/body mismatch"),
    (lambda b: b + b"\0" * 64, "header/body mismatch"),
    (lambda b: b[:20], "truncated"),
    (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
    (lambda b: b"", "too short"),
    (lambda b: b[:8] + struct.pack("<I", 0) + b[12:], "header length"),
    (lambda b: b[:8] + struct.pack("<I", 1 << 30) + b[12:], "header length"),
])
def test_malformed_bodies_are_refused(mutate, reason):
    with pytest.raises(WireError, match=reason) as err:
        decode(mutate(bytes(encode(activation()))))
    assert err.value.status == 400


@pytest.mark.parametrize("edit, reason", [
    (lambda h: h.update(kind="bogus"), "unknown message kind"),
    (lambda h: h.update(phase="nope"), "unknown phase"),
    (lambda h: h.update(v=2), "unsupported wire version"),
    (lambda h: h.update(extra=1), "header keys wrong"),
    (lambda h: h.pop("meta"), "header keys wrong"),
    (lambda h: h.update(round=-1), "round"),
    (lambda h: h.update(round=True), "round"),
    (lambda h: h.update(step=1.5), "step"),
    (lambda h: h.update(src="../etc"), "not a valid node id"),
    (lambda h: h.update(id="c000>server/r9/s0/g_fwd/activation"), "does not match"),
    (lambda h: h["tensors"][0].update(dtype="object"), "unsupported dtype"),
    (lambda h: h["tensors"][0].update(shape=[4, 3, 5, 6]), "header/body mismatch"),
    (lambda h: h["tensors"][0].update(shape=[4, -3, 5, 5]), "shape"),
    (lambda h: h["tensors"][0].update(dtype="float64"), "header/body mismatch"),
    (lambda h: h["tensors"][0].update(name="a b"), "tensor name"),
    (lambda h: h["tensors"].append(dict(h["tensors"][0])), "appears twice"),
    (lambda h: h.update(meta={"k": [1, 2]}), "meta"),
    (lambda h: h.update(meta={"k": True}), "meta"),
])
def test_header_fields_are_validated_strictly(edit, reason):
    msg = activation()
    header = header_of(msg)
    edit(header)
    with pytest.raises(WireError, match=reason) as err:
        decode(raw_body(header, msg.tensors["act"].numpy().tobytes()))
    assert err.value.status == 400


def test_duplicate_json_keys_and_non_object_headers_are_refused():
    msg = activation()
    data = msg.tensors["act"].numpy().tobytes()
    text = json.dumps(header_of(msg))
    dup = text[:-1] + ', "round": 1}'
    head = dup.encode()
    prefix = wire.MAGIC + struct.pack("<I", len(head)) + head
    with pytest.raises(WireError, match="repeats key"):
        decode(prefix + b"\0" * ((-len(prefix)) % 64) + data + b"\0" * ((-len(data)) % 64))
    with pytest.raises(WireError, match="JSON object"):
        decode(raw_body([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(WireError, match="not valid JSON"):
        decode(wire.MAGIC + struct.pack("<I", 3) + b"\xff\xfe{")


def test_non_zero_padding_is_refused():
    body = bytearray(encode(activation()))
    body[-1] = 1
    with pytest.raises(WireError, match="padding"):
        decode(bytes(body))


@pytest.mark.parametrize("msg, status, reason", [
    (Message(MessageKind.ACTIVATION, "c000", "server", 1, 0, Phase.G_FWD, {"x": torch.ones(2, 2)}), 422, "expected"),
    (Message(MessageKind.ACTIVATION, "c000", "server", 1, 0, Phase.D_BWD, {"act": torch.ones(2, 2)}), 422, "phase"),
    (Message(MessageKind.GRADIENT, "c000", "server", 1, 0, Phase.D_BWD, {"fake": torch.ones(2)}), 422, "expected"),
    (Message(MessageKind.ACTIVATION, "c000", "server", 1, -1, Phase.G_FWD, {"act": torch.ones(2)}), 422, "step"),
    (Message(MessageKind.ACTIVATION, "c000", "server", 1, 0, Phase.G_FWD, {"act": torch.ones(2, dtype=torch.int64)}), 422, "floating"),
    (Message(MessageKind.ACTIVATION, "c000", "server", 1, 0, Phase.G_FWD, {"act": torch.ones(2)}, {"a": 1}), 422, "meta"),
    (Message(MessageKind.ACTIVATION, "server", "c000", 1, 0, Phase.G_FWD,
             {"images": torch.ones(2, 1), "labels": torch.ones(2)}), 422, "integer"),
    (Message(MessageKind.AGGREGATE, "c000", "server", 1, -1, Phase.FEDERATE, {}), 422, "server -> client"),
    (Message(MessageKind.PARAMS, "c000", "server", 1, 3, Phase.FEDERATE, {}), 422, "federate"),
    (Message(MessageKind.PARAMS, "c000", "server", 1, -1, Phase.FEDERATE, {"weight": torch.ones(2)}), 422, "block.parameter"),
    (Message(MessageKind.ACTIVATION, "c000", "c001", 1, 0, Phase.G_FWD, {"act": torch.ones(2)}), 403, "sent to node"),
    (Message(MessageKind.ACTIVATION, "eve", "server", 1, 0, Phase.G_FWD, {"act": torch.ones(2)}), 403, "unknown sender"),
])
def test_protocol_checks(msg, status, reason):
    local = "c000" if msg.src == "server" else "server"
    with pytest.raises(WireError, match=reason) as err:
        check_protocol(msg, local, NODES, SPECS)
    assert err.value.status == status


def test_legitimate_messages_pass_protocol_checks():
    ok = [
        activation(),
        Message(MessageKind.GRADIENT, "server", "c001", 3, 7, Phase.D_BWD, {"fake": torch.ones(2, 1), "real": torch.ones(2, 1)}),
        Message(MessageKind.PARAMS, "c001", "server", 1, -1, Phase.FEDERATE, {"g0.bn.running_mean": torch.ones(2)},
                {"num_examples": 5, "d_loss": 0.5}),
        # MD-GAN: the server's generated batch (images and their synthetic labels) for one discriminator.
        Message(MessageKind.ACTIVATION, "server", "c000", 1, 0, Phase.G_FWD,
                {"images": torch.ones(4, 1, 28, 28), "labels": torch.arange(4)}),
    ]
    for msg in ok:
        check_protocol(msg, msg.dst, NODES, SPECS)


def test_signature_covers_sender_receiver_and_body():
    body = bytes(encode(activation()))
    headers = sign_headers(SECRET, "c000", "server", body)
    assert verify_headers(SECRET, headers, "server", NODES, body).src == "c000"
    cases = [
        (SECRET, headers, "server", body[:-1] + b"\1", 401, "bad signature"),
        (bytes(32), headers, "server", body, 401, "bad signature"),
        (SECRET, {**headers, wire.HEADER_FROM: "c001"}, "server", body, 401, "bad signature"),
        (SECRET, {**headers, wire.HEADER_FROM: "eve"}, "server", body, 403, "unknown node"),
        (SECRET, headers, "c001", body, 403, "addressed to"),
        (SECRET, {k: v for k, v in headers.items() if k != wire.HEADER_SIGNATURE}, "server", body, 401, "unsigned"),
        (SECRET, {**headers, wire.HEADER_NONCE: "zz"}, "server", body, 401, "malformed"),
    ]
    for secret, hdrs, local, data, status, reason in cases:
        with pytest.raises(WireError, match=reason) as err:
            verify_headers(secret, hdrs, local, NODES, data)
        assert err.value.status == status


def test_replay_guard_refuses_reused_nonces_and_stale_timestamps():
    guard = ReplayGuard(window_s=60)
    body = b"abc"
    signed = verify_headers(SECRET, sign_headers(SECRET, "c000", "server", body), "server", NODES, body)
    guard.check(signed)
    with pytest.raises(WireError, match="replayed") as err:
        guard.check(signed)
    assert err.value.status == 409
    old = verify_headers(SECRET, sign_headers(SECRET, "c000", "server", body, now=1000.0), "server", NODES, body)
    with pytest.raises(WireError, match="stale") as err:
        guard.check(old)
    assert err.value.status == 401


def test_secret_parsing():
    assert wire.parse_secret("00" * 16 + "\n") == bytes(16)
    with pytest.raises(ValueError, match="hex"):
        wire.parse_secret("not hex")
    with pytest.raises(ValueError, match="at least 16"):
        wire.parse_secret("abcd")


def test_decode_can_share_a_private_receive_buffer():
    msg = Message(MessageKind.GRADIENT, "server", "c000", 1, 0, Phase.D_BWD,
                  {"fake": torch.randn(8, 3, 2), "real": torch.randn(8, 3, 2, dtype=torch.float64)})
    body = bytearray(encode(msg))
    got = decode(body, share=True)
    for name, t in msg.tensors.items():
        assert torch.equal(got.tensors[name], t)
    got.tensors["fake"].add_(1)  # writable, and a view of the buffer handed over
    assert not torch.equal(decode(bytes(body)).tensors["fake"], msg.tensors["fake"])
    copied = decode(bytes(encode(msg)), share=True)  # read-only input: copies instead
    copied.tensors["real"].mul_(2)
