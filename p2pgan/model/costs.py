"""Per-block compute and communication costs, measured from the real modules.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` on an actual forward and
backward of each block, bytes from the actual output tensors. Nothing is hand-tabulated, so a
wider model or another image size is priced by the same code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from p2pgan.model.blocks import NETWORKS, ModelSpec, build_initial_blocks


@dataclass(frozen=True)
class BlockCost:
    """Costs of one block, per sample.

    ``bwd_flops`` covers the parameter gradients and the gradient w.r.t. the block's input
    (which a split backward must send on).
    """

    name: str
    network: str
    fwd_flops: float
    bwd_flops: float
    out_bytes: int
    param_bytes: int


@dataclass(frozen=True)
class ModelCosts:
    spec: ModelSpec
    blocks: tuple[BlockCost, ...]

    def __getitem__(self, name: str) -> BlockCost:
        for cost in self.blocks:
            if cost.name == name:
                return cost
        raise KeyError(name)

    def flops(self, names: tuple[str, ...] | list[str], direction: str) -> float:
        """Per-sample FLOPs of running ``names`` in ``direction`` ("fwd" or "bwd")."""
        attr = "fwd_flops" if direction == "fwd" else "bwd_flops"
        return sum(getattr(self[name], attr) for name in names)

    def image_bytes(self) -> int:
        """Bytes of one image (fp32), the input of D's head."""
        spec = self.spec
        return 4 * spec.image_channels * spec.image_size**2


def _example_input(name: str, spec: ModelSpec, previous: torch.Tensor | None, batch: int) -> torch.Tensor:
    if name == "g0":
        return torch.randn(batch, spec.z_dim)
    if name == "d0":
        return torch.randn(batch, spec.image_channels, spec.image_size, spec.image_size)
    assert previous is not None
    return previous


@functools.cache
def profile_model(spec: ModelSpec, batch: int = 8) -> ModelCosts:
    """Measure every block once at ``batch`` and report per-sample costs (kept: the counts depend
    on the spec only, and a run asks for them more than once)."""
    blocks = build_initial_blocks(spec, seed=0)
    labels = torch.zeros(batch, dtype=torch.long)
    costs = []
    for net in NETWORKS:
        previous = None
        for name in net.block_names:
            block = blocks[name].train()
            x = _example_input(name, spec, previous, batch).detach().requires_grad_(True)
            with FlopCounterMode(display=False) as fwd:
                out = block(x, labels) if block.needs_labels else block(x)
            with FlopCounterMode(display=False) as bwd:
                out.backward(torch.ones_like(out))
            param_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
            param_bytes += sum(b.numel() * b.element_size() for b in block.buffers() if b.is_floating_point())
            costs.append(BlockCost(
                name=name,
                network=net.name,
                fwd_flops=fwd.get_total_flops() / batch,
                bwd_flops=bwd.get_total_flops() / batch,
                out_bytes=out[0].numel() * out.element_size(),
                param_bytes=param_bytes,
            ))
            previous = out.detach()
    return ModelCosts(spec, tuple(costs))
