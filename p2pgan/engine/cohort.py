"""The cohort engine: one process executes the program for every client at once, no transport.

It runs the same :class:`~p2pgan.plan.program.Program` as the node pair in
:mod:`p2pgan.engine.client` and :mod:`p2pgan.engine.server`, with the same numbers:

* every client keeps its own blocks, its own random stream (``node_seed``) and batch sampler,
  and its own Adam state (one foreach Adam per network holds every client's parameters; Adam's
  state is per parameter, and the foreach kernels equal the per-tensor ones bit for bit);
* client blocks see only their client's batch (BatchNorm statistics per client); every server
  block runs once over the concatenation of its users' batches in client-id order;
* each message boundary is a graph cut (``detach``) where a node would have received a copy,
  so every backward runs the same autograd calls in the same order.

What it drops is the transport: no message copies, no event-loop hops, no per-message
bookkeeping. Per-client kernels stay per client: on the CPU they beat stacked (grouped)
kernels for this model (docs/design.md §4), and equality with the node engine needs the same
kernels on the same shapes (see :mod:`p2pgan.engine.execution`).

It publishes what the nodes publish (compute and transfer events with the same message ids
and bytes, every client's losses, the server's ``RoundAggregated``), so the latency files and
the results folder are written as for a node run.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field

import torch

from p2pgan.bus import EventBus
from p2pgan.engine.client import BatchSampler
from p2pgan.engine.loops import RoundCheckpoint, RoundLosses
from p2pgan.engine.state import (NodeState, blocks_state, copy as state_copy, generator_state, load_blocks,
                                 load_generator)
from p2pgan.engine.cohort_port import CohortPort
from p2pgan.engine.cohort_state import load_optimizer_share, optimizer_share
from p2pgan.engine.execution import KernelPolicy, place_blocks
from p2pgan.errors import P2PGanError
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import DISCRIMINATOR, NETWORKS, Block, NetworkDef, build_initial_blocks
from p2pgan.model.segments import NetworkSplit, Segment
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import BWD, FWD, Exchange, Local, LocalAction, Program, RoundTrip, network_split
from p2pgan.plan.run import ClientPlan, RunPlan, feature_block
from p2pgan.plan.setup import NodeSetup, node_seed
from p2pgan.protocol.events import ClientLosses, NodeStateEvent, RoundAggregated
from p2pgan.protocol.federation import Aggregator, BlockState, ClientUpdate, FederationInput, FederationResult
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKind, Phase
from p2pgan.protocol.params import float_state
from p2pgan.engine.batching import run_middle
from p2pgan.engine.locals import apply_optimizer_action, compute_loss

LOSS_NAMES = ("d_real", "d_fake", "d_loss", "g_loss")


@dataclass
class _Pass:
    """One forward round trip on a client: the head's output and the tail's input."""

    head_out: torch.Tensor
    tail_in: torch.Tensor


@dataclass
class _ClientIteration:
    """What one iteration holds for one client while it runs (the node's ``_Iteration``, plus the
    tensors that would be in flight between it and the server)."""

    labels: torch.Tensor
    tensors: dict[str, torch.Tensor]
    passes: dict[Phase, _Pass] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    uploads: dict[Phase, tuple[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    """What the client sent the server in this iteration: message id and tensors, per phase."""
    downloads: dict[Phase, tuple[str, dict[str, torch.Tensor]]] = field(default_factory=dict)

    def source(self, name: str) -> torch.Tensor:
        if name.endswith("_detached"):
            return self.tensors[name.removesuffix("_detached")].detach()
        return self.tensors[name]

    @property
    def batch(self) -> int:
        return int(self.labels.shape[0])


class _Client:
    """One client's own state: plan, data, blocks, random stream, sampler."""

    def __init__(self, plan: ClientPlan, data: LocalData, blocks: dict[str, Block], setup: NodeSetup,
                 batch_size: int, device: torch.device) -> None:
        self.id = plan.client_id
        self.plan = plan
        self.num_examples = len(data)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.blocks = blocks
        self.generator = torch.Generator().manual_seed(node_seed(setup.seed, self.id))
        self.sampler = BatchSampler(len(data), batch_size, self.generator)
        self._segments: dict[tuple[str, ...], Segment] = {}

    def params(self, network: NetworkDef) -> list[torch.nn.Parameter]:
        """The parameters its own optimizer for ``network`` would hold, in that optimizer's order."""
        return [p for n in network_split(self.plan.split, network).client_blocks for p in self.blocks[n].parameters()]

    def split(self, trip: RoundTrip) -> NetworkSplit:
        return network_split(self.plan.split, trip.network)

    def segment(self, names: tuple[str, ...]) -> Segment:
        segment = self._segments.get(names)
        if segment is None:
            segment = self._segments[names] = Segment({n: self.blocks[n] for n in names})
        return segment


