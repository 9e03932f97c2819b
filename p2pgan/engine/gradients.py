"""When a program reads a network's gradients, and so what its backwards must compute and keep.

A network's optimizer step reads its gradients; a reset (``zero_grad``) drops them. Where the
program resets a network's gradients before every next step (U-shaped: ``ZERO_GRAD D`` precedes
the D backward, ``ZERO_GRAD G`` the G backward), whatever reaches them between a step and the
next reset is never read: the G step's pass back through D accumulates D gradients that the
next iteration's reset throws away, and the gradients themselves sit in memory through the next
iteration's forwards. :class:`GradientUse` follows an iteration and says which networks are
*idle* (after their step, before their reset): their gradients are dropped at the step, and a
backward need not reach their parameters (``torch.autograd.backward(..., inputs=...)``).
Nothing read changes, so the numbers are the same; what a backward still computes (the gradients
of its inputs, the live parameters) runs the same kernels on the same tensors.

:func:`waiting_forwards` says, in the same spirit, which forwards' graphs wait for their backward
across other exchanges (what an engine may free meanwhile and refill, see
:class:`~p2pgan.model.recompute.ReleasableOutputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from p2pgan.model.blocks import NETWORKS, NetworkDef
from p2pgan.plan.program import FWD, Exchange, Local, LocalAction, Program


def discarded_after_step(program: Program) -> frozenset[str]:
    """The networks whose gradients the program resets after each of their optimizer steps,
    before the next one (looking past the iteration's end into the next)."""
    discarded = set()
    for net in NETWORKS:
        actions = [a.action for a in program.iteration if isinstance(a, Local) and a.network is net
                   and a.action in (LocalAction.ZERO_GRAD, LocalAction.STEP)]
        steps = [i for i, a in enumerate(actions) if a is LocalAction.STEP]
        if steps and all(actions[(i + 1) % len(actions)] is LocalAction.ZERO_GRAD for i in steps):
            discarded.add(net.name)
    return frozenset(discarded)


class GradientUse:
    """Which networks' gradients are read from here on, through one iteration at a time."""

    def __init__(self, program: Program) -> None:
        self.discarded = discarded_after_step(program)
        self.idle: set[str] = set()

    def start_iteration(self) -> None:
        """The previous iteration (or none) stepped every discarded network last."""
        self.idle = set(self.discarded)

    def after(self, action: Local, optimizers: Mapping[str, torch.optim.Optimizer | None]) -> None:
        """Follow ``action`` (already applied): a reset makes its network's gradients live, a step of a
        discarded network drops them."""
        network = action.network.name if action.network is not None else None
        if action.action is LocalAction.ZERO_GRAD:
            self.idle.discard(network)
        elif action.action is LocalAction.STEP and network in self.discarded:
            self.idle.add(network)
            if optimizers.get(network) is not None:
                optimizers[network].zero_grad(set_to_none=True)

    def live_params(self, params_of: Callable[[NetworkDef], Iterable[torch.nn.Parameter]]) -> list[torch.nn.Parameter]:
        """The parameters, among ``params_of(network)`` for every network, whose gradients are read."""
        return [p for net in NETWORKS if net.name not in self.idle for p in params_of(net)]


def waiting_forwards(program: Program) -> frozenset[int]:
    """The indices of the program's forward exchanges whose graphs wait across other exchanges
    before their backward (U-shaped: G's forward, back-propagated only after the whole D step)."""
    steps, found = program.iteration, set()
    for i, step in enumerate(steps):
        if not (isinstance(step, Exchange) and all(t.direction == FWD for t in step.trips)):
            continue
        phases = {t.phase for t in step.trips}
        following = next((s for s in steps[i + 1:] if isinstance(s, Exchange)), None)
        served = {phase for t in following.trips for _, phase in t.grad_of} if following is not None else set()
        if not phases <= served:
            found.add(i)
    return frozenset(found)
