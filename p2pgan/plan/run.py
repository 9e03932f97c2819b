"""The public, agreed-on description of a run that every node derives from the scenario.

Everything here is metadata a real deployment would distribute before training: client ids,
cuts, dataset sizes and the iteration schedule. It contains no data and no labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from p2pgan.ids import natural_sorted
from p2pgan.model.blocks import DISCRIMINATOR, NETWORKS, NetworkDef
from p2pgan.model.segments import ClientCut, ClientSplit, split_client


@dataclass(frozen=True)
class ClientPlan:
    client_id: str
    cut: ClientCut
    num_examples: int
    full_local: bool = False
    """Holds every block (FedAvg-GAN style); never talks to the server during iterations."""

    @cached_property
    def split(self) -> ClientSplit:
        return split_client(self.cut, full_local=self.full_local)


@dataclass(frozen=True)
class Schedule:
    rounds: int
    local_epochs: int
    steps_per_epoch: int
    batch_size: int

    @property
    def steps_per_round(self) -> int:
        return self.local_epochs * self.steps_per_epoch

    @classmethod
    def for_clients(cls, sizes: Sequence[int], rounds: int, local_epochs: int, batch_size: int,
                    max_batches_per_epoch: int | None) -> "Schedule":
        """One epoch = enough synchronous steps for the largest client to see its data once.

        Smaller clients cycle through fresh permutations of their data meanwhile, because every
        iteration is synchronous across all clients (docs/design.md §1.1).
        """
        steps = max(math.ceil(n / batch_size) for n in sizes)
        if max_batches_per_epoch is not None:
            steps = min(steps, max_batches_per_epoch)
        return cls(rounds, local_epochs, steps, batch_size)


@dataclass(frozen=True)
class RunPlan:
    clients: tuple[ClientPlan, ...]
    schedule: Schedule

    def __post_init__(self) -> None:
        ids = [c.client_id for c in self.clients]
        if ids != natural_sorted(ids) or len(set(ids)) != len(ids):
            raise ValueError("client plans must be unique and in natural id order")

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(c.client_id for c in self.clients)

    def client(self, client_id: str) -> ClientPlan:
        for plan in self.clients:
            if plan.client_id == client_id:
                return plan
        raise KeyError(client_id)

    def server_blocks(self) -> tuple[str, ...]:
        """Blocks the server must host: every block some client offloads, in network order."""
        used = {name for c in self.clients for name in c.split.server_blocks}
        return tuple(name for net in NETWORKS for name in net.block_names if name in used)

    def clients_through(self, network: NetworkDef) -> tuple[ClientPlan, ...]:
        """Clients whose activations pass through the server for ``network``, in id order."""
        def server_part(c: ClientPlan) -> tuple[str, ...]:
            return (c.split.generator if network is not DISCRIMINATOR else c.split.discriminator).server

        return tuple(c for c in self.clients if server_part(c))


def feature_block(network: NetworkDef = DISCRIMINATOR) -> str:
    """The last block the server always runs for everyone: its output is the clustering feature."""
    layout = network.layout
    pinned = network.block_names[layout.fixed_head + layout.movable_head:
                                 len(network.block_names) - layout.fixed_tail - layout.movable_tail]
    return pinned[-1]
