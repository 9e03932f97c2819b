"""The intra-op thread count a scenario's run gets when the user names none."""

from __future__ import annotations

from p2pgan.config.schema import Scenario
from p2pgan.model.costs import profile_model
from p2pgan.runtime import default_threads


def largest_kernel_flops(scenario: Scenario) -> float:
    """FLOPs of the largest forward kernel call a client makes: its biggest block on one batch."""
    costs = profile_model(scenario.model_spec)
    return max(block.fwd_flops for block in costs.blocks) * scenario.training.batch_size


def threads_for(scenario: Scenario) -> int:
    """:func:`p2pgan.runtime.default_threads` for this scenario's model and batch size."""
    return default_threads(kernel_flops=largest_kernel_flops(scenario))
