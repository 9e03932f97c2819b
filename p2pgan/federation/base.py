"""The federation strategy interface and the averaging helpers every strategy shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from p2pgan.protocol.federation import BlockState, ClientUpdate, FederationInput, FederationResult


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
