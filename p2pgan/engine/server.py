"""The server: one shared copy of every offloaded block, run batched over the clients present.

With ``faults:`` each iteration exchanges only with the clients the plan has present there (the
batched middle runs over them, in client-id order), and under ``faults.policy: continue`` a peer
that is dead or silent past ``faults.peer_deadline_s`` is dropped for the rest of the run
(:mod:`p2pgan.engine.participation`) while the iteration goes on with the others."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKind, Phase

from p2pgan.ids import SERVER_ID
from p2pgan.engine.loops import RoundCheckpoint, run_server
from p2pgan.engine.participation import Participation
from p2pgan.engine.execution import place_node_blocks
from p2pgan.engine.gradients import GradientUse, waiting_forwards
from p2pgan.engine.state import (NodeState, allocate_adam_state, blocks_state, copy, load_blocks, load_optimizers,
                                 optimizers_state)
from p2pgan.plan.run import ClientPlan, RunPlan, feature_block
from p2pgan.engine.port import NodePort
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.setup import NodeSetup
from p2pgan.bus import EventBus
from p2pgan.protocol.events import RoundAggregated
from p2pgan.protocol.messages import Message
from p2pgan.protocol.federation import Aggregator, FederationResult

from p2pgan.model.blocks import DISCRIMINATOR, NETWORKS, NetworkDef, build_initial_blocks
from p2pgan.plan.program import BWD, FWD, Exchange, Local, Program, RoundTrip, network_split
from p2pgan.protocol.endpoint import Endpoint
from p2pgan.engine.federate import federate_round
from p2pgan.engine.batching import keep_features, run_middle
from p2pgan.model.recompute import ReleasableOutputs
from p2pgan.engine.locals import apply_optimizer_action


@dataclass
class _PhaseGraph:
    """The server's autograd graph of one batched forward, kept until its backward."""

    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    samples_per_block: dict[str, int] = field(default_factory=dict)


