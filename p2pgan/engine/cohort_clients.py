"""Many clients' side of the program executed together: the half both cohort engines share.

:class:`ClientCohort` holds every client's own state (blocks, random stream and batch sampler,
its share of one foreach Adam per network) and runs the clients' computations of one program
step for all of them, on :class:`~p2pgan.engine.workers.ClientThreads`. What crosses to the
server is the subclass's: the in-process :class:`~p2pgan.engine.cohort.CohortEngine` hands
tensors to its own server half, :class:`~p2pgan.engine.shard_cohort.ShardCohort` sends them over
each client's port to a server elsewhere (a Ray shard's clients). Both walk the schedule with
:meth:`ClientCohort.run`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from p2pgan.bus import EventBus
from p2pgan.engine.client import BatchSampler, ClientIteration, Pass, draw_batch
from p2pgan.engine.cohort_port import CohortPort
from p2pgan.engine.cohort_state import load_optimizer_share, optimizer_share
from p2pgan.engine.execution import KernelPolicy, place_blocks
from p2pgan.engine.gradients import GradientUse, waiting_forwards
from p2pgan.engine.locals import apply_optimizer_action, compute_loss
from p2pgan.engine.loops import RoundCheckpoint, RoundLosses
from p2pgan.engine.state import NodeState, allocate_adam_state, blocks_state, generator_state, load_blocks, load_generator
from p2pgan.engine.workers import ClientThreads
from p2pgan.errors import P2PGanError
from p2pgan.model.blocks import NETWORKS, Block, NetworkDef
from p2pgan.model.segments import NetworkSplit, Segment
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import BWD, FWD, Exchange, Local, LocalAction, Program, RoundTrip, network_split
from p2pgan.plan.run import ClientPlan, Schedule
from p2pgan.plan.setup import NodeSetup, node_seed
from p2pgan.protocol.events import ClientLosses, NodeStateEvent
from p2pgan.protocol.messages import Phase

LOSS_NAMES = ("d_real", "d_fake", "d_loss", "g_loss")

Optimizers = Mapping[str, "torch.optim.Optimizer | None"]
"""One optimizer (or none) per network name."""


@dataclass
class CohortIteration(ClientIteration):
    """What one iteration holds for one client while it runs (the node's, plus the tensors that
    cross between it and the server: what it sends, and what it got, until used)."""

    uploads: dict[Phase, tuple[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    """What the client sent the server in this iteration: message id and tensors, per phase."""
    downloads: dict[Phase, tuple[str, dict[str, torch.Tensor]]] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.labels.shape[0])


class CohortClient:
    """One client's own state: plan, data, blocks, random stream, sampler."""

    def __init__(self, plan: ClientPlan, data: LocalData, blocks: dict[str, Block], setup: NodeSetup,
                 batch_size: int, device: torch.device) -> None:
        self.id = plan.client_id
        self.plan = plan
        self.num_examples = len(data)
        self.data = data.on(device)
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


def check_program(program: Program) -> None:
    """The cohort engines execute client-first programs (Exchange and Local steps) only."""
    for step in program.iteration:
        if not isinstance(step, (Exchange, Local)):
            raise P2PGanError(f"execution.engine: the cohort engine cannot run program {program.name!r} "
                              f"({type(step).__name__} steps; expected engine: nodes)")


