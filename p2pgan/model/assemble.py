"""Whole networks rebuilt from per-block states, for sampling and evaluation outside training."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from p2pgan.model.blocks import GENERATOR, ModelSpec, build_initial_blocks
from p2pgan.model.segments import Segment

BlockStates = Mapping[str, Mapping[str, torch.Tensor]]


class AssembledGenerator:
    """``generate(labels, z) -> images`` from a cluster's averaged G blocks (eval-mode BN)."""

    def __init__(self, spec: ModelSpec, states: BlockStates) -> None:
        blocks = build_initial_blocks(spec, seed=0)
        for name in GENERATOR.block_names:
            blocks[name].load_state_dict(dict(states[name]), strict=False)
        self.spec = spec
        self.z_dim = spec.z_dim
        self._net = Segment({name: blocks[name] for name in GENERATOR.block_names}).eval()

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self._net(z, labels)

    def sample_grid_inputs(self, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels 0..K-1 in rows of ``per_class``, with z from a seeded generator."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(self.spec.num_classes).repeat_interleave(per_class)
        return labels, torch.randn(labels.shape[0], self.z_dim, generator=gen)
