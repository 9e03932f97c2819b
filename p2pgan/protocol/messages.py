"""Typed messages exchanged between nodes.

A message is the only thing that crosses between nodes. Tensors in a received message are
always detached copies, as if they had crossed a wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import torch

ROUND_LEVEL_STEP = -1
"""``step`` of messages that belong to a whole round (federated aggregation), not an iteration."""


class MessageKind(str, Enum):
    ACTIVATION = "activation"
    """Forward activation: client head -> server, or server middle output -> client tail."""
    GRADIENT = "gradient"
    """Gradient w.r.t. an activation: client tail -> server, or server -> client head."""
    PARAMS = "params"
    """A client's parameters and float buffers at round end, for aggregation."""
    AGGREGATE = "aggregate"
    """The aggregated parameters the server sends a client after a round."""


class Phase(str, Enum):
    """Where in an iteration (or round) a message belongs. Order is the order of execution."""

    G_FWD = "g_fwd"            # G head -> server G middle -> G tail
    D_FAKE = "d_fake"          # D(fake.detach()) forward
    D_REAL = "d_real"          # D(real) forward
    D_BWD = "d_bwd"            # D backward of the fake and real passes together
    G_ADV = "g_adv"            # D(fake) forward for the generator step
    G_ADV_BWD = "g_adv_bwd"    # backward of that pass through D, down to the fake image
    G_BWD = "g_bwd"            # backward through G tail -> server G middle -> G head
    FEDERATE = "federate"      # round-end parameter exchange


@dataclass(frozen=True)
class MessageKey:
    """What a receiver waits for. Unique per message within a run."""

    kind: MessageKind
    src: str
    dst: str
    round: int
    step: int
    phase: Phase

    def __str__(self) -> str:
        return f"{self.src}>{self.dst}/r{self.round}/s{self.step}/{self.phase.value}/{self.kind.value}"


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    src: str
    dst: str
    round: int
    step: int
    phase: Phase
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, str | int | float] = field(default_factory=dict)

    @property
    def key(self) -> MessageKey:
        return MessageKey(self.kind, self.src, self.dst, self.round, self.step, self.phase)

    @property
    def msg_id(self) -> str:
        return str(self.key)

    @property
    def nbytes(self) -> int:
        """Payload bytes (tensor data only; header overhead is transport-specific)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def detached_copy(self) -> "Message":
        """The message as the receiver gets it: tensors detached and copied, graph cut."""
        return self._detached(copy=True)

    def detached_alias(self) -> "Message":
        """The message with its tensors detached, their storage the sender's (an in-process
        hand-over: no copy, graph cut)."""
        return self._detached(copy=False)

    def _detached(self, copy: bool) -> "Message":
        tensors = {name: t.detach().clone() if copy else t.detach() for name, t in self.tensors.items()}
        return replace(self, tensors=tensors, meta=dict(self.meta))

    def on(self, device: torch.device) -> "Message":
        """The message with its tensors on ``device``: itself where they all are there already (a
        memory transport between nodes on one GPU), else a copy (a wire's host tensors for a
        node on a GPU)."""
        if all(is_on(t, device) for t in self.tensors.values()):
            return self
        return replace(self, tensors={name: t.to(device) for name, t in self.tensors.items()})


def is_on(tensor: torch.Tensor, device: torch.device) -> bool:
    """``cuda`` names the current GPU: a tensor on ``cuda:0`` is on it."""
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)
