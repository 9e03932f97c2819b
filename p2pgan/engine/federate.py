"""The server's half of a round's end, for every server node kind: collect the parameters of the
clients at this round's federation, let the strategy aggregate, load the server's share, send each
its own; and a client's half of receiving what it loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from p2pgan.engine.participation import Participation
from p2pgan.engine.port import NodePort
from p2pgan.errors import P2PGanError
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import NETWORKS
from p2pgan.plan.run import RunPlan
from p2pgan.protocol.federation import Aggregator, ClientUpdate, FederationInput, FederationResult
from p2pgan.protocol.messages import MessageKind, Phase
from p2pgan.protocol.params import flatten_blocks, float_state, unflatten_blocks

BLOCK_ORDER = tuple(name for net in NETWORKS for name in net.block_names)


async def federate_round(port: NodePort, plan: RunPlan, round_: int, blocks: Mapping[str, torch.nn.Module],
                         strategy: Aggregator, features: Mapping[str, torch.Tensor], num_domains: int,
                         participation: Participation | None = None,
                         held: Mapping[str, Sequence[str]] | None = None,
                         ) -> tuple[FederationResult, dict[str, dict[str, float]]]:
    """Returns the aggregation and each client's round losses (sent beside its parameters).

    With ``participation`` only the clients at this round's federation send parameters (and the
    strategy aggregates over them alone, their features alone); the aggregate goes to them and to
    the clients that rejoin next round, which load their cluster's model of the blocks they hold
    (``held``: per client; default the blocks of its split).
    """
    federated = (participation.at_federation(round_) if participation is not None
                 else frozenset(plan.client_ids))
    lost = _lost_hook(participation, round_, plan.schedule.steps_per_round - 1)
    # Client-id order, never arrival order.
    messages = await port.receive_each(MessageKind.PARAMS, [c for c in plan.client_ids if c in federated],
                                       Phase.FEDERATE, lost)
    updates: dict[str, ClientUpdate] = {}
    losses: dict[str, dict[str, float]] = {}
    for client in plan.clients:
        msg = messages.get(client.client_id)
        if msg is None:
            continue
        losses[client.client_id] = {k: float(v) for k, v in msg.meta.items() if k != "num_examples"}
        updates[client.client_id] = ClientUpdate(client.client_id, client.num_examples, client.cut.as_tuple(),
                                                 unflatten_blocks(_on_host(msg.tensors)), losses[client.client_id])
    if not updates:
        raise P2PGanError(f"round {round_}: no client's parameters reached the federation")
    inputs = FederationInput(round=round_, updates=updates,
                             server_blocks={name: _on_host(float_state(block)) for name, block in blocks.items()},
                             features=_on_host({c: t for c, t in features.items() if c in updates}),
                             num_domains=num_domains, block_order=BLOCK_ORDER)
    port.state("computing")
    result = strategy.aggregate(inputs)
    # Priced as one read of every float element the clients sent.
    moved = sum(t.numel() for u in updates.values() for s in u.blocks.values() for t in s.values())
    port.computed((), Phase.FEDERATE, "fwd", len(updates), float(moved))
    for name, state in result.server_blocks.items():
        blocks[name].load_state_dict(state, strict=False)
    rejoining = participation.rejoining(round_ + 1) if participation is not None else frozenset()
    replies = []
    for client in plan.clients:
        cid = client.client_id
        if cid in updates:
            replies.append(port.message(MessageKind.AGGREGATE, cid, Phase.FEDERATE,
                                        flatten_blocks(result.client_blocks[cid])))
        elif cid in rejoining and participation is not None:
            model = participation.rejoin_model(cid, result, {c.client_id: c.num_examples for c in plan.clients})
            names = held[cid] if held is not None else client.split.client_blocks
            replies.append(port.message(MessageKind.AGGREGATE, cid, Phase.FEDERATE,
                                        flatten_blocks({name: model[name] for name in names})))
    await port.send_each(replies, _lost_hook(participation, round_ + 1, 0))
    if participation is not None:
        participation.remember(result)
    return result, losses


def _on_host(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strategies aggregate on the CPU, whatever device the nodes compute on (as the cohort
    engine's do): the same arithmetic, and results the run writes as they are. The CPU's own
    tensors are not copied."""
    return {name: t.to("cpu") for name, t in tensors.items()}


def _lost_hook(participation: Participation | None, round_: int, step: int):
    def lost(peer: str, problem: str) -> None:
        if participation is None:  # only a port with a peer deadline loses peers
            raise P2PGanError(f"peer {peer}: {problem}")
        participation.drop(peer, round_, step, problem)

    return lost


async def send_params(port: NodePort, blocks: Mapping[str, torch.nn.Module], num_examples: int,
                      losses: Mapping[str, float]) -> None:
    """A client sends the server its blocks' parameters for the round's federation, with its
    example count and round losses (the port is at the round's federation step)."""
    states = {name: float_state(block) for name, block in blocks.items()}
    meta: dict[str, str | int | float] = {"num_examples": num_examples, **losses}
    await port.send(port.message(MessageKind.PARAMS, SERVER_ID, Phase.FEDERATE, flatten_blocks(states), meta))


async def load_aggregate(port: NodePort, blocks: Mapping[str, torch.nn.Module]) -> None:
    """A client receives the round's AGGREGATE from the server and loads it into ``blocks``."""
    reply = await port.receive(MessageKind.AGGREGATE, SERVER_ID, Phase.FEDERATE)
    for name, state in unflatten_blocks(reply.tensors).items():
        blocks[name].load_state_dict(state, strict=False)
    port.forget_received()
