"""The server's half of a round's end, for every server node kind: collect each client's
parameters, let the strategy aggregate, load the server's share, send each client its own."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from p2pgan.engine.port import NodePort
from p2pgan.model.blocks import NETWORKS
from p2pgan.plan.run import RunPlan
from p2pgan.protocol.federation import Aggregator, ClientUpdate, FederationInput, FederationResult
from p2pgan.protocol.messages import MessageKind, Phase
from p2pgan.protocol.params import flatten_blocks, float_state, unflatten_blocks

BLOCK_ORDER = tuple(name for net in NETWORKS for name in net.block_names)


async def federate_round(port: NodePort, plan: RunPlan, round_: int, blocks: Mapping[str, torch.nn.Module],
                         strategy: Aggregator, features: Mapping[str, torch.Tensor], num_domains: int,
                         ) -> tuple[FederationResult, dict[str, dict[str, float]]]:
    """Returns the aggregation and each client's round losses (sent beside its parameters)."""
    updates: dict[str, ClientUpdate] = {}
    losses: dict[str, dict[str, float]] = {}
    for client in plan.clients:  # client-id order, never arrival order
        msg = await port.receive(MessageKind.PARAMS, client.client_id, Phase.FEDERATE)
        losses[client.client_id] = {k: float(v) for k, v in msg.meta.items() if k != "num_examples"}
        updates[client.client_id] = ClientUpdate(client.client_id, client.num_examples, client.cut.as_tuple(),
                                                 unflatten_blocks(msg.tensors), losses[client.client_id])
    inputs = FederationInput(round=round_, updates=updates,
                             server_blocks={name: float_state(block) for name, block in blocks.items()},
                             features=dict(features), num_domains=num_domains, block_order=BLOCK_ORDER)
    port.state("computing")
    result = strategy.aggregate(inputs)
    # Priced as one read of every float element the clients sent.
    moved = sum(t.numel() for u in updates.values() for s in u.blocks.values() for t in s.values())
    port.computed((), Phase.FEDERATE, "fwd", len(updates), float(moved))
    for name, state in result.server_blocks.items():
        blocks[name].load_state_dict(state, strict=False)
    for client in plan.clients:
        await port.send(port.message(MessageKind.AGGREGATE, client.client_id, Phase.FEDERATE,
                                     flatten_blocks(result.client_blocks[client.client_id])))
    return result, losses
