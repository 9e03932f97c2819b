"""The federation strategy interface and the averaging helpers every strategy shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

    def layer_copy(self, client_id: str, block: str) -> BlockState:
        """θ_i for one block: the client's own copy if it holds the block, else the server's."""
        own = self.updates[client_id].blocks.get(block)
        return own if own is not None else self.server_blocks[block]

    @property
    def all_blocks(self) -> tuple[str, ...]:
        names = {b for u in self.updates.values() for b in u.blocks} | set(self.server_blocks)
        from p2pgan.model.blocks import NETWORKS

        return tuple(b for net in NETWORKS for b in net.block_names if b in names)


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


def weighted_average(states: Sequence[BlockState], weights: Sequence[float]) -> BlockState:
    """Σ w_i·θ_i per tensor. Float tensors only; integer buffers keep the first state's value."""
    out: BlockState = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights):
            acc += float(w) * state[name].to(torch.float64)
        out[name] = acc.to(first.dtype)
    return out


def average_cluster(inputs: FederationInput, members: Sequence[str], weights: Mapping[str, float]) -> dict[str, BlockState]:
    """Per block of the whole model, Σ w_i·θ_i over ``members`` (own or server copy per DESIGN §1.3)."""
    return {
        block: weighted_average([inputs.layer_copy(c, block) for c in members], [weights[c] for c in members])
        for block in inputs.all_blocks
    }


def size_weights(inputs: FederationInput, members: Sequence[str]) -> dict[str, float]:
    total = sum(inputs.updates[c].num_examples for c in members)
    return {c: inputs.updates[c].num_examples / total for c in members}


def distribute(inputs: FederationInput, clusters: Mapping[str, int],
               cluster_models: Mapping[int, dict[str, BlockState]],
               server_model: Mapping[str, BlockState]) -> FederationResult:
    """Send each client its cluster's blocks; the server keeps ``server_model`` for its blocks."""
    client_blocks = {
        cid: {block: cluster_models[clusters[cid]][block] for block in update.blocks}
        for cid, update in inputs.updates.items()
    }
    server_blocks = {block: server_model[block] for block in inputs.server_blocks}
    return FederationResult(client_blocks, server_blocks, dict(clusters), dict(cluster_models))


class FederationStrategy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def aggregate(self, inputs: FederationInput) -> FederationResult:
        """Combine the round's client and server copies into what everyone continues with."""


_REGISTRY: dict[str, Callable[..., FederationStrategy]] = {}


def register_strategy(name: str) -> Callable[[type[FederationStrategy]], type[FederationStrategy]]:
    def decorate(cls: type[FederationStrategy]) -> type[FederationStrategy]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def create_strategy(name: str, **options: Any) -> FederationStrategy:
    import p2pgan.federation.fedavg  # noqa: F401  (registers the built-ins)

    try:
        import p2pgan.federation.huscf  # noqa: F401
    except ImportError:
        pass
    if name not in _REGISTRY:
        raise KeyError(f"unknown federation strategy {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**options)