@dataclass
class _ServerGraph:
    """The server's batched forward of one phase, kept until its backward."""

    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    samples_per_block: dict[str, int] = field(default_factory=dict)


def check_program(program: Program) -> None:
    """The cohort engine executes client-first programs (Exchange and Local steps) only."""
    for step in program.iteration:
        if not isinstance(step, (Exchange, Local)):
            raise P2PGanError(f"execution.engine: the cohort engine cannot run program {program.name!r} "
                              f"({type(step).__name__} steps; expected engine: nodes)")


class CohortEngine:
    """Every client and the server of a split run, executed together in this process."""

    def __init__(self, setup: NodeSetup, plan: RunPlan, client_data: dict[str, LocalData], aggregator: Aggregator,
                 num_domains: int, program: Program, bus: EventBus, policy: KernelPolicy | None = None) -> None:
        check_program(program)
        self._setup = setup
        self._plan = plan
        self._aggregator = aggregator
        self._num_domains = num_domains
        self._program = program
        self._bus = bus
        self.policy = policy or KernelPolicy()
        device = self.policy.device
        template = build_initial_blocks(setup.model, setup.seed)
        self.clients: list[_Client] = []
        for client_plan in plan.clients:
            blocks = {name: copy.deepcopy(template[name]) for name in client_plan.split.client_blocks}
            place_blocks(blocks, self.policy)
            self.clients.append(_Client(client_plan, client_data[client_plan.client_id], blocks, setup,
                                        plan.schedule.batch_size, device))
        self.server_blocks = {name: template[name] for name in plan.server_blocks()}
        place_blocks(self.server_blocks, self.policy)
        self._optimizers = {net.name: self._optimizer(net) for net in NETWORKS}
        self._through = {net.name: tuple(c for c in self.clients if network_split(c.plan.split, net).server)
                         for net in NETWORKS}
        self._feature_block = feature_block(DISCRIMINATOR)
        self._features: dict[str, torch.Tensor] = {}
        self._port = CohortPort(bus, setup.costs)

    def _server_params(self, network: NetworkDef) -> list[torch.nn.Parameter]:
        return [p for n, b in self.server_blocks.items() if n in network.block_names for p in b.parameters()]

    def _optimizer(self, network: NetworkDef) -> torch.optim.Optimizer | None:
        params = [p for c in self.clients for p in c.params(network)] + self._server_params(network)
        optimizer = self._setup.adam(params)
        if optimizer is not None:
            # One multi-tensor update over the whole cohort; per element the same arithmetic.
            for group in optimizer.param_groups:
                group["foreach"] = True
        return optimizer

    # -- the schedule ---------------------------------------------------------------------------

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        """Every round of the schedule from ``first_round``; after each round's federation every
        node's state goes to ``checkpoint``, as the node loops hand theirs. Yields to the event
        loop between iterations, so the round closer's records are published while training goes on."""
        schedule = self._plan.schedule
        for round_ in range(first_round, schedule.rounds + 1):
            round_losses = {c.id: RoundLosses() for c in self.clients}
            for step in range(schedule.steps_per_round):
                for losses in self.iteration(round_, step):
                    round_losses[losses.node].add(losses)
                    self._bus.publish(losses)
                await asyncio.sleep(0)
            self.federate(round_, {cid: losses.means() for cid, losses in round_losses.items()})
            if checkpoint is not None:
                for state in self.state_dicts().values():
                    checkpoint(round_, state)
            await asyncio.sleep(0)
        for node in (*(c.id for c in self.clients), SERVER_ID):
            self._bus.publish(NodeStateEvent(node, "done"))

    def iteration(self, round_: int, step: int) -> list[ClientLosses]:
        self._port.at(round_, step)
        its = {c.id: self._draw(c) for c in self.clients}
        graphs: dict[Phase, _ServerGraph] = {}
        for action in self._program.iteration:
            if isinstance(action, Exchange):
                for trip in action.trips:
                    for client in self.clients:
                        self._client_up(client, trip, its[client.id])
                for trip in action.trips:
                    through = self._through[trip.network.name]
                    if trip.direction == FWD:
                        graphs[trip.phase] = self._server_forward(trip, through, its)
                    else:
                        self._server_backward(trip, through, {name: graphs[phase] for name, phase in trip.grad_of}, its)
                for trip in action.trips:
                    for client in self.clients:
                        self._client_down(client, trip, its[client.id])
            elif isinstance(action, Local):
                self._local(action, its)
        return self._losses(round_, step, its)

    def federate(self, round_: int, losses: dict[str, dict[str, float]]) -> FederationResult:
        """Every client's blocks up, the strategy's aggregate, everyone loads its share."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        updates: dict[str, ClientUpdate] = {}
        sent: dict[str, dict[str, float]] = {}
        for client in self.clients:
            states = {name: _host_copy(float_state(block)) for name, block in client.blocks.items()}
            msg_id = self._port.sent(MessageKind.PARAMS, client.id, SERVER_ID, Phase.FEDERATE,
                                     (t for state in states.values() for t in state.values()))
            self._port.received(SERVER_ID, msg_id)
            sent[client.id] = {key: float(value) for key, value in losses[client.id].items()}
            updates[client.id] = ClientUpdate(client.id, client.plan.num_examples, client.plan.cut.as_tuple(),
                                              states, sent[client.id])
        inputs = FederationInput(
            round=round_,
            updates=updates,
            server_blocks={name: _host_copy(float_state(block)) for name, block in self.server_blocks.items()},
            features={cid: feature.cpu() for cid, feature in self._features.items()},
            num_domains=self._num_domains,
            block_order=tuple(name for net in NETWORKS for name in net.block_names),
        )
        result = self._aggregator.aggregate(inputs)
        averaged = sum(t.numel() for u in updates.values() for s in u.blocks.values() for t in s.values())
        self._port.computed(SERVER_ID, (), Phase.FEDERATE, FWD, len(updates), float(averaged))
        for name, state in result.server_blocks.items():
            self.server_blocks[name].load_state_dict(state, strict=False)
        for client in self.clients:
            share = result.client_blocks[client.id]
            self._port.sent(MessageKind.AGGREGATE, SERVER_ID, client.id, Phase.FEDERATE,
                            (t for state in share.values() for t in state.values()))
            for name, state in share.items():
                client.blocks[name].load_state_dict(state, strict=False)
            self._port.forget_received(client.id)
        self._bus.publish(RoundAggregated(round_, result, sent))
        return result

    # -- node states (checkpoints) --------------------------------------------------------------

    def state_dicts(self) -> dict[str, NodeState]:
        """Every node's state in the node engine's names: the server, then each client."""
        server = {**blocks_state(self.server_blocks)}
        for net in NETWORKS:
            server.update(optimizer_share(net.name, self._optimizers[net.name], self._server_params(net)))
        server.update({f"features/{cid}": state_copy(t) for cid, t in self._features.items()})
        states = {SERVER_ID: _on_host(NodeState(SERVER_ID, server))}
        for client in self.clients:
            tensors = {**blocks_state(client.blocks)}
            for net in NETWORKS:
                tensors.update(optimizer_share(net.name, self._optimizers[net.name], client.params(net)))
            tensors.update(generator_state("node", client.generator))
            tensors.update(client.sampler.state())
            states[client.id] = _on_host(NodeState(client.id, tensors))
        return states

    def load_state_dicts(self, states: dict[str, NodeState]) -> None:
        """Continue from every node's saved state (a cohort's or a node run's checkpoint)."""
        server = states[SERVER_ID]
        load_blocks(server, self.server_blocks)
        for net in NETWORKS:
            load_optimizer_share(server, net.name, self._optimizers[net.name], self._server_params(net))
        device = self.policy.device
        self._features = {cid: t.to(device).clone() for cid, t in server.under("features").items()}
        for client in self.clients:
            state = states[client.id]
            load_blocks(state, client.blocks)
            for net in NETWORKS:
                load_optimizer_share(state, net.name, self._optimizers[net.name], client.params(net))
            load_generator(state, "node", client.generator)
            client.sampler.load_state(state)

    # -- a client's steps -----------------------------------------------------------------------

    def _draw(self, client: _Client) -> _ClientIteration:
        """The client's batch and noise, drawn from its own stream in the node's order."""
        idx = client.sampler.next_indices()
        device = client.images.device
        if device.type != "cpu":
            idx = idx.to(device)
        real, labels = client.images[idx], client.labels[idx]
        z = torch.randn(labels.shape[0], self._setup.model.z_dim, generator=client.generator)
        return _ClientIteration(labels, {"noise": z.to(device), "real": real})

    def _client_up(self, client: _Client, trip: RoundTrip, it: _ClientIteration) -> None:
        split = client.split(trip)
        if trip.direction == FWD:
            head_out = self._run(client, split.head, trip.phase, it.source(trip.source), it.labels)
            it.passes[trip.phase] = _Pass(head_out, head_out)
            if split.server:
                self._upload(client, trip, it, {"act": head_out.detach()})
            return
        if trip.source is not None:
            it.losses[trip.source].backward()
        self._computed(client.id, trip.before.blocks(split, trip.network), trip.phase, BWD, trip.samples * it.batch)
        if split.server:
            self._upload(client, trip, it, {name: it.passes[phase].tail_in.grad for name, phase in trip.grad_of})

    def _client_down(self, client: _Client, trip: RoundTrip, it: _ClientIteration) -> None:
        split = client.split(trip)
        if trip.direction == FWD:
            done = it.passes[trip.phase]
            if split.server:
                done.tail_in = self._download(client, trip, it)["act"].requires_grad_(True)
            it.tensors[trip.result] = self._run(client, split.tail, trip.phase, done.tail_in, it.labels)
            return
        if not split.server:
            return
        grads = self._download(client, trip, it)
        torch.autograd.backward([it.passes[phase].head_out for _, phase in trip.grad_of],
                                [grads[name] for name, _ in trip.grad_of])
        self._computed(client.id, trip.after.blocks(split, trip.network), trip.phase, BWD, trip.samples * it.batch)

    def _local(self, action: Local, its: dict[str, _ClientIteration]) -> None:
        if action.action is LocalAction.LOSS:
            for it in its.values():
                it.losses[action.name] = compute_loss(action, it.tensors, it.terms)
            return
        apply_optimizer_action(action, self._optimizers)

    def _losses(self, round_: int, step: int, its: dict[str, _ClientIteration]) -> list[ClientLosses]:
        # One device-to-host copy for the whole cohort (a ``.item()`` each would sync per value).
        values = torch.stack([its[c.id].terms[name] if name in ("d_real", "d_fake") else its[c.id].losses[name]
                              for c in self.clients for name in LOSS_NAMES]).tolist()
        out = []
        for i, client in enumerate(self.clients):
            d_real, d_fake, d_loss, g_loss = values[4 * i:4 * i + 4]
            out.append(ClientLosses(client.id, round_, step, d_real, d_fake, d_loss, g_loss))
        return out

    # -- the server's steps ---------------------------------------------------------------------

    def _server_forward(self, trip: RoundTrip, clients: tuple[_Client, ...],
                        its: dict[str, _ClientIteration]) -> _ServerGraph:
        net, phase = trip.network, trip.phase
        graph = _ServerGraph()
        if not clients:
            return graph
        for client in clients:
            graph.leaves[client.id] = self._receive_upload(client, trip, its[client.id])["act"].requires_grad_(True)
        middle = run_middle(self.server_blocks, net.block_names,
                            {c.id: network_split(c.plan.split, net).server for c in clients}, graph.leaves,
                            self._feature_block if trip.features else None)
        flowing = middle.flowing
        # A copy: a view would keep the whole batched output alive until the next pass.
        self._features.update({c: chunk.detach().clone() for c, chunk in middle.kept.items()})
        graph.samples_per_block.update(middle.samples_per_block)
        self._port.computed(SERVER_ID, tuple(graph.samples_per_block), phase, FWD,
                            sum(x.shape[0] for x in graph.leaves.values()), self._flops(graph.samples_per_block, FWD))
        for client in clients:
            graph.outputs[client.id] = flowing[client.id]
            self._send_down(client, trip, its[client.id], {"act": flowing[client.id].detach()})
        return graph

    def _server_backward(self, trip: RoundTrip, clients: tuple[_Client, ...], graphs: dict[str, _ServerGraph],
                         its: dict[str, _ClientIteration]) -> None:
        if not clients:
            return
        outputs, grads = [], []
        for client in clients:
            received = self._receive_upload(client, trip, its[client.id])
            for name, graph in graphs.items():
                outputs.append(graph.outputs[client.id])
                grads.append(received[name])
        torch.autograd.backward(outputs, grads)
        samples: dict[str, int] = {}
        for graph in graphs.values():
            for name, count in graph.samples_per_block.items():
                samples[name] = samples.get(name, 0) + count
        batch = sum(x.shape[0] for g in graphs.values() for x in g.leaves.values())
        self._port.computed(SERVER_ID, tuple(samples), trip.phase, BWD, batch, self._flops(samples, BWD))
        for client in clients:
            self._send_down(client, trip, its[client.id],
                            {name: graph.leaves[client.id].grad for name, graph in graphs.items()})

    # -- message boundaries: a graph cut and the events a transfer publishes ---------------------

    def _upload(self, client: _Client, trip: RoundTrip, it: _ClientIteration, tensors: dict[str, torch.Tensor]) -> None:
        msg_id = self._port.sent(trip.kind, client.id, SERVER_ID, trip.phase, tensors.values())
        it.uploads[trip.phase] = (msg_id, tensors)

    def _receive_upload(self, client: _Client, trip: RoundTrip, it: _ClientIteration) -> dict[str, torch.Tensor]:
        msg_id, tensors = it.uploads.pop(trip.phase)
        self._port.received(SERVER_ID, msg_id)
        return {name: t.detach() for name, t in tensors.items()}

    def _send_down(self, client: _Client, trip: RoundTrip, it: _ClientIteration, tensors: dict[str, torch.Tensor]) -> None:
        msg_id = self._port.sent(trip.kind, SERVER_ID, client.id, trip.phase, tensors.values())
        it.downloads[trip.phase] = (msg_id, tensors)

    def _download(self, client: _Client, trip: RoundTrip, it: _ClientIteration) -> dict[str, torch.Tensor]:
        msg_id, tensors = it.downloads.pop(trip.phase)
        self._port.received(client.id, msg_id)
        return {name: t.detach() for name, t in tensors.items()}

    # -- helpers --------------------------------------------------------------------------------

    def _run(self, client: _Client, names: tuple[str, ...], phase: Phase, x: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        if not names:
            return x
        out = client.segment(names)(x, labels)
        self._computed(client.id, names, phase, FWD, x.shape[0])
        return out

    def _computed(self, node: str, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int) -> None:
        if blocks:
            self._port.computed(node, blocks, phase, direction, batch)

    def _flops(self, samples_per_block: dict[str, int], direction: str) -> float:
        costs = self._setup.costs
        return sum(costs.flops((name,), direction) * n for name, n in samples_per_block.items())


def _on_host(state: NodeState) -> NodeState:
    return NodeState(state.node_id, {name: t.cpu() for name, t in state.tensors.items()})


def _host_copy(state: BlockState) -> BlockState:
    """A block's state as a node would send it: a copy on the CPU, never the live tensors."""
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}
