"""A client: owns its data, labels, head/tail segments of G and D, and their optimizers."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from p2pgan.bus import EventBus
from p2pgan.errors import P2PGanError
from p2pgan.engine.loops import RoundCheckpoint, run_client
from p2pgan.engine.federate import load_aggregate, send_params
from p2pgan.engine.execution import place_node_blocks
from p2pgan.engine.gradients import GradientUse, waiting_forwards
from p2pgan.engine.port import NodePort
from p2pgan.engine.state import (NodeState, allocate_adam_state, blocks_state, generator_state, load_blocks,
                                 load_generator, load_optimizers, optimizers_state)
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import NETWORKS, build_initial_blocks
from p2pgan.model.recompute import ReleasableOutputs
from p2pgan.model.segments import Segment
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import BWD, FWD, Exchange, Local, LocalAction, Program, RoundTrip, network_split
from p2pgan.plan.run import ClientPlan, Schedule
from p2pgan.plan.setup import NodeSetup, node_seed
from p2pgan.protocol.endpoint import Endpoint
from p2pgan.protocol.events import ClientLosses
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Phase
from p2pgan.engine.locals import apply_optimizer_action, compute_loss


def draw_batch(data: LocalData, sampler: BatchSampler, z_dim: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A client's next images, labels and noise: indices and noise drawn on the host from its own
    stream (the same draws on every device), the examples taken where they are."""
    real, labels = data.batch(sampler.next_indices())
    return real, labels, torch.randn(labels.shape[0], z_dim, generator=generator).to(real.device)