class ServerNode:
    """Runs every middle block once per phase over the concatenation of its clients' batches.

    Memory (the numbers are the same): Adam's state is made up front; gradients follow
    :class:`~p2pgan.engine.gradients.GradientUse` as on the clients (D's from the G step's pass
    are never computed); a phase's graph (received leaves, batched outputs, input gradients)
    goes as soon as its backward has sent the gradients down; the clustering feature is a copy of
    each client's slice, so the batched block output it is cut from can go; and a forward whose
    graph waits across other exchanges (G's) frees the block outputs it sent down once every
    client has answered the next exchange (so each has had its copy), refilled in place when the
    backward reads them (:class:`~p2pgan.model.recompute.ReleasableOutputs`).
    """

    def __init__(self, setup: NodeSetup, plan: RunPlan, strategy: Aggregator, num_domains: int,
                 endpoint: Endpoint, bus: EventBus, program: Program, faults: FaultPlan | None = None) -> None:
        self.node_id = SERVER_ID
        self._setup = setup
        self._plan = plan
        self._strategy = strategy
        self._num_domains = num_domains
        self._bus = bus
        blocks = build_initial_blocks(setup.model, setup.seed)
        self.blocks = {name: blocks[name] for name in plan.server_blocks()}
        place_node_blocks(self.blocks, setup.device)
        self._program = program
        self._optimizers = {net.name: setup.adam(self._params(net)) for net in NETWORKS}
        for optimizer in self._optimizers.values():
            allocate_adam_state(optimizer)
        self._gradients = GradientUse(program)
        self._waiting = {t.phase for i in waiting_forwards(program) for t in program.iteration[i].trips}
        self._held: list[ReleasableOutputs] = []
        """Waiting forwards' outputs, released at the next forward's receive, restored at the iteration's end."""
        self._clients = {net.name: plan.clients_through(net) for net in NETWORKS}
        self._feature_block = feature_block(DISCRIMINATOR)
        self._features: dict[str, torch.Tensor] = {}
        schedule = plan.schedule
        if faults is None:
            faults = FaultPlan.none(plan.client_ids, schedule.rounds, schedule.steps_per_round)
        self.participation = Participation(faults, bus)
        self._port = NodePort(self.node_id, endpoint, bus, setup.costs,
                              faults.peer_deadline_s if self.participation.continues else None,
                              wanted=lambda peer: peer not in self.participation.dropped, device=setup.device)

    async def run(self, first_round: int = 1, checkpoint: RoundCheckpoint | None = None) -> None:
        await run_server(self, self._plan.schedule, self._bus, first_round, checkpoint)

    def state_dict(self) -> NodeState:
        """Blocks, Adam state, the clustering features kept from the last D pass, and (with
        faults) the dropped peers and the clusters clients were last aggregated in."""
        features = {f"features/{cid}": copy(t) for cid, t in self._features.items()}
        return NodeState(self.node_id, {**blocks_state(self.blocks), **optimizers_state(self._optimizers), **features,
                                        **self.participation.state()})

    def load_state_dict(self, state: NodeState) -> None:
        load_blocks(state, self.blocks)
        load_optimizers(state, self._optimizers)
        self._features = {cid: t.to(self._setup.device, copy=True) for cid, t in state.under("features").items()}
        self.participation.load_state(state)

    async def iteration(self, round_: int, step: int) -> None:
        self._port.at(round_, step)
        self.participation.enter(round_, step)
        graphs: dict[Phase, _PhaseGraph] = {}
        self._gradients.start_iteration()
        for action in self._program.iteration:
            if isinstance(action, Exchange):
                for trip in action.trips:
                    here = self.participation.now  # re-read: a peer may have been dropped meanwhile
                    clients = tuple(c for c in self._clients[trip.network.name] if c.client_id in here)
                    if trip.direction == FWD:
                        graphs[trip.phase] = await self._forward(trip, clients)
                    else:
                        await self._backward(trip, clients, {name: graphs.pop(phase) for name, phase in trip.grad_of})
            elif isinstance(action, Local):
                apply_optimizer_action(action, self._optimizers)
                self._gradients.after(action, self._optimizers)
            else:
                raise TypeError(f"the split server cannot execute {type(action).__name__}")
        for held in self._held:
            held.restore()
        self._held.clear()

    async def federate(self, round_: int) -> FederationResult:
        self._port.at(round_, ROUND_LEVEL_STEP)
        result, losses = await federate_round(self._port, self._plan, round_, self.blocks, self._strategy,
                                              self._features, self._num_domains, self.participation,
                                              {c.client_id: self._program.client_blocks(c.split)
                                               for c in self._plan.clients})
        self._bus.publish(RoundAggregated(round_, result, losses))
        return result

    # -- batched middle ---------------------------------------------------------------------

    async def _forward(self, trip: RoundTrip, clients: tuple[ClientPlan, ...]) -> _PhaseGraph:
        net, phase = trip.network, trip.phase
        graph = _PhaseGraph()
        received = await self._port.receive_each(MessageKind.ACTIVATION, [c.client_id for c in clients], phase,
                                                 self._lost)
        for held in self._held:  # every client answering has had what the waiting forward sent it
            held.release()
        clients = tuple(c for c in clients if c.client_id in received)
        if not clients:
            return graph
        for client in clients:
            graph.leaves[client.client_id] = received[client.client_id].tensors["act"].requires_grad_(True)
        self._port.state("computing")
        held = ReleasableOutputs() if phase in self._waiting and not self._port.shares_sent else None
        with held or nullcontext():
            middle = run_middle(self.blocks, net.block_names, {c.client_id: self._server_part(c, net) for c in clients},
                                graph.leaves, self._feature_block if trip.features else None)
        if held is not None:
            self._held.append(held)
        flowing = middle.flowing
        keep_features(self._features, middle.kept)
        graph.samples_per_block.update(middle.samples_per_block)
        self._port.computed(tuple(graph.samples_per_block), phase, FWD,
                            sum(x.shape[0] for x in graph.leaves.values()), self._flops(graph.samples_per_block, FWD))
        replies: list[Message] = []
        for client in clients:
            graph.outputs[client.client_id] = flowing[client.client_id]
            replies.append(self._port.message(MessageKind.ACTIVATION, client.client_id, phase,
                                              {"act": flowing[client.client_id].detach()}))
        await self._port.send_each(replies, self._lost)
        return graph

    async def _backward(self, trip: RoundTrip, clients: tuple[ClientPlan, ...], graphs: dict[str, _PhaseGraph]) -> None:
        """Once every participant's output gradient is in, back-propagate the batched graphs."""
        received = await self._port.receive_each(MessageKind.GRADIENT, [c.client_id for c in clients], trip.phase,
                                                 self._lost)
        clients = tuple(c for c in clients if c.client_id in received)
        if not clients:
            return
        replies = self._back_propagate(trip.phase, clients, graphs, received)
        # The graphs go before the sends yield to the clients: over the memory transport their
        # leaves are the clients' own uploads, which the clients would otherwise wait to free.
        graphs.clear()
        del received
        await self._port.send_each(replies, self._lost)

    def _back_propagate(self, phase: Phase, clients: tuple[ClientPlan, ...], graphs: dict[str, _PhaseGraph],
                        received: dict[str, Message]) -> list[Message]:
        """The batched backward; returns each client's input gradients, to be sent down."""
        outputs = [graph.outputs[c.client_id] for c in clients for graph in graphs.values()]
        grads = [received[c.client_id].tensors[name] for c in clients for name in graphs]
        self._port.state("computing")
        wanted = self._gradients.live_params(self._params)
        wanted += [leaf for graph in graphs.values() for leaf in graph.leaves.values()]
        torch.autograd.backward(outputs, grads, inputs=wanted)
        samples: dict[str, int] = {}
        for graph in graphs.values():
            for name, count in graph.samples_per_block.items():
                samples[name] = samples.get(name, 0) + count
        batch = sum(x.shape[0] for g in graphs.values() for x in g.leaves.values())
        self._port.computed(tuple(samples), phase, BWD, batch, self._flops(samples, BWD))
        return [self._port.message(MessageKind.GRADIENT, c.client_id, phase,
                                   {name: graph.leaves[c.client_id].grad for name, graph in graphs.items()})
                for c in clients]

    def _lost(self, peer: str, problem: str) -> None:
        """A peer dead or silent past its deadline (``faults.policy: continue``): gone from here on."""
        self.participation.drop(peer, self._port.round, self._port.step, problem)

    def _params(self, net: NetworkDef) -> list[torch.nn.Parameter]:
        return [p for n, b in self.blocks.items() if n in net.block_names for p in b.parameters()]

    @staticmethod
    def _server_part(client: ClientPlan, net: NetworkDef) -> tuple[str, ...]:
        return network_split(client.split, net).server

    def _flops(self, samples_per_block: dict[str, int], direction: str) -> float:
        costs = self._setup.costs
        return sum(costs.flops((name,), direction) * n for name, n in samples_per_block.items())
