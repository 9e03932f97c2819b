"""The server's batched middle: every block once, over the concatenated batches of the clients
that pass through it, in client-id order (what keeps every engine and transport bit-identical)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class BatchedPass:
    flowing: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each client's output of its last server block."""
    samples_per_block: dict[str, int] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each client's slice of the ``keep`` block's output (the clustering feature)."""


def run_middle(blocks: Mapping[str, torch.nn.Module], block_names: tuple[str, ...],
               server_parts: Mapping[str, tuple[str, ...]], leaves: Mapping[str, torch.Tensor],
               keep: str | None = None) -> BatchedPass:
    """``server_parts``: per client, in id order, the blocks the server runs for it."""
    done = BatchedPass()
    for name in block_names:
        users = [c for c, part in server_parts.items() if name in part]
        if not users:
            continue
        inputs = [done.flowing.get(c, leaves[c]) for c in users]
        sizes = [x.shape[0] for x in inputs]
        out = blocks[name](torch.cat(inputs) if len(inputs) > 1 else inputs[0])
        for c, chunk in zip(users, out.split(sizes)):
            done.flowing[c] = chunk
            if name == keep:
                done.kept[c] = chunk
        done.samples_per_block[name] = sum(sizes)
    return done