class BatchSampler:
    """Endless stream of batches: consecutive slices of fresh seeded permutations."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self._size = size
        self._batch = batch_size
        self._gen = generator
        self._order = torch.empty(0, dtype=torch.long)

    def next_indices(self) -> torch.Tensor:
        while self._order.numel() < self._batch:
            self._order = torch.cat([self._order, torch.randperm(self._size, generator=self._gen)])
        batch, self._order = self._order[: self._batch], self._order[self._batch:]
        return batch

    def state(self) -> dict[str, torch.Tensor]:
        """The rest of the current permutation (the generator is the node's own, saved by it)."""
        return {"sampler/order": self._order.clone()}

    def load_state(self, state: NodeState) -> None:
        order = state.tensors.get("sampler/order")
        if order is None or (order.numel() and int(order.max()) >= self._size):
            raise P2PGanError(f"checkpoint of node {state.node_id} does not match this run (sampler order)")
        self._order = order.clone().long()


@dataclass
class Pass:
    """One forward round trip's ends on the client: the head's output and the tail's input."""

    head_out: torch.Tensor
    tail_in: torch.Tensor


@dataclass
class ClientIteration:
    """What one iteration of the program holds on a client while it runs (the node's, and each
    client's in the cohort engine)."""

    labels: torch.Tensor
    tensors: dict[str, torch.Tensor]
    passes: dict[Phase, Pass] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def source(self, name: str) -> torch.Tensor:
        if name.endswith("_detached"):
            return self.tensors[name.removesuffix("_detached")].detach()
        return self.tensors[name]

    def received_leaves(self) -> list[torch.Tensor]:
        """The received activations (graph-cut leaves) whose gradients go up later."""
        return [p.tail_in for p in self.passes.values() if p.tail_in is not p.head_out]

    def forget_graphs(self, trip: RoundTrip, program: Program) -> None:
        """After ``trip``'s backward: its forwards' ends go, and their results and the loss keep
        their values only (a graph node outlives its backward for as long as a tensor made by it
        does, and with it the tensors it refers to: received activations, views of the server's
        whole batch)."""
        for _, phase in trip.grad_of:
            self.forget_pass(phase, program)
        if trip.source is not None:
            self.losses[trip.source] = self.losses[trip.source].detach()

    def forget_pass(self, phase: Phase, program: Program) -> None:
        del self.passes[phase]
        result = program.trip(phase).result
        self.tensors[result] = self.tensors[result].detach()
        if result in self.terms:
            self.terms[result] = self.terms[result].detach()


@dataclass
class _Iteration(ClientIteration):
    """A node's iteration: what it released of its waiting forwards, on top."""

    held: dict[Phase, ReleasableOutputs] = field(default_factory=dict)
    """Per waiting forward (see :func:`~p2pgan.engine.gradients.waiting_forwards`), what its head let go of."""


class ClientNode:
    """Executes the program's client side, talking only through its endpoint.

    Memory (the numbers are the same): Adam's state is made before the first iteration (next to
    the parameters, not between its activations); a network's gradients go at its optimizer step
    where the program resets them before anything reads them again, and a backward does not
    compute them meanwhile (:mod:`p2pgan.engine.gradients`: D's gradients from the G step's pass
    through D); once a backward trip has run, the forwards it served let go of their ends (the
    head's output, the received activation and its gradient), so a pass's tensors do not wait for
    the iteration's end; and a forward whose graph waits across other exchanges (G's) frees its
    head's output once the server's answer shows the upload arrived (the transport has its copy),
    refilled in place when the backward reads it (:class:`~p2pgan.model.recompute.ReleasableOutputs`).
    """

    def __init__(self, setup: NodeSetup, plan: ClientPlan, schedule: Schedule, data: LocalData,
                 endpoint: Endpoint, bus: EventBus, program: Program, faults: FaultPlan | None = None) -> None:
        self.node_id = plan.client_id
        self.faults = faults
        """Who takes part when (``None``: always); the loop skips what this client sits out."""
        self.plan = plan
        self._setup = setup
        self._schedule = schedule
        self._program = program
        device = setup.device
        self._data = data.on(device)
        self._bus = bus
        self._gen = torch.Generator().manual_seed(node_seed(setup.seed, self.node_id))
        self._sampler = BatchSampler(len(data), schedule.batch_size, self._gen)
        blocks = build_initial_blocks(setup.model, setup.seed)
        self.blocks = {name: blocks[name] for name in plan.split.client_blocks}
        place_node_blocks(self.blocks, device)
        self._optimizers = {net.name: setup.adam([p for n in network_split(plan.split, net).client_blocks
                                                   for p in self.blocks[n].parameters()])
                            for net in NETWORKS}
        for optimizer in self._optimizers.values():
            allocate_adam_state(optimizer)
        self._gradients = GradientUse(program)
        self._waiting = {t.phase for i in waiting_forwards(program) for t in program.iteration[i].trips}
        self._segments: dict[tuple[str, ...], Segment] = {}
        self._port = NodePort(self.node_id, endpoint, bus, setup.costs, device=device)

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        await run_client(self, self._schedule, self._bus, first_round, checkpoint, self.faults)

    def state_dict(self) -> NodeState:
        """Blocks, Adam state, the random stream and the sampler's position, at a round end."""
        return NodeState(self.node_id, {**blocks_state(self.blocks), **optimizers_state(self._optimizers),
                                        **generator_state("node", self._gen), **self._sampler.state()})

    def load_state_dict(self, state: NodeState) -> None:
        load_blocks(state, self.blocks)
        load_optimizers(state, self._optimizers)
        load_generator(state, "node", self._gen)
        self._sampler.load_state(state)

    async def iteration(self, round_: int, step: int) -> ClientLosses:
        self._port.at(round_, step)
        real, labels, z = draw_batch(self._data, self._sampler, self._setup.model.z_dim, self._gen)
        it = _Iteration(labels, {"noise": z, "real": real})
        self._gradients.start_iteration()
        for action in self._program.iteration:
            if isinstance(action, Exchange):
                for trip in action.trips:
                    await self._up(trip, it)
                for trip in action.trips:
                    await self._down(trip, it)
            elif isinstance(action, Local):
                self._local(action, it)
            else:
                raise TypeError(f"the split client cannot execute {type(action).__name__}")
        for held in it.held.values():
            held.restore()
        return ClientLosses(self.node_id, round_, step, it.terms["d_real"].item(), it.terms["d_fake"].item(),
                            it.losses["d_loss"].item(), it.losses["g_loss"].item())

    async def federate(self, round_: int, losses: dict[str, float]) -> None:
        """Send this client's blocks up, load its cluster's average back."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        await send_params(self._port, self.blocks, len(self._data), losses)
        await load_aggregate(self._port, self.blocks)

    async def rejoin(self, round_: int) -> None:
        """Back next round after missing this round's federation: load the cluster's weights the
        server sends (round ``round_``'s AGGREGATE), sending nothing."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        await load_aggregate(self._port, self.blocks)

    # -- the program's steps ------------------------------------------------------------------

    def _local(self, action: Local, it: _Iteration) -> None:
        if action.action is LocalAction.LOSS:
            it.losses[action.name] = compute_loss(action, it.tensors, it.terms)
        else:
            apply_optimizer_action(action, self._optimizers)
            self._gradients.after(action, self._optimizers)

    async def _up(self, trip: RoundTrip, it: _Iteration) -> None:
        """The client's half before the server: compute ``before``, upload if via the server."""
        split = network_split(self.plan.split, trip.network)
        batch = trip.samples * it.labels.shape[0]
        if trip.direction == FWD:
            head = self._segment(split.head)
            held = (ReleasableOutputs() if split.server and trip.phase in self._waiting and not self._port.shares_sent
                    else None)
            if held is not None:
                it.held[trip.phase] = held
            with held or nullcontext():
                head_out = self._run(head, trip.phase, it.source(trip.source), it.labels)
            it.passes[trip.phase] = Pass(head_out, head_out)
            if split.server:
                await self._send(trip, {"act": head_out.detach()})
            return
        if trip.source is not None:
            torch.autograd.backward(it.losses[trip.source], inputs=self._wanted(it))
        self._computed(trip.before.blocks(split, trip.network), trip.phase, BWD, batch)
        if split.server:
            await self._send(trip, {name: it.passes[phase].tail_in.grad for name, phase in trip.grad_of})

    async def _down(self, trip: RoundTrip, it: _Iteration) -> None:
        """The client's half after the server: download, compute ``after``."""
        split = network_split(self.plan.split, trip.network)
        if trip.direction == FWD:
            done = it.passes[trip.phase]
            if split.server:
                msg = await self._port.receive(trip.kind, SERVER_ID, trip.phase)
                done.tail_in = msg.tensors["act"].requires_grad_(True)
                held = it.held.get(trip.phase)
                if held is not None:  # the server has had the upload: only the backward reads it now
                    held.release()
            it.tensors[trip.result] = self._run(self._segment(split.tail), trip.phase, done.tail_in, it.labels)
            return
        if split.server:
            msg = await self._port.receive(trip.kind, SERVER_ID, trip.phase)
            torch.autograd.backward([it.passes[phase].head_out for _, phase in trip.grad_of],
                                    [msg.tensors[name] for name, _ in trip.grad_of], inputs=self._wanted(it))
            del msg
            self._computed(trip.after.blocks(split, trip.network), trip.phase, BWD, trip.samples * it.labels.shape[0])
        it.forget_graphs(trip, self._program)

    def _wanted(self, it: _Iteration) -> list[torch.Tensor]:
        """What a backward must reach: the parameters whose gradients are read, and the received
        activations whose gradients go up later."""
        params = self._gradients.live_params(
            lambda net: [p for n in network_split(self.plan.split, net).client_blocks for p in self.blocks[n].parameters()])
        return params + it.received_leaves()

    # -- helpers ------------------------------------------------------------------------------

    def _segment(self, names: tuple[str, ...]) -> Segment:
        segment = self._segments.get(names)
        if segment is None:
            segment = self._segments[names] = Segment({n: self.blocks[n] for n in names})
        return segment

    def _run(self, segment: Segment, phase: Phase, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not len(segment):
            return x
        self._port.state("computing")
        out = segment(x, labels)
        self._computed(segment.block_names, phase, FWD, x.shape[0])
        return out

    def _computed(self, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int) -> None:
        if blocks:
            self._port.computed(blocks, phase, direction, batch)

    async def _send(self, trip: RoundTrip, tensors: dict[str, torch.Tensor]) -> None:
        detached = {name: t.detach() for name, t in tensors.items()}
        await self._port.send(self._port.message(trip.kind, SERVER_ID, trip.phase, detached))
