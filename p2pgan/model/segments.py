"""Cutting networks into client head, server middle and client tail segments."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, NETWORKS, Block, NetworkDef
from p2pgan.model.recompute import SavedTensors


@dataclass(frozen=True)
class ClientCut:
    """How many movable blocks a client keeps at each end of G and D (docs/design.md §1.1 cut bits)."""

    g_head: int
    g_tail: int
    d_head: int
    d_tail: int

    @classmethod
    def of(cls, values: Sequence[int]) -> "ClientCut":
        if len(values) != 4:
            raise ValueError(f"a cut has 4 values (g_head, g_tail, d_head, d_tail), got {len(values)}")
        return cls(*(int(v) for v in values))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.g_head, self.g_tail, self.d_head, self.d_tail)

    def for_network(self, net: NetworkDef) -> tuple[int, int]:
        return (self.g_head, self.g_tail) if net is GENERATOR else (self.d_head, self.d_tail)

    def __str__(self) -> str:
        return "(" + ",".join(str(v) for v in self.as_tuple()) + ")"


@dataclass(frozen=True)
class NetworkSplit:
    """Which blocks of one network run where for one client."""

    network: str
    head: tuple[str, ...]
    server: tuple[str, ...]
    tail: tuple[str, ...]

    @property
    def client_blocks(self) -> tuple[str, ...]:
        return self.head + self.tail


@dataclass(frozen=True)
class ClientSplit:
    """A client's segments of both networks. ``full_local`` clients hold every block."""

    generator: NetworkSplit
    discriminator: NetworkSplit

    @property
    def client_blocks(self) -> tuple[str, ...]:
        return self.generator.client_blocks + self.discriminator.client_blocks

    @property
    def server_blocks(self) -> tuple[str, ...]:
        return self.generator.server + self.discriminator.server


def legal_cut_values(net: NetworkDef) -> tuple[range, range]:
    return range(net.layout.movable_head + 1), range(net.layout.movable_tail + 1)


def all_cut_options() -> list[ClientCut]:
    """Every legal cut (16 for the reference model)."""
    g_head, g_tail = legal_cut_values(GENERATOR)
    d_head, d_tail = legal_cut_values(DISCRIMINATOR)
    return [ClientCut(*values) for values in itertools.product(g_head, g_tail, d_head, d_tail)]


def validate_cut(cut: ClientCut) -> str | None:
    """``None`` when legal, else what is wrong."""
    for net in NETWORKS:
        heads, tails = legal_cut_values(net)
        head, tail = cut.for_network(net)
        if head not in heads or tail not in tails:
            return (f"{net.name} cut ({head},{tail}) is impossible: head must be in "
                    f"0..{heads[-1]} and tail in 0..{tails[-1]}")
    return None


def split_network(net: NetworkDef, head_cut: int, tail_cut: int, full_local: bool = False) -> NetworkSplit:
    names = net.block_names
    if full_local:
        return NetworkSplit(net.name, names, (), ())
    layout = net.layout
    head_end = layout.fixed_head + head_cut
    tail_start = len(names) - layout.fixed_tail - tail_cut
    return NetworkSplit(net.name, names[:head_end], names[head_end:tail_start], names[tail_start:])


def split_client(cut: ClientCut, full_local: bool = False) -> ClientSplit:
    problem = None if full_local else validate_cut(cut)
    if problem:
        raise ValueError(problem)
    return ClientSplit(
        split_network(GENERATOR, *cut.for_network(GENERATOR), full_local=full_local),
        split_network(DISCRIMINATOR, *cut.for_network(DISCRIMINATOR), full_local=full_local),
    )


class Segment(nn.Module):
    """Consecutive blocks run as one unit. Labels reach only the blocks that consume them."""

    def __init__(self, blocks: Mapping[str, Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(dict(blocks))

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(self.blocks.keys())

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        blocks = list(self.blocks.values())
        if not (torch.is_grad_enabled() and self.training and len(blocks) > 1):
            for block in blocks:
                x = block(x, labels) if block.needs_labels else block(x)
            return x
        # Inner outputs are kept for backward as their recipes; the last one leaves the segment.
        with SavedTensors() as saved:
            for i, block in enumerate(blocks):
                saved.offering = i < len(blocks) - 1
                x = block(x, labels) if block.needs_labels else block(x)
        return x
