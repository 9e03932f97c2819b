"""Where and how blocks execute: the device, and each block's memory format.

Blocks are built in the CPU's formats (:data:`~p2pgan.model.blocks.CHANNELS_LAST_BLOCKS`), which
the node engine keeps; the cohort engine places its blocks through :func:`place_blocks` with
:func:`default_policy`, which on the CPU is the same formats, so both run the same kernels on the
same layouts and stay equal bit for bit. Equality needs exactly that: Adam's first steps move a parameter by about ``lr * sign(grad)``, and the gradients of
the biases in front of a BatchNorm are rounding noise around zero, so any change of summation
order (another memory format, TF32, a grouped kernel) moves those parameters by up to ``2 * lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from p2pgan.errors import P2PGanError
from p2pgan.model.blocks import CHANNELS_LAST_BLOCKS
from p2pgan.runtime import available_cores

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class KernelPolicy:
    """The device blocks live on, the blocks whose convolutions run in ``channels_last``
    (``None``: the device's default, :func:`default_channels_last`), and how many clients' blocks
    run at once on threads of their own (:class:`~p2pgan.engine.workers.ClientThreads`; it does
    not change the numbers).

    A block listed in ``channels_last`` has its 4-D weights in that format; its inputs are
    converted by the kernels themselves (a convolution follows its weight's format). Every
    other block keeps the contiguous format and gets contiguous inputs.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: frozenset[str] | None = None
    client_threads: int = 1

    def __post_init__(self) -> None:
        if self.channels_last is None:
            object.__setattr__(self, "channels_last", default_channels_last(self.device))

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


CHANNELS_LAST_CANDIDATES: frozenset[str] = CHANNELS_LAST_BLOCKS
"""Every convolution block: the ``channels_last`` candidates."""

CPU_CHANNELS_LAST: frozenset[str] = CHANNELS_LAST_BLOCKS
"""Blocks in ``channels_last`` on the CPU: every convolution, as the blocks are built
(:data:`~p2pgan.model.blocks.CHANNELS_LAST_BLOCKS`), so a node engine that never places its
blocks runs the same kernels as the cohort. Equality across engines holds because both use the
same format; the format itself moves the numbers (see the module's note), so changing this
list changes a run's numbers, as any kernel change does."""

CUDA_CHANNELS_LAST: frozenset[str] = frozenset()
"""On CUDA every block contiguous, as before ``channels_last`` became the CPU's format: not
measured on a GPU yet (``tools/bench_step.py --device cuda --cl-blocks ...`` does)."""


def default_channels_last(device: torch.device) -> frozenset[str]:
    return CPU_CHANNELS_LAST if device.type == "cpu" else CUDA_CHANNELS_LAST


def default_policy(device: torch.device) -> KernelPolicy:
    return KernelPolicy(device, client_threads=default_client_threads(device))


def default_client_threads(device: torch.device, cores: int | None = None) -> int:
    """A thread per core for the clients where each kernel runs on one intra-op thread on the CPU
    (the small-kernel default of :func:`p2pgan.runtime.default_threads`, or ``--threads 1``):
    otherwise all but one core would wait. Where torch splits each kernel over the cores itself,
    or on a GPU (one stream, kernels queued in turn), one."""
    if device.type != "cpu" or torch.get_num_threads() != 1:
        return 1
    return cores if cores is not None else available_cores()


def place_blocks(blocks: Mapping[str, nn.Module], policy: KernelPolicy) -> None:
    """Move ``blocks`` to the policy's device and memory formats, in place.

    Parameters keep their identity (``Module.to`` swaps their data), so optimizers built before
    or after see the same tensors.
    """
    for name, block in blocks.items():
        block.to(device=policy.device)
        if name in policy.channels_last:
            block.to(memory_format=torch.channels_last)
        else:
            # Blocks are built in the CPU's formats: put this one back.
            block.to(memory_format=torch.contiguous_format)
            if policy.channels_last:
                # A convolution follows its input's format too: hand this block contiguous inputs.
                block.register_forward_pre_hook(_contiguous_input)


def place_node_blocks(blocks: Mapping[str, nn.Module], device: torch.device) -> None:
    """A node's blocks on ``device`` in its default formats (:func:`default_policy`'s, as the
    cohort places them, so both engines run the same kernels there). On the CPU the blocks are
    already built so, and stay as they are."""
    if device.type != "cpu":
        place_blocks(blocks, KernelPolicy(device))


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
