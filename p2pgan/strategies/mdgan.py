"""MD-GAN-style baseline (Hardy, Le Merrer, Sericola 2019): one generator, many discriminators.

The server holds the whole conditional generator G; every client holds a whole discriminator D
and its private data. One iteration is the :data:`~p2pgan.plan.program.MD_GAN` program's
:class:`~p2pgan.plan.program.Broadcast` step, which both nodes execute (and the simulator prices)
over the same transport, messages and events as the split engine:

1. The server samples, for each client, ``batch_size`` labels (uniform over the classes: it knows
   nothing about the clients' label distributions) and z from its own seeded stream, runs G once
   batched over all clients (client-id order), and sends every client its slice: the **synthetic
   images and their labels** (``ACTIVATION``, phase ``g_fwd``).
2. Each client trains its D on the received fakes (target 0) and its real batch (target 1), the
   loss being the sum ``BCE(D(fake), 0) + BCE(D(real), 1)``, then computes the generator's
   feedback: the gradient of ``BCE(D(fake), 1)`` with respect to the fake images, sent back up
   (``GRADIENT``, phase ``g_bwd``).
3. The server back-propagates the mean of the clients' feedback through G and steps G's optimizer.

At each round's end the discriminators are swapped between clients (MD-GAN's peer-to-peer swap,
routed through the server here because the transport's clients talk only to the server): client
``i`` sends its D (``PARAMS``) and receives the D of the previous client in id order
(``AGGREGATE``), a cyclic shift (:meth:`MDGan.aggregate`). There is no parameter averaging.

Privacy, compared with HuSCF-GAN: the "nothing leaves G's tail" property is broken by design —
synthetic images (and the labels they were generated for) travel from the server to every
client, and clients send image-shaped gradients (of their D's loss with respect to those images)
back. Real data and real labels still never leave a client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from p2pgan.bus import EventBus
from p2pgan.config.schema import Scenario
from p2pgan.engine.client import BatchSampler
from p2pgan.engine.loops import RoundCheckpoint, run_client, run_server
from p2pgan.engine.execution import place_node_blocks
from p2pgan.engine.participation import Participation
from p2pgan.engine.port import NodePort
from p2pgan.engine.state import (NodeState, blocks_state, generator_state, load_blocks, load_generator,
                                 load_optimizers, optimizers_state)
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import NETWORKS, NetworkDef, build_initial_blocks
from p2pgan.model.segments import Segment
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.plan.program import BWD, FWD, MD_GAN, Broadcast, ClientCompute, Local, LocalAction, Program
from p2pgan.plan.setup import node_seed
from p2pgan.protocol.endpoint import Endpoint
from p2pgan.protocol.events import ClientLosses, RoundAggregated
from p2pgan.protocol.federation import Aggregator, FederationInput, FederationResult
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKind
from p2pgan.strategies.base import CutResolver, Layout, Strategy, full_local_layout
from p2pgan.engine.federate import federate_round, load_aggregate, send_params
from p2pgan.engine.locals import apply_optimizer_action, compute_loss


class _Node:
    """What both MD-GAN nodes share: their plan, program, blocks, optimizers, random stream and port."""

    node_id: str

    def __init__(self, prepared: PreparedRun, node_id: str, endpoint: Endpoint, bus: EventBus, program: Program,
                 held: Sequence[str]) -> None:
        self.node_id = node_id
        self._prepared = prepared
        self._setup = prepared.setup
        self._schedule = prepared.plan.schedule
        self._program = program
        self._bus = bus
        self._gen = torch.Generator().manual_seed(node_seed(prepared.setup.seed, node_id))
        self.faults = prepared.faults
        continues = node_id == SERVER_ID and prepared.faults.policy == "continue"
        self._port = NodePort(node_id, endpoint, bus, prepared.setup.costs,
                              prepared.faults.peer_deadline_s if continues else None, device=self._setup.device)
        blocks = build_initial_blocks(self._setup.model, self._setup.seed)
        self.blocks = {name: blocks[name] for name in held}
        place_node_blocks(self.blocks, self._setup.device)
        self._optimizers = {net.name: self._setup.adam([p for n, b in self.blocks.items() if n in net.block_names
                                                        for p in b.parameters()]) for net in NETWORKS}

    def state_dict(self) -> NodeState:
        """Blocks, Adam state and the node's random stream at a round end."""
        return NodeState(self.node_id, {**blocks_state(self.blocks), **optimizers_state(self._optimizers),
                                        **generator_state("node", self._gen)})

    def load_state_dict(self, state: NodeState) -> None:
        load_blocks(state, self.blocks)
        load_optimizers(state, self._optimizers)
        load_generator(state, "node", self._gen)

    def _segment(self, network: NetworkDef) -> Segment:
        return Segment({name: self.blocks[name] for name in network.block_names})

    def _optimizer_step(self, action: Local) -> None:
        apply_optimizer_action(action, self._optimizers)


def _broadcasts(program: Program) -> tuple[Broadcast, ...]:
    return tuple(step for step in program.iteration if isinstance(step, Broadcast))


