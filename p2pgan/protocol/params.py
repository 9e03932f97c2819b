"""Parameters on the wire: a node's blocks as one flat ``{"block.name": tensor}`` mapping."""

from __future__ import annotations

import torch

FloatState = dict[str, torch.Tensor]


def float_state(block: torch.nn.Module) -> FloatState:
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
