"""What every node needs to know besides its own data: hyper-parameters and costs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import ModelCosts

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