class MDGanServer(_Node):
    """Holds G; generates for every client, applies the clients' averaged feedback."""

    def __init__(self, prepared: PreparedRun, endpoint: Endpoint, bus: EventBus, strategy: Aggregator,
                 program: Program = MD_GAN) -> None:
        held = dict.fromkeys(name for step in _broadcasts(program) for name in step.network.block_names)
        super().__init__(prepared, SERVER_ID, endpoint, bus, program, tuple(held))
        self._strategy = strategy
        self._plan = prepared.plan
        self._clients = prepared.plan.client_ids
        self._num_domains = len(prepared.domains)
        self._networks = {step.network.name: self._segment(step.network) for step in _broadcasts(program)}
        self.participation = Participation(prepared.faults, bus)

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        await run_server(self, self._schedule, self._bus, first_round, checkpoint)

    def state_dict(self) -> NodeState:
        state = super().state_dict()
        return NodeState(self.node_id, {**state.tensors, **self.participation.state()})

    def load_state_dict(self, state: NodeState) -> None:
        super().load_state_dict(state)
        self.participation.load_state(state)

    async def iteration(self, round_: int, step: int) -> None:
        self._port.at(round_, step)
        self.participation.enter(round_, step)
        for action in self._program.iteration:
            if isinstance(action, Broadcast):
                await self._broadcast(action)
            elif isinstance(action, Local):
                self._optimizer_step(action)  # losses are the clients'
            else:
                raise TypeError(f"the MD-GAN server cannot execute {type(action).__name__}")

    async def _broadcast(self, step: Broadcast) -> None:
        """Generate for every client present at once, send each its slice, back-propagate their feedback."""
        spec = self._setup.model
        batch = self._schedule.batch_size
        clients = [cid for cid in self._clients if cid in self.participation.now]
        total = batch * len(clients)
        (generated,) = [name for name in step.down if name not in step.integer_down]
        # Uniform labels: the server knows nothing about the clients' label distributions.
        # Drawn on the host, from the node's own stream: the same draws on every device.
        device = self._setup.device
        labels = torch.randint(0, spec.num_classes, (total,), generator=self._gen).to(device)
        z = torch.randn(total, spec.z_dim, generator=self._gen).to(device)
        self._port.state("computing")
        fake = self._networks[step.network.name](z, labels)
        self._port.computed(step.network.block_names, step.down_phase, FWD, total)
        slices = {cid: slice(i * batch, (i + 1) * batch) for i, cid in enumerate(clients)}
        down = []
        for cid in clients:
            part = slices[cid]
            tensors = {name: labels[part].clone() if name in step.integer_down else fake[part].detach()
                       for name in step.down}
            down.append(self._port.message(MessageKind.ACTIVATION, cid, step.down_phase, tensors))
        await self._port.send_each(down, self._lost)
        (feedback,) = [up for up, down_name in step.grad_of if down_name == generated]
        # Client-id order, never arrival order.
        still = [cid for cid in clients if cid in self.participation.now]
        received = await self._port.receive_each(MessageKind.GRADIENT, still, step.up_phase, self._lost)
        if not received:
            return
        # A peer lost on the way contributes no feedback (a zero gradient for its slice).
        grads = [received[cid].tensors[feedback] if cid in received else torch.zeros_like(fake[slices[cid]])
                 for cid in clients]
        self._port.state("computing")
        # MD-GAN averages the workers' feedback: each client's loss is a mean over its batch.
        torch.autograd.backward(fake, torch.cat(grads) / len(received))
        self._port.computed(step.network.block_names, step.up_phase, BWD, total)

    async def federate(self, round_: int) -> FederationResult:
        """Collect every client's parameters, let the strategy decide, send each what it loads."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        result, losses = await federate_round(self._port, self._plan, round_, self.blocks, self._strategy, {},
                                              self._num_domains, self.participation,
                                              {c.client_id: self._program.client_blocks(c.split)
                                               for c in self._plan.clients})
        self._bus.publish(RoundAggregated(round_, result, losses))
        return result

    def _lost(self, peer: str, problem: str) -> None:
        self.participation.drop(peer, self._port.round, self._port.step, problem)


@dataclass
class _ClientIteration:
    """What one iteration holds on an MD-GAN client: named inputs (each with its labels), the
    network's outputs, the loss terms and losses, and the gradients it keeps."""

    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)

    def source(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name.endswith("_detached"):
            x, labels = self.inputs[name.removesuffix("_detached")]
            return x.detach(), labels
        return self.inputs[name]


class MDGanClient(_Node):
    """Holds a whole D and its private data; sends the generator feedback up."""

    def __init__(self, prepared: PreparedRun, client_id: str, endpoint: Endpoint, bus: EventBus,
                 program: Program = MD_GAN) -> None:
        split = prepared.plan.client(client_id).split
        super().__init__(prepared, client_id, endpoint, bus, program, program.client_blocks(split))
        self._data = prepared.client_data[client_id].on(self._setup.device)
        self._sampler = BatchSampler(len(self._data), self._schedule.batch_size, self._gen)
        self._networks = {step.client_network.name: self._segment(step.client_network) for step in _broadcasts(program)}

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        await run_client(self, self._schedule, self._bus, first_round, checkpoint, self.faults)

    def state_dict(self) -> NodeState:
        """The shared node state plus the sampler's position in its permutation."""
        state = super().state_dict()
        return NodeState(self.node_id, {**state.tensors, **self._sampler.state()})

    def load_state_dict(self, state: NodeState) -> None:
        super().load_state_dict(state)
        self._sampler.load_state(state)

    async def iteration(self, round_: int, step: int) -> ClientLosses:
        self._port.at(round_, step)
        it = _ClientIteration({"real": self._data.batch(self._sampler.next_indices())})
        for action in self._program.iteration:
            if isinstance(action, Broadcast):
                await self._broadcast(action, it)
            elif isinstance(action, Local):
                self._local(action, it)
            else:
                raise TypeError(f"the MD-GAN client cannot execute {type(action).__name__}")
        return ClientLosses(self.node_id, round_, step, it.terms["d_real"].item(), it.terms["d_fake"].item(),
                            it.losses["d_loss"].item(), it.losses["g_loss"].item())

    async def _broadcast(self, step: Broadcast, it: _ClientIteration) -> None:
        """Receive the generated batch, run the client's computes, send the feedback up."""
        msg = await self._port.receive(MessageKind.ACTIVATION, SERVER_ID, step.down_phase)
        (label_name,) = step.integer_down
        generated_labels = msg.tensors[label_name].long()
        for name in step.down:
            if name not in step.integer_down:
                # A leaf that requires grad: the feedback is the loss's gradient with respect to it.
                it.inputs[name] = (msg.tensors[name].requires_grad_(True), generated_labels)
        self._port.state("computing")
        network = self._networks[step.client_network.name]
        batch = it.inputs["real"][1].shape[0]
        for action in step.client:
            if isinstance(action, Local):
                self._local(action, it)
            else:
                self._compute(network, action, it, batch)
        await self._port.send(self._port.message(MessageKind.GRADIENT, SERVER_ID, step.up_phase,
                                                 {up: it.grads[down].detach() for up, down in step.grad_of}))

    def _compute(self, network: Segment, action: ClientCompute, it: _ClientIteration, batch: int) -> None:
        if action.direction == FWD:
            x, labels = it.source(action.source)
            it.outputs[action.result] = network(x, labels)
            self._port.computed(network.block_names, action.phase, FWD, x.shape[0])
            return
        loss = it.losses[action.source]
        if action.result is None:
            loss.backward()
        else:
            # Only the input's gradient: D's own gradients of this loss are not wanted.
            (it.grads[action.result],) = torch.autograd.grad(loss, it.inputs[action.result][0])
        self._port.computed(network.block_names, action.phase, BWD, action.samples * batch)

    def _local(self, action: Local, it: _ClientIteration) -> None:
        if action.action is not LocalAction.LOSS:
            self._optimizer_step(action)
            return
        it.losses[action.name] = compute_loss(action, it.outputs, it.terms)

    async def federate(self, round_: int, losses: dict[str, float]) -> None:
        self._port.at(round_, ROUND_LEVEL_STEP)
        await send_params(self._port, self.blocks, len(self._data), losses)
        await load_aggregate(self._port, self.blocks)

    async def rejoin(self, round_: int) -> None:
        """Back next round: load the discriminator the server sends, sending nothing."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        await load_aggregate(self._port, self.blocks)


class MDGan(Strategy):
    """MD-GAN: G on the server, a whole D on every client, D swapped cyclically at round end."""

    name = "md-gan"
    program = MD_GAN
    summary = "generator on the server, a whole discriminator per client; synthetic images travel down"

    def layout(self, scenario: Scenario, client_ids: Sequence[str], resolve_cuts: CutResolver) -> Layout:
        return full_local_layout(client_ids)

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        """Cyclic swap: client i continues with the discriminator client i-1 trained (id order)."""
        ids = list(inputs.updates)
        source = {cid: ids[(i - 1) % len(ids)] for i, cid in enumerate(ids)}
        client_blocks = {cid: inputs.updates[source[cid]].blocks for cid in ids}
        server = {name: {k: v.clone() for k, v in state.items()} for name, state in inputs.server_blocks.items()}
        model = {**server, **client_blocks[ids[0]]}
        return FederationResult(client_blocks, server, {cid: 0 for cid in ids}, {0: model},
                                {"strategy": self.name, "d_swap": source, "note": "no averaging; D swapped"})

    def create_server(self, prepared: PreparedRun, endpoint: Endpoint, bus: EventBus) -> MDGanServer:
        return MDGanServer(prepared, endpoint, bus, self, self.program)

    def create_client(self, prepared: PreparedRun, client_id: str, endpoint: Endpoint, bus: EventBus) -> MDGanClient:
        return MDGanClient(prepared, client_id, endpoint, bus, self.program)
