"""The CPU kernels' memory format: every convolution block is built in ``channels_last`` (the
format the CPU runs fastest), every engine keeps that format, and a block's numbers do not depend
on the format its input or its output's gradient arrives in (a wire delivers contiguous tensors,
the memory transport passes them as they are)."""

from __future__ import annotations

import copy

import pytest
import torch

from p2pgan.engine.client import ClientNode
from p2pgan.engine.execution import (CPU_CHANNELS_LAST, KernelPolicy, default_policy, place_blocks)
from p2pgan.model.blocks import CHANNELS_LAST_BLOCKS, ModelSpec, build_initial_blocks
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import U_SHAPED
from p2pgan.plan.run import ClientPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.bus import EventBus

SPEC = ModelSpec(width=0.125, z_dim=8)
CPU = torch.device("cpu")
CONVOLUTIONS = ("g1", "g2", "g3", "g4", "d0", "d1", "d2", "d3")
INPUTS = {"g1": (32, 7, 7), "g2": (16, 14, 14), "g3": (16, 14, 14), "g4": (8, 28, 28),
          "d0": (1, 28, 28), "d1": (8, 14, 14), "d2": (16, 7, 7), "d3": (16, 7, 7)}


def in_channels_last(t: torch.Tensor) -> bool:
    """The strides ``channels_last`` gives this shape (not ``is_contiguous``: for g4's one output
    channel both formats count as contiguous, yet the kernels follow the strides)."""
    return t.dim() == 4 and t.stride() == torch.empty(t.shape, memory_format=torch.channels_last).stride()


def in_contiguous_format(t: torch.Tensor) -> bool:
    return t.stride() == torch.empty(t.shape).stride()


def conv_weight(block: torch.nn.Module) -> torch.Tensor:
    return next(p for p in block.parameters() if p.dim() == 4)


def test_every_convolution_is_built_in_channels_last_and_nothing_else():
    assert CHANNELS_LAST_BLOCKS == frozenset(CONVOLUTIONS)
    blocks = build_initial_blocks(SPEC, 3)
    for name in CONVOLUTIONS:
        assert in_channels_last(conv_weight(blocks[name])), name
    for name in ("g0", "d4"):
        assert all(in_contiguous_format(p) for p in blocks[name].parameters()), name
    # The format is layout only: the values are those of the contiguous build.
    plain = build_initial_blocks(SPEC, 3, channels_last=frozenset())
    for name in blocks:
        assert all(in_contiguous_format(p) for p in plain[name].parameters()), name
        for a, b in zip(blocks[name].state_dict().values(), plain[name].state_dict().values()):
            assert torch.equal(a, b), name


def test_device_defaults():
    assert default_policy(CPU).channels_last == CPU_CHANNELS_LAST == CHANNELS_LAST_BLOCKS
    assert KernelPolicy(client_threads=default_policy(CPU).client_threads) == default_policy(CPU)
    # CUDA keeps the contiguous format (not measured on a GPU); asking for a policy needs no GPU.
    assert KernelPolicy(torch.device("cuda")).channels_last == frozenset()
    assert KernelPolicy(CPU, frozenset({"g2"})).channels_last == frozenset({"g2"})


def test_place_blocks_puts_unlisted_blocks_back_to_contiguous():
    blocks = build_initial_blocks(SPEC, 3)
    params = {name: conv_weight(blocks[name]) for name in CONVOLUTIONS}
    place_blocks(blocks, KernelPolicy(CPU, frozenset({"g2", "d1"})))
    for name in CONVOLUTIONS:
        weight = conv_weight(blocks[name])
        assert weight is params[name], "parameters keep their identity (optimizers hold them)"
        assert in_channels_last(weight) == (name in ("g2", "d1")), name
        assert in_contiguous_format(weight) == (name not in ("g2", "d1")), name


def test_the_node_engine_runs_the_cohorts_default_formats():
    """Cohort = nodes needs the same kernels: a node, which never places its blocks, holds them in
    the formats the cohort's default policy places."""
    setup = NodeSetup(SPEC, profile_model(SPEC, batch=2), 5, 2e-4, (0.5, 0.999))
    plan = ClientPlan("c0", ClientCut(1, 1, 1, 1), 8)
    data = LocalData(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    node = ClientNode(setup, plan, Schedule(1, 1, 1, 4), data, endpoint=None, bus=EventBus(), program=U_SHAPED)
    placed = copy.deepcopy(node.blocks)
    place_blocks(placed, default_policy(CPU))
    for name, block in node.blocks.items():
        for (key, a), b in zip(block.state_dict().items(), placed[name].state_dict().values()):
            assert a.stride() == b.stride(), f"{name}.{key}"
    assert in_channels_last(conv_weight(node.blocks["g3"]))


def _fwd_bwd(block: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, labels: torch.Tensor):
    block = copy.deepcopy(block)
    x = x.detach().clone().requires_grad_(True)
    out = block(x, labels) if block.needs_labels else block(x)
    out.backward(grad)
    return ([out.detach(), x.grad] + [p.grad for p in block.parameters()]
            + [b for b in block.buffers() if b.is_floating_point()])


@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_a_channels_last_block_gives_the_same_bits_whatever_the_formats_it_is_handed(name):
    torch.manual_seed(0)
    block = build_initial_blocks(SPEC, 7)[name]
    labels = torch.randint(0, 10, (6,))
    x = torch.randn(6, *INPUTS[name])
    out = block(x, labels) if block.needs_labels else block(x)
    grad = torch.randn(out.shape)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    reference = _fwd_bwd(block, cl(x), cl(grad), labels)
    for x_in, grad_in in ((x, grad), (cl(x), grad), (x, cl(grad))):
        for a, b in zip(_fwd_bwd(block, x_in, grad_in, labels), reference):
            assert torch.equal(a, b), name
    # The contiguous block computes the same values another way (its parameter gradients may not
    # be compared: a bias in front of a BatchNorm has a gradient of pure rounding noise).
    plain = copy.deepcopy(block).to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(_fwd_bwd(plain, x, grad, labels)[0], reference[0], atol=1e-5, rtol=1e-4)
