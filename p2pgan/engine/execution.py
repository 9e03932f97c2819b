"""Where and how blocks execute: the device, and each block's memory format.

The cohort engine places its blocks through :func:`place_blocks` with :func:`default_policy`;
a node that does the same runs the same kernels on the same layouts, and both stay equal bit for
bit. Equality needs exactly that: Adam's first steps move a parameter by about ``lr * sign(grad)``, and the gradients of
the biases in front of a BatchNorm are rounding noise around zero, so any change of summation
order (another memory format, TF32, a grouped kernel) moves those parameters by up to ``2 * lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from p2pgan.errors import P2PGanError

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class KernelPolicy:
    """The device blocks live on and the blocks whose convolutions run in ``channels_last``.

    A block listed in ``channels_last`` has its 4-D weights in that format; its inputs are
    converted by the kernels themselves (a convolution follows its weight's format). Every
    other block keeps the contiguous format and gets contiguous inputs.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: frozenset[str] = frozenset()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_device(name: str, source: str = "execution.device") -> torch.device:
    """``cpu``, ``cuda`` (an error when no CUDA device is usable) or ``auto``."""
    if name not in DEVICES:
        raise P2PGanError(f"{source}: unknown device {name!r} (expected one of: {', '.join(DEVICES)})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise P2PGanError(f"{source}: cuda asked for, but this machine has no usable CUDA device "
                          "(expected device: cpu or auto)")
    return torch.device(name)


CHANNELS_LAST_CANDIDATES: frozenset[str] = frozenset({"g1", "g2", "g3", "g4", "d0", "d1", "d2", "d3"})
"""Every convolution block: ``channels_last`` candidates on the CPU. Measured with
``tools/bench_step.py --impls cohort cohort-cl`` on the 2-core development machine (one thread,
CPU time): a whole iteration 1.1-1.2x faster at 12 clients, width 0.25, batch 32 and 1.1x at
width 1, batch 64; leaving out the blocks that are slower alone (g1 after the projection's
reshape, g4) gained nothing on a whole iteration."""

CPU_CHANNELS_LAST: frozenset[str] = frozenset()
"""Blocks the cohort runs in ``channels_last`` by default on the CPU: none. Another memory format
changes the kernels' summation order, which moves Adam's first steps by up to ~4e-3, so the cohort
would no longer equal the node engine (or the reference step) within 1e-5; the 1.1-1.2x is not
worth that. ``KernelPolicy(device, CHANNELS_LAST_CANDIDATES)`` opts in."""


def default_policy(device: torch.device) -> KernelPolicy:
    return KernelPolicy(device, CPU_CHANNELS_LAST if device.type == "cpu" else frozenset())


def place_blocks(blocks: Mapping[str, nn.Module], policy: KernelPolicy) -> None:
    """Move ``blocks`` to the policy's device and memory formats, in place.

    Parameters keep their identity (``Module.to`` swaps their data), so optimizers built before
    or after see the same tensors.
    """
    for name, block in blocks.items():
        block.to(device=policy.device)
        if name in policy.channels_last:
            block.to(memory_format=torch.channels_last)
        elif policy.channels_last:
            # A convolution follows its input's format too: hand this block contiguous inputs.
            block.register_forward_pre_hook(_contiguous_input)


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def exact_cuda() -> None:
    """fp32 kernels without TF32 and with deterministic algorithms: the numbers a CPU run would
    give up to summation order, identical from one run to the next. Process-wide (cuDNN and
    cuBLAS read these flags), so it is set once by the run's composition root."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
