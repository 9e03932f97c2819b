"""The server's batched middle: every block once, over the concatenated batches of the clients
that pass through it, in client-id order (what keeps every engine and transport bit-identical).

Memory (the numbers are the same; see :mod:`p2pgan.model.recompute`): a block whose users are
the previous block's users takes that block's output as it is (a concatenation of its
consecutive slices would be the same tensor again, copied); where the users change, the
concatenation a block's first layer keeps for its backward is kept as its pieces (the previous
output's slices and the clients' uploaded leaves, which the graph holds anyway); and a block
whose whole output goes on to the next block keeps it as its recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from p2pgan.model.recompute import SavedTensors


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
    users_of = {name: [c for c, part in server_parts.items() if name in part] for name in block_names}
    order = [name for name in block_names if users_of[name]]
    previous: tuple[list[str], torch.Tensor] | None = None
    with SavedTensors() as saved:
        for i, name in enumerate(order):
            users = users_of[name]
            inputs = [done.flowing.get(c, leaves[c]) for c in users]
            sizes = [x.shape[0] for x in inputs]
            # Only an output that the next block takes whole (and no client takes away) may be
            # rebuilt: any slice that leaves is held, and with it the whole tensor.
            saved.offering = i + 1 < len(order) and users_of[order[i + 1]] == users
            if previous is not None and previous[0] == users:
                out = blocks[name](previous[1])
            elif len(inputs) == 1:
                out = blocks[name](inputs[0])
            else:
                batched = torch.cat(inputs)
                saved.add_pieces(batched, inputs)
                out = blocks[name](batched)
            for c, chunk in zip(users, out.split(sizes)):
                done.flowing[c] = chunk
                if name == keep:
                    done.kept[c] = chunk
            done.samples_per_block[name] = sum(sizes)
            previous = (users, out)
    return done


def keep_features(store: dict[str, torch.Tensor], kept: Mapping[str, torch.Tensor]) -> None:
    """Store each client's clustering features as a copy, into the previous copy's place where it
    fits: a view would keep the whole batched output alive until the next pass, and a copy made
    anew would land mid-iteration and stay there."""
    for client, chunk in kept.items():
        previous = store.get(client)
        if previous is not None and previous.shape == chunk.shape:
            previous.copy_(chunk.detach())
        else:
            store[client] = chunk.detach().clone()
