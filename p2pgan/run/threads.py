"""The intra-op thread count a scenario's run gets when the user names none."""

from __future__ import annotations

from p2pgan.config.schema import Scenario
from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.runtime import default_threads


def largest_kernel_flops(scenario: Scenario) -> float:
    """FLOPs of the largest forward kernel call a client makes: its biggest block on one batch."""
    return kernel_flops(scenario.model_spec, scenario.training.batch_size)


def kernel_flops(spec: ModelSpec, batch_size: int) -> float:
    """:func:`largest_kernel_flops` for a model and batch size."""
    return max(block.fwd_flops for block in profile_model(spec).blocks) * batch_size


def threads_for(scenario: Scenario) -> int:
    """:func:`p2pgan.runtime.default_threads` for this scenario's model and batch size."""
    return default_threads(kernel_flops=largest_kernel_flops(scenario))
