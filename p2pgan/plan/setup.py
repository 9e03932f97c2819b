"""What every node needs to know besides its own data: hyper-parameters and costs."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where a node's blocks, optimizer state, batches and received tensors live and its kernels
    run (``execution.device``, resolved once by the run's composition root)."""

    def adam(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        # foreach: one multi-tensor update instead of a dozen small ops per parameter, the same
        # arithmetic per element (bit for bit the for-loop Adam's), so every engine may use it.
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, foreach=True) if params else None


def node_seed(seed: int, node_id: str) -> int:
    """A stable per-node seed (Python's ``hash`` is salted per process, so it cannot be used)."""
    acc = seed & 0xFFFFFFFF
    for ch in node_id.encode():
        acc = (acc * 1_000_003 + ch) & 0xFFFFFFFFFFFF
    return acc
