"""What a round's federation consumes and produces: typed values every strategy shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

BlockState = dict[str, torch.Tensor]
"""One block's parameters and float buffers, keyed by their name inside the block."""


@dataclass(frozen=True)
class ClientUpdate:
    client_id: str
    num_examples: int
    cut: tuple[int, ...]
    blocks: dict[str, BlockState]
    """The blocks this client holds."""
    losses: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FederationInput:
    round: int
    """1-based round that just finished."""
    updates: dict[str, ClientUpdate]
    """Per client, in client-id order."""
    server_blocks: dict[str, BlockState]
    """The server's shared copy of every block it hosts."""
    features: dict[str, torch.Tensor]
    """Per client: the output of the server's always-shared D middle block from the last real-data
    D pass of the round, [B, C, H, W]. Empty when no client passes through the server."""
    num_domains: int
    block_order: tuple[str, ...] = ()
    """Every block of the full G and D in network order (the model's, passed in by the server)."""

    def layer_copy(self, client_id: str, block: str) -> BlockState:
        """θ_i for one block: the client's own copy if it holds the block, else the server's."""
        own = self.updates[client_id].blocks.get(block)
        return own if own is not None else self.server_blocks[block]

    @property
    def all_blocks(self) -> tuple[str, ...]:
        names = {b for u in self.updates.values() for b in u.blocks} | set(self.server_blocks)
        ordered = [b for b in self.block_order if b in names]
        return tuple(ordered + sorted(names - set(ordered)))


@dataclass(frozen=True)
class FederationResult:
    client_blocks: dict[str, dict[str, BlockState]]
    """What each client loads: its cluster's average of the blocks it holds."""
    server_blocks: dict[str, BlockState]
    clusters: dict[str, int]
    cluster_models: dict[int, dict[str, BlockState]]
    """Every block of G and D averaged per cluster: what a cluster's model is."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable facts for the results (weights, KLD scores...)."""




class Aggregator(Protocol):
    """What the server calls at round end (every strategy is one)."""

    def aggregate(self, inputs: FederationInput) -> FederationResult: ...
