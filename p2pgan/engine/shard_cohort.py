"""A shard's clients executed together, talking to a server elsewhere over their own ports.

A Ray shard (``ray.clients: cohort``) hosts many clients and no server. Run as nodes, each client
is a :class:`~p2pgan.engine.client.ClientNode` coroutine with its own two Adams; run as a
:class:`ShardCohort`, the shard's clients execute each program step together, as the cohort
engine's clients do (:class:`~p2pgan.engine.cohort_clients.ClientCohort`): one foreach Adam per
network over all of them, their computations on a thread per CPU of the shard
(:class:`~p2pgan.engine.workers.ClientThreads`), and the messages of an exchange sent together,
so the server (unchanged: a node) gets every upload of the shard at once.

On the wire nothing changes: each client sends the server the messages a ``ClientNode`` sends
(same kinds, keys, tensors and metadata) from its own :class:`~p2pgan.engine.port.NodePort`, and
receives the server's answers there. The numbers are the node engine's: every client's kernels
run on its own tensors in the program's order, and the foreach Adam equals the per-client ones
element by element.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch

from p2pgan.bus import EventBus
from p2pgan.engine.cohort_clients import ClientCohort, CohortClient, CohortIteration
from p2pgan.engine.execution import KernelPolicy
from p2pgan.engine.federate import load_aggregate, send_params
from p2pgan.engine.port import NodePort
from p2pgan.engine.state import NodeState
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import NETWORKS, build_initial_blocks
from p2pgan.model.recompute import ReleasableOutputs
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import Exchange, Program, RoundTrip, network_split
from p2pgan.plan.run import RunPlan
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.endpoint import Endpoint
from p2pgan.protocol.events import ClientLosses
from p2pgan.protocol.messages import ROUND_LEVEL_STEP


class ShardCohort(ClientCohort):
    """The clients ``client_ids`` of ``plan`` (their data in ``client_data``), each on its endpoint."""

    def __init__(self, setup: NodeSetup, plan: RunPlan, client_ids: Sequence[str], client_data: Mapping[str, LocalData],
                 endpoints: Mapping[str, Endpoint], program: Program, bus: EventBus, policy: KernelPolicy) -> None:
        here = set(client_ids)
        super().__init__(setup, plan.schedule, [c for c in plan.clients if c.client_id in here], client_data,
                         build_initial_blocks(setup.model, setup.seed), program, bus, policy)
        self._optimizers = {net.name: self._optimizer([p for c in self.clients for p in c.params(net)])
                            for net in NETWORKS}
        self._ports = {c.id: NodePort(c.id, endpoints[c.id], bus, setup.costs) for c in self.clients}
        self._shares_sent = any(port.shares_sent for port in self._ports.values())
        self._through = {net.name: [c for c in self.clients if network_split(c.plan.split, net).server]
                         for net in NETWORKS}

    # -- one iteration ----------------------------------------------------------------------------

    async def _iterate(self, round_: int, step: int) -> list[ClientLosses]:
        self._port.at(round_, step)
        for port in self._ports.values():
            port.at(round_, step)
        its = {c.id: self._draw(c) for c in self.clients}
        self._gradients.start_iteration()
        for index, action in enumerate(self._program.iteration):
            if isinstance(action, Exchange):
                await self._exchange(action, its, waiting=index in self._waiting)
            else:
                self._local(action, its, self._optimizers)
        return self._losses(round_, step, self._loss_values(its))

    async def _exchange(self, action: Exchange, its: dict[str, CohortIteration], waiting: bool) -> None:
        """Every client's half before the server, the messages both ways, every client's half after."""
        each = self._threads.each
        # A forward whose graph waits across other exchanges lets go of the block outputs it can
        # refill, once the server has answered (so its copy of the upload has gone out), unless
        # the server reads the upload in this shard's own storage.
        held = ReleasableOutputs() if waiting and not self._shares_sent else None
        with held or nullcontext():
            for trip in action.trips:
                each(self.clients, lambda client: self._client_up(client, trip, its[client.id]))
        for trip in action.trips:
            for client in self._through[trip.network.name]:
                await self._send(client, trip, its[client.id])
        for trip in action.trips:
            for client in self._through[trip.network.name]:
                await self._receive(client, trip, its[client.id])
        with held or nullcontext():
            for trip in action.trips:
                each(self.clients, lambda client: self._client_down(client, trip, its[client.id]))
        if held is not None:  # what the iteration reads on (its results) stays
            held.release(keep=[it.tensors[t.result] for it in its.values() for t in action.trips])

    # -- message boundaries: the client's port --------------------------------------------------

    def _upload(self, client: CohortClient, trip: RoundTrip, it: CohortIteration,
                tensors: dict[str, torch.Tensor]) -> None:
        it.uploads[trip.phase] = ("", {name: t.detach() for name, t in tensors.items()})

    async def _send(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> None:
        port = self._ports[client.id]
        _, tensors = it.uploads.pop(trip.phase)
        await port.send(port.message(trip.kind, SERVER_ID, trip.phase, tensors))

    async def _receive(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> None:
        port = self._ports[client.id]
        msg = await port.receive(trip.kind, SERVER_ID, trip.phase)
        port.forget_received()  # the latency of a shard's clients is priced from the program
        it.downloads[trip.phase] = (msg.msg_id, msg.tensors)

    def _download(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> dict[str, torch.Tensor]:
        _, tensors = it.downloads.pop(trip.phase)
        return {name: t.detach() for name, t in tensors.items()}

    # -- the round's end ------------------------------------------------------------------------

    async def _federate(self, round_: int, losses: dict[str, dict[str, float]]) -> None:
        """Every client's parameters up (all before any answer: the server waits for all), then
        each loads its cluster's share."""
        for client in self.clients:
            port = self._ports[client.id]
            port.at(round_, ROUND_LEVEL_STEP)
            await send_params(port, client.blocks, client.num_examples, losses[client.id])
        for client in self.clients:
            await load_aggregate(self._ports[client.id], client.blocks)

    def state_dicts(self) -> dict[str, NodeState]:
        return {c.id: self.client_state(c, self._optimizers) for c in self.clients}

    def load_state_dicts(self, states: Mapping[str, NodeState]) -> None:
        for client in self.clients:
            self.load_client_state(client, states[client.id], self._optimizers)