class ClientCohort:
    """The clients of ``plans`` (each with a copy of ``template``'s blocks it holds), executed
    together. Subclasses say what crosses to the server (:meth:`_upload`, :meth:`_download`),
    run an iteration (:meth:`_iterate`) and a federation (:meth:`_federate`)."""

    def __init__(self, setup: NodeSetup, schedule: Schedule, plans: Sequence[ClientPlan],
                 client_data: Mapping[str, LocalData], template: Mapping[str, Block], program: Program,
                 bus: EventBus, policy: KernelPolicy) -> None:
        check_program(program)
        self._setup = setup
        self._schedule = schedule
        self._program = program
        self._bus = bus
        self.policy = policy
        self.clients: list[CohortClient] = []
        for plan in plans:
            blocks = {name: copy.deepcopy(template[name]) for name in plan.split.client_blocks}
            place_blocks(blocks, policy)
            self.clients.append(CohortClient(plan, client_data[plan.client_id], blocks, setup,
                                             schedule.batch_size, policy.device))
        self._gradients = GradientUse(program)
        self._waiting = waiting_forwards(program)
        self._port = CohortPort(bus, setup.costs)
        self._threads = ClientThreads(policy.client_threads, self._port)

    def close(self) -> None:
        """Stop the client threads (:class:`~p2pgan.engine.workers.ClientThreads`)."""
        self._threads.close()

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        optimizer = self._setup.adam(params)
        if optimizer is not None:
            # One multi-tensor update over the group; per element the same arithmetic.
            for group in optimizer.param_groups:
                group["foreach"] = True
            allocate_adam_state(optimizer)
        return optimizer

    # -- the schedule ---------------------------------------------------------------------------

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        """Every round of the schedule from ``first_round``; after each round's federation every
        node's state here goes to ``checkpoint``, as the node loops hand theirs. Yields to the
        event loop between iterations, so what the run publishes is handled while training goes on."""
        for round_ in range(first_round, self._schedule.rounds + 1):
            round_losses = {c.id: RoundLosses() for c in self.clients}
            for step in range(self._schedule.steps_per_round):
                for losses in await self._iterate(round_, step):
                    round_losses[losses.node].add(losses)
                    self._bus.publish(losses)
                await asyncio.sleep(0)
            await self._federate(round_, {cid: losses.means() for cid, losses in round_losses.items()})
            if checkpoint is not None:
                for state in self.state_dicts().values():
                    checkpoint(round_, state)
            await asyncio.sleep(0)
        for node in self.node_ids:
            self._bus.publish(NodeStateEvent(node, "done"))

    @property
    def node_ids(self) -> list[str]:
        """The nodes this engine executes."""
        return [c.id for c in self.clients]

    async def _iterate(self, round_: int, step: int) -> list[ClientLosses]:
        raise NotImplementedError

    async def _federate(self, round_: int, losses: dict[str, dict[str, float]]) -> None:
        raise NotImplementedError

    def state_dicts(self) -> dict[str, NodeState]:
        raise NotImplementedError

    # -- node states (checkpoints), in the node engine's names ----------------------------------

    def client_state(self, client: CohortClient, optimizers: Optimizers) -> NodeState:
        tensors = {**blocks_state(client.blocks)}
        for net in NETWORKS:
            tensors.update(optimizer_share(net.name, optimizers[net.name], client.params(net)))
        tensors.update(generator_state("node", client.generator))
        tensors.update(client.sampler.state())
        return on_host(NodeState(client.id, tensors))

    def load_client_state(self, client: CohortClient, state: NodeState, optimizers: Optimizers) -> None:
        load_blocks(state, client.blocks)
        for net in NETWORKS:
            load_optimizer_share(state, net.name, optimizers[net.name], client.params(net))
        load_generator(state, "node", client.generator)
        client.sampler.load_state(state)

    # -- a client's steps -----------------------------------------------------------------------

    def _draw(self, client: CohortClient) -> CohortIteration:
        """The client's batch and noise, drawn from its own stream in the node's order."""
        real, labels, z = draw_batch(client.data, client.sampler, self._setup.model.z_dim, client.generator)
        return CohortIteration(labels, {"noise": z, "real": real})

    def _client_up(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> None:
        split = client.split(trip)
        if trip.direction == FWD:
            head_out = self._run(client, split.head, trip.phase, it.source(trip.source), it.labels)
            it.passes[trip.phase] = Pass(head_out, head_out)
            if split.server:
                self._upload(client, trip, it, {"act": head_out.detach()})
            return
        if trip.source is not None:
            torch.autograd.backward(it.losses[trip.source], inputs=self._wanted(client, it))
        self._computed(client.id, trip.before.blocks(split, trip.network), trip.phase, BWD, trip.samples * it.batch)
        if split.server:
            self._upload(client, trip, it, {name: it.passes[phase].tail_in.grad for name, phase in trip.grad_of})

    def _client_down(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> None:
        split = client.split(trip)
        if trip.direction == FWD:
            done = it.passes[trip.phase]
            if split.server:
                done.tail_in = self._download(client, trip, it)["act"].requires_grad_(True)
            it.tensors[trip.result] = self._run(client, split.tail, trip.phase, done.tail_in, it.labels)
            return
        if split.server:
            grads = self._download(client, trip, it)
            torch.autograd.backward([it.passes[phase].head_out for _, phase in trip.grad_of],
                                    [grads[name] for name, _ in trip.grad_of], inputs=self._wanted(client, it))
            self._computed(client.id, trip.after.blocks(split, trip.network), trip.phase, BWD, trip.samples * it.batch)
        it.forget_graphs(trip, self._program)

    def _local(self, action: Local, its: Mapping[str, CohortIteration], optimizers: Optimizers) -> None:
        if action.action is LocalAction.LOSS:
            for it in its.values():
                it.losses[action.name] = compute_loss(action, it.tensors, it.terms)
            return
        apply_optimizer_action(action, optimizers)
        self._gradients.after(action, optimizers)

    @staticmethod
    def _loss_values(its: Mapping[str, CohortIteration]) -> dict[str, list[torch.Tensor]]:
        """Each client's reported losses of the iteration (values only, so its graphs can go)."""
        return {cid: [(it.terms[name] if name in ("d_real", "d_fake") else it.losses[name]).detach()
                      for name in LOSS_NAMES] for cid, it in its.items()}

    def _losses(self, round_: int, step: int, by_client: Mapping[str, list[torch.Tensor]]) -> list[ClientLosses]:
        """Every client's :class:`ClientLosses` from :meth:`_loss_values`, in client order."""
        # One device-to-host copy for the whole cohort (a ``.item()`` each would sync per value).
        values = torch.stack([v for c in self.clients for v in by_client[c.id]]).tolist()
        out = []
        for i, client in enumerate(self.clients):
            d_real, d_fake, d_loss, g_loss = values[4 * i:4 * i + 4]
            out.append(ClientLosses(client.id, round_, step, d_real, d_fake, d_loss, g_loss))
        return out

    # -- message boundaries (the subclass's) ----------------------------------------------------

    def _upload(self, client: CohortClient, trip: RoundTrip, it: CohortIteration,
                tensors: dict[str, torch.Tensor]) -> None:
        """``client`` sends ``tensors`` to the server (``it.uploads`` keeps them until they go)."""
        raise NotImplementedError

    def _download(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> dict[str, torch.Tensor]:
        """What the server sent ``client`` for ``trip`` (``it.downloads``), as graph-cut leaves."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------

    def _wanted(self, client: CohortClient, it: CohortIteration) -> list[torch.Tensor]:
        """What a client's backward must reach: the parameters of the networks whose gradients
        are read, and the graph-cut leaves (received tensors) whose gradients go up later."""
        return self._gradients.live_params(client.params) + it.received_leaves()

    def _run(self, client: CohortClient, names: tuple[str, ...], phase: Phase, x: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        if not names:
            return x
        out = client.segment(names)(x, labels)
        self._computed(client.id, names, phase, FWD, x.shape[0])
        return out

    def _computed(self, node: str, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int) -> None:
        if blocks:
            self._port.computed(node, blocks, phase, direction, batch)


def on_host(state: NodeState) -> NodeState:
    return NodeState(state.node_id, {name: t.cpu() for name, t in state.tensors.items()})
