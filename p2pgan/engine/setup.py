"""What every node needs to know besides its own data: hyper-parameters and costs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2pgan.model.blocks import Block, ModelSpec
from p2pgan.model.costs import ModelCosts

FloatState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class NodeSetup:
    model: ModelSpec
    costs: ModelCosts
    seed: int
    lr: float
    betas: tuple[float, float]

    def adam(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas) if params else None


def node_seed(seed: int, node_id: str) -> int:
    """A stable per-node seed (Python's ``hash`` is salted per process, so it cannot be used)."""
    acc = seed & 0xFFFFFFFF
    for ch in node_id.encode():
        acc = (acc * 1_000_003 + ch) & 0xFFFFFFFFFFFF
    return acc


def float_state(block: Block) -> FloatState:
    """A block's parameters and float buffers (what federated averaging touches)."""
    return {name: t.detach() for name, t in block.state_dict().items() if t.is_floating_point()}


def flatten_blocks(states: dict[str, FloatState]) -> dict[str, torch.Tensor]:
    """``{block: {name: t}}`` -> ``{"block.name": t}`` for the wire."""
    return {f"{block}.{name}": t for block, state in states.items() for name, t in state.items()}


def unflatten_blocks(tensors: dict[str, torch.Tensor]) -> dict[str, FloatState]:
    out: dict[str, FloatState] = {}
    for key, t in tensors.items():
        block, _, name = key.partition(".")
        out.setdefault(block, {})[name] = t
    return out
