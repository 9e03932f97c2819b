"""The schedule every node follows: rounds of iterations, each round closed by federation.

Client-side and server-side node kinds (the split engine's and the baselines') implement
``iteration``, ``federate`` and ``state_dict``; these loops are the one place that walks the
schedule. A resumed run starts at ``first_round``; after every round's federation the loop hands
the node's state to the run's checkpoint hook (the node never writes files itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from p2pgan.plan.run import Schedule
from p2pgan.bus import EventBus
from p2pgan.engine.state import NodeState
from p2pgan.protocol.events import ClientLosses, NodeStateEvent


@dataclass
class RoundLosses:
    sums: dict[str, float] = field(default_factory=lambda: {"d_real": 0.0, "d_fake": 0.0, "d_loss": 0.0, "g_loss": 0.0})
    count: int = 0

    def add(self, losses: ClientLosses) -> None:
        for key in self.sums:
            self.sums[key] += getattr(losses, key)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}


class RoundCheckpoint(Protocol):
    """Receives a node's state after each round's federation (the run decides what to write)."""

    def __call__(self, round_: int, state: NodeState) -> None: ...


class ClientRole(Protocol):
    node_id: str

    async def iteration(self, round_: int, step: int): ...  # -> ClientLosses

    async def federate(self, round_: int, losses: dict[str, float]) -> None: ...

    def state_dict(self) -> NodeState: ...


class ServerRole(Protocol):
    node_id: str

    async def iteration(self, round_: int, step: int) -> None: ...

    async def federate(self, round_: int) -> object: ...

    def state_dict(self) -> NodeState: ...


async def run_client(node: ClientRole, schedule: Schedule, bus: EventBus, first_round: int = 1,
                     checkpoint: RoundCheckpoint | None = None) -> None:
    """Iterate, publish every step's losses, and send the round's mean losses with the parameters."""
    for round_ in range(first_round, schedule.rounds + 1):
        round_losses = RoundLosses()
        for step in range(schedule.steps_per_round):
            losses = await node.iteration(round_, step)
            round_losses.add(losses)
            bus.publish(losses)
        await node.federate(round_, round_losses.means())
        if checkpoint is not None:
            checkpoint(round_, node.state_dict())
    bus.publish(NodeStateEvent(node.node_id, "done"))


async def run_server(node: ServerRole, schedule: Schedule, bus: EventBus, first_round: int = 1,
                     checkpoint: RoundCheckpoint | None = None) -> None:
    for round_ in range(first_round, schedule.rounds + 1):
        for step in range(schedule.steps_per_round):
            await node.iteration(round_, step)
        await node.federate(round_)
        if checkpoint is not None:
            checkpoint(round_, node.state_dict())
    bus.publish(NodeStateEvent(node.node_id, "done"))
