"""The schedule every node follows: rounds of iterations, each round closed by federation.

Client-side and server-side node kinds (the split engine's and the baselines') implement
``iteration``, ``federate`` and ``state_dict`` (clients also ``rejoin``); these loops are the one
place that walks the schedule. A resumed run starts at ``first_round``; after every round's
federation the loop hands the node's state to the run's checkpoint hook (the node never writes
files itself).

With a :class:`~p2pgan.plan.faults.FaultPlan` a client sits out the iterations it is absent from
(publishing no losses for them), sends its parameters only to the federations that use them, and,
back after missing one, loads its cluster's weights at the end of the round before its return.
The server asks its own participation who is present (it also knows the peers it dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from p2pgan.plan.faults import FaultPlan
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

    async def rejoin(self, round_: int) -> None: ...

    def state_dict(self) -> NodeState: ...


class ServerRole(Protocol):
    node_id: str

    async def iteration(self, round_: int, step: int) -> None: ...

    async def federate(self, round_: int) -> object: ...

    def state_dict(self) -> NodeState: ...


async def run_client(node: ClientRole, schedule: Schedule, bus: EventBus, first_round: int = 1,
                     checkpoint: RoundCheckpoint | None = None, faults: FaultPlan | None = None) -> None:
    """Iterate, publish every step's losses, and send the round's mean losses with the parameters
    (with ``faults``: only where this client takes part)."""
    me = node.node_id
    for round_ in range(first_round, schedule.rounds + 1):
        round_losses = RoundLosses()
        for step in range(schedule.steps_per_round):
            if faults is not None and me not in faults.present(round_, step):
                continue
            losses = await node.iteration(round_, step)
            round_losses.add(losses)
            bus.publish(losses)
        if faults is None or me in faults.at_federation(round_):
            await node.federate(round_, round_losses.means())
        elif me in faults.rejoining(round_ + 1):
            await node.rejoin(round_)
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
