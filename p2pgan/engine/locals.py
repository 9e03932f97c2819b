"""A program's local steps, as every node kind runs them: losses, gradient resets, optimizer steps."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import torch
from torch.nn import functional as F

from p2pgan.plan.program import Local, LocalAction


def compute_loss(action: Local, outputs: Mapping[str, torch.Tensor],
                 terms: MutableMapping[str, torch.Tensor]) -> torch.Tensor:
    """``action``'s loss: the sum of BCE(output, target) over its terms; each term is kept in ``terms``."""
    total = None
    for result, target in action.terms:
        out = outputs[result]
        term = F.binary_cross_entropy(out, torch.full_like(out, target))
        terms[result] = term
        total = term if total is None else total + term
    return total


def apply_optimizer_action(action: Local, optimizers: Mapping[str, torch.optim.Optimizer | None]) -> None:
    """ZERO_GRAD / STEP of ``action.network``'s optimizer; a node holding none of it skips."""
    optimizer = optimizers.get(action.network.name) if action.network is not None else None
    if optimizer is None:
        return
    if action.action is LocalAction.ZERO_GRAD:
        optimizer.zero_grad(set_to_none=True)
    elif action.action is LocalAction.STEP:
        optimizer.step()
