"""Which messages a run may carry: kind, phase, direction and tensor names, derived from its program.

The plan layer's :class:`~p2pgan.plan.program.Program` writes these down; transports check every
received message against them (``check``), so a peer that sends a tensor the program never
sends is refused at the wire, whatever strategy is running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pgan.protocol.messages import Message, MessageKind, Phase

UP = "up"
"""Client to server."""
DOWN = "down"
"""Server to client."""


@dataclass(frozen=True)
class MessageSpec:
    kind: MessageKind
    phase: Phase
    direction: str  # UP | DOWN
    tensors: frozenset[str] | None
    """The tensor names the message carries; ``None``: any names (parameters, keyed by block)."""
    integer_tensors: frozenset[str] = frozenset()
    """Names that carry integer tensors (synthetic labels); every other tensor is floating point."""


@dataclass(frozen=True)
class MessageSpecs:
    specs: tuple[MessageSpec, ...]

    def matching(self, kind: MessageKind, phase: Phase, direction: str) -> tuple[MessageSpec, ...]:
        return tuple(s for s in self.specs if s.kind is kind and s.phase is phase and s.direction == direction)

    def problem(self, msg: Message, server_id: str) -> str | None:
        """``None`` when ``msg`` is one the program sends, else what is wrong with it."""
        direction = UP if msg.dst == server_id else DOWN
        candidates = self.matching(msg.kind, msg.phase, direction)
        if not candidates:
            return f"no {direction} {msg.kind.value} message in phase {msg.phase.value} in this run's program"
        names = frozenset(msg.tensors)
        for spec in candidates:
            if spec.tensors is None or spec.tensors == names:
                return _dtype_problem(msg, spec)
        expected = " or ".join(str(sorted(s.tensors or ())) for s in candidates)
        return f"{msg.kind.value}/{msg.phase.value} carries tensors {sorted(names)}, expected {expected}"

    @classmethod
    def union(cls, parts: Iterable["MessageSpecs"]) -> "MessageSpecs":
        seen: dict[MessageSpec, None] = {}
        for part in parts:
            seen.update(dict.fromkeys(part.specs))
        return cls(tuple(seen))


def _dtype_problem(msg: Message, spec: MessageSpec) -> str | None:
    for name, tensor in msg.tensors.items():
        integer = name in spec.integer_tensors
        if integer == tensor.is_floating_point() or tensor.is_complex():
            kind = "an integer" if integer else "a floating-point"
            return f"tensor {name!r} of {msg.kind.value}/{msg.phase.value} must be {kind} tensor, got {tensor.dtype}"
    return None
