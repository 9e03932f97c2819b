"""The cohort engine: one process executes the program for every client at once, no transport.

It runs the same :class:`~p2pgan.plan.program.Program` as the node pair in
:mod:`p2pgan.engine.client` and :mod:`p2pgan.engine.server`, with the same numbers:

* every client keeps its own blocks, its own random stream (``node_seed``) and batch sampler,
  and its own Adam state (one foreach Adam per network holds the parameters of every client
  that runs with it; Adam's state is per parameter, and the foreach kernels equal the
  per-tensor ones bit for bit);
* client blocks see only their client's batch (BatchNorm statistics per client); every server
  block runs once over the concatenation of its users' batches in client-id order;
* each message boundary is a graph cut (``detach``) where a node would have received a copy,
  so every backward runs the same autograd calls in the same order.

What it drops is the transport: no message copies, no event-loop hops, no per-message
bookkeeping. Memory follows the monolithic loop where the program allows it: clients that never
meet the server (full-local ones) run their iteration one at a time, so only one of them holds
its graphs at once; the clients that meet at the server run together (the server's batches
need all of them), except that of a pair of forwards whose summed loss one backward serves
(D on fake and on real), each forward is back-propagated before the next one runs, so only one
of them holds its graph at a time; each forward's tensors go once its backward has run; and a network's
gradients go once its optimizer step has used them and are not computed again until its next
reset, where the program resets them before anything reads them again (U-shaped: D's gradients
from the G step's pass through D are never computed), so the numbers are the same. A forward
whose graph waits for its backward across other exchanges (U-shaped: G's, through the whole D
step) frees the BatchNorm+activation outputs that leave a segment once it is done; a backward
refills each in place, from the BatchNorm input the graph keeps, when it first reads it
(:class:`~p2pgan.model.recompute.ReleasableOutputs`: the same bits, one BatchNorm forward each).

Per-client kernels stay per client: on the CPU they beat stacked (grouped) kernels for this
model (docs/design.md §4), and equality with the node engine needs the same kernels on the
same shapes (see :mod:`p2pgan.engine.execution`).

It publishes what the nodes publish (compute and transfer events with the same message ids
and bytes, every client's losses, the server's ``RoundAggregated``), so the latency files and
the results folder are written as for a node run.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from p2pgan.bus import EventBus
from p2pgan.engine.cohort_clients import ClientCohort, CohortClient, CohortIteration, on_host
from p2pgan.engine.state import NodeState, blocks_state, copy as state_copy, load_blocks
from p2pgan.engine.cohort_state import load_optimizer_share, optimizer_share
from p2pgan.engine.execution import KernelPolicy, place_blocks
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import DISCRIMINATOR, NETWORKS, NetworkDef, build_initial_blocks
from p2pgan.model.recompute import ReleasableOutputs
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import BWD, FWD, Exchange, Local, LocalAction, Program, RoundTrip, network_split
from p2pgan.plan.run import RunPlan, feature_block
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.events import ClientLosses, RoundAggregated
from p2pgan.protocol.federation import Aggregator, BlockState, ClientUpdate, FederationInput, FederationResult
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKind, Phase
from p2pgan.protocol.params import float_state
from p2pgan.engine.batching import keep_features, run_middle
from p2pgan.engine.locals import compute_loss

@dataclass
class _ServerGraph:
    """The server's batched forward of one phase, kept until its backward."""

    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    samples_per_block: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Group:
    """Clients that execute one iteration together, with the optimizers over their parameters.

    The clients that pass through the server form one group with the server's parameters; a
    client that never does is a group of its own.
    """

    clients: tuple[CohortClient, ...]
    optimizers: dict[str, torch.optim.Optimizer | None]
    through: dict[str, tuple[CohortClient, ...]]
    """Per network, the group's clients that pass through the server."""


@dataclass(frozen=True)
class _Paired:
    """Two forward trips of one network, a loss that sums one term of each, that network's
    gradient reset, and the one backward trip over both (U-shaped: D on fake and on real).

    The cohort runs it as: the reset, then per forward trip its forward, its term and that
    term's backward. The numbers are the same: the running statistics see the forwards in the
    same order, the weights do not move before both backwards, the loss's backward hands each
    term the gradient 1, and every parameter gets one contribution from each trip, whose sum
    does not depend on the order of two terms. (Three or more trips could be summed in
    another order, so they run as written.) What it reports is the program's order
    (:meth:`CohortPort.in_program_order`), with the backward as the one trip it is.
    """

    forward: Exchange
    loss: Local
    reset: Local
    backward: RoundTrip
    end: int
    """The index of the program step after the backward's exchange."""


def paired_passes(program: Program, discarded: frozenset[str]) -> dict[int, _Paired]:
    """The program's :class:`_Paired` stretches, by the index of their forward exchange. The
    reset moves before the forwards, so the network's gradients must be unread there: its
    optimizer step must be ``discarded`` (:func:`~p2pgan.engine.gradients.discarded_after_step`)."""
    steps, found = program.iteration, {}
    for i, step in enumerate(steps[:-3]):
        if not (isinstance(step, Exchange) and len(step.trips) == 2 and all(t.direction == FWD for t in step.trips)):
            continue
        network = step.trips[0].network
        between, after = steps[i + 1:i + 3], steps[i + 3]
        losses = [a for a in between if isinstance(a, Local) and a.action is LocalAction.LOSS]
        resets = [a for a in between if isinstance(a, Local) and a.action is LocalAction.ZERO_GRAD
                  and a.network is network]
        if (network.name not in discarded or any(t.network is not network for t in step.trips)
                or len(losses) != 1 or len(resets) != 1 or not isinstance(after, Exchange) or len(after.trips) != 1):
            continue
        back = after.trips[0]
        if (back.direction == BWD and back.network is network and back.source == losses[0].name
                and {phase for _, phase in back.grad_of} == {t.phase for t in step.trips}
                and [result for result, _ in losses[0].terms] == [t.result for t in step.trips]):
            found[i] = _Paired(step, losses[0], resets[0], back, i + 4)
    return found


class CohortEngine(ClientCohort):
    """Every client and the server of a split run, executed together in this process."""

    def __init__(self, setup: NodeSetup, plan: RunPlan, client_data: Mapping[str, LocalData], aggregator: Aggregator,
                 num_domains: int, program: Program, bus: EventBus, policy: KernelPolicy | None = None) -> None:
        template = build_initial_blocks(setup.model, setup.seed)
        super().__init__(setup, plan.schedule, plan.clients, client_data, template, program, bus,
                         policy or KernelPolicy())
        self._plan = plan
        self._aggregator = aggregator
        self._num_domains = num_domains
        self.server_blocks = {name: template[name] for name in plan.server_blocks()}
        place_blocks(self.server_blocks, self.policy)
        meeting = tuple(c for c in self.clients if c.plan.split.server_blocks)
        self._groups = [self._group(meeting, with_server=True)] if meeting else []
        self._groups += [self._group((c,), with_server=False) for c in self.clients if not c.plan.split.server_blocks]
        self._group_of = {c.id: group for group in self._groups for c in group.clients}
        # Without a client that meets it the server holds no block, hence no optimizer.
        self._server_optimizers = self._groups[0].optimizers if meeting else {net.name: None for net in NETWORKS}
        self._paired = paired_passes(program, self._gradients.discarded)
        self._feature_block = feature_block(DISCRIMINATOR)
        self._features: dict[str, torch.Tensor] = {}

    def _server_params(self, network: NetworkDef) -> list[torch.nn.Parameter]:
        return [p for n, b in self.server_blocks.items() if n in network.block_names for p in b.parameters()]

    def _group(self, clients: tuple[CohortClient, ...], with_server: bool) -> _Group:
        return _Group(clients, {net.name: self._optimizer([p for c in clients for p in c.params(net)]
                                                          + (self._server_params(net) if with_server else []))
                                for net in NETWORKS},
                      {net.name: tuple(c for c in clients if network_split(c.plan.split, net).server)
                       for net in NETWORKS})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer the engine steps (one per network and group)."""
        return [o for group in self._groups for o in group.optimizers.values() if o is not None]

    # -- the schedule ---------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [*super().node_ids, SERVER_ID]

    async def _iterate(self, round_: int, step: int) -> list[ClientLosses]:
        return self.iteration(round_, step)

    async def _federate(self, round_: int, losses: dict[str, dict[str, float]]) -> None:
        self.federate(round_, losses)

    def iteration(self, round_: int, step: int) -> list[ClientLosses]:
        self._port.at(round_, step)
        values: dict[str, list[torch.Tensor]] = {}
        for group in self._groups:
            values.update(self._group_iteration(group))
        return self._losses(round_, step, values)

    def _group_iteration(self, group: _Group) -> dict[str, list[torch.Tensor]]:
        """One iteration of the program for ``group``; returns each client's loss values."""
        its = {c.id: self._draw(c) for c in group.clients}
        graphs: dict[Phase, _ServerGraph] = {}
        self._gradients.start_iteration()
        steps, index = self._program.iteration, 0
        while index < len(steps):
            action, paired = steps[index], self._paired.get(index)
            index += 1
            if paired is not None and paired.backward.network.name in self._gradients.idle:
                self._paired_passes(group, paired, its)
                index = paired.end
            elif isinstance(action, Exchange):
                # A forward whose graph waits for its backward across other exchanges lets go of
                # the block outputs it can refill (p2pgan.model.recompute.ReleasableOutputs).
                releasable = ReleasableOutputs() if index - 1 in self._waiting else None
                with releasable or nullcontext():
                    self._exchange(action, group, its, graphs)
                if releasable is not None:  # what the iteration reads on (its results) stays
                    releasable.release(keep=[it.tensors[t.result] for it in its.values() for t in action.trips])
            elif isinstance(action, Local):
                self._local(action, its, group.optimizers)
        return self._loss_values(its)

    def _exchange(self, action: Exchange, group: _Group, its: dict[str, CohortIteration],
                  graphs: dict[Phase, _ServerGraph]) -> None:
        each = self._threads.each
        for trip in action.trips:
            each(group.clients, lambda client: self._client_up(client, trip, its[client.id]))
        for trip in action.trips:
            through = group.through[trip.network.name]
            if trip.direction == FWD:
                graphs[trip.phase] = self._server_forward(trip, through, its)
            else:
                self._server_backward(trip, through, {name: graphs.pop(phase) for name, phase in trip.grad_of}, its)
        for trip in action.trips:
            each(group.clients, lambda client: self._client_down(client, trip, its[client.id]))

    def _paired_passes(self, group: _Group, paired: _Paired, its: dict[str, CohortIteration]) -> None:
        """``paired`` one forward at a time (see :class:`_Paired`)."""
        back, network = paired.backward, paired.backward.network
        through = group.through[network.name]
        self._local(paired.reset, its, group.optimizers)  # nothing reached these gradients since the step
        up_bytes = {c.id: 0 for c in through}
        down_bytes = dict(up_bytes)
        served: dict[Phase, tuple[dict[str, int], int]] = {}
        """Per trip, what the server's report needs of its graph: samples per block, batch."""
        each = self._threads.each
        with self._port.in_program_order():
            for k, trip in enumerate(paired.forward.trips):
                self._port.position = (0, k)
                each(group.clients, lambda client: self._client_up(client, trip, its[client.id]))
                self._port.position = (1, k)
                graph = self._server_forward(trip, through, its)
                self._port.position = (2, k)
                term = Local(LocalAction.LOSS, name=trip.result, terms=((trip.result, dict(paired.loss.terms)[trip.result]),))

                def down_and_back(client: CohortClient) -> None:  # the tail, this trip's term, its backward
                    it = its[client.id]
                    self._client_down(client, trip, it)
                    torch.autograd.backward(compute_loss(term, it.tensors, it.terms), inputs=self._wanted(client, it))
                each(group.clients, down_and_back)
                for client in through:
                    up_bytes[client.id] += _nbytes(its[client.id].passes[trip.phase].tail_in.grad)
                if through:
                    wanted = self._gradients.live_params(self._server_params)
                    torch.autograd.backward([graph.outputs[c.id] for c in through],
                                            [its[c.id].passes[trip.phase].tail_in.grad for c in through],
                                            inputs=wanted + list(graph.leaves.values()))
                grads = {c.id: graph.leaves[c.id].grad for c in through}
                for client in through:
                    down_bytes[client.id] += _nbytes(grads[client.id])
                each(through, lambda client: torch.autograd.backward(
                    [its[client.id].passes[trip.phase].head_out], [grads[client.id]],
                    inputs=self._wanted(client, its[client.id])))
                served[trip.phase] = (graph.samples_per_block, sum(x.shape[0] for x in graph.leaves.values()))
                del graph
                for client in group.clients:
                    its[client.id].forget_pass(trip.phase, self._program)
        for it in its.values():
            total = None
            for result, _ in paired.loss.terms:
                total = it.terms[result] if total is None else total + it.terms[result]
            it.losses[paired.loss.name] = total
        self._report_backward(group, back, its, [served[phase] for _, phase in back.grad_of], up_bytes, down_bytes)

    def _report_backward(self, group: _Group, back: RoundTrip, its: dict[str, CohortIteration],
                         served: list[tuple[dict[str, int], int]], up_bytes: dict[str, int],
                         down_bytes: dict[str, int]) -> None:
        """What ``back`` run as one trip reports: every client's first backward and upload, the
        server's batched backward and downloads, every client's backward down its head."""
        through = group.through[back.network.name]
        up: dict[str, str] = {}
        for client in group.clients:
            split = client.split(back)
            self._computed(client.id, back.before.blocks(split, back.network), back.phase, BWD,
                           back.samples * its[client.id].batch)
            if split.server:
                up[client.id] = self._port.sent(back.kind, client.id, SERVER_ID, back.phase, nbytes=up_bytes[client.id])
        down: dict[str, str] = {}
        if through:
            for client in through:
                self._port.received(SERVER_ID, up[client.id])
            samples: dict[str, int] = {}
            for per_block, _ in served:
                for name, count in per_block.items():
                    samples[name] = samples.get(name, 0) + count
            batch = sum(count for _, count in served)
            self._port.computed(SERVER_ID, tuple(samples), back.phase, BWD, batch, self._flops(samples, BWD))
            for client in through:
                down[client.id] = self._port.sent(back.kind, SERVER_ID, client.id, back.phase,
                                                  nbytes=down_bytes[client.id])
        for client in group.clients:
            split = client.split(back)
            if split.server:
                self._port.received(client.id, down[client.id])
                self._computed(client.id, back.after.blocks(split, back.network), back.phase, BWD,
                               back.samples * its[client.id].batch)

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
            features={cid: feature.to("cpu", copy=True) for cid, feature in self._features.items()},
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
            server.update(optimizer_share(net.name, self._server_optimizers[net.name], self._server_params(net)))
        server.update({f"features/{cid}": state_copy(t) for cid, t in self._features.items()})
        states = {SERVER_ID: on_host(NodeState(SERVER_ID, server))}
        for client in self.clients:
            states[client.id] = self.client_state(client, self._group_of[client.id].optimizers)
        return states

    def load_state_dicts(self, states: dict[str, NodeState]) -> None:
        """Continue from every node's saved state (a cohort's or a node run's checkpoint)."""
        server = states[SERVER_ID]
        load_blocks(server, self.server_blocks)
        for net in NETWORKS:
            load_optimizer_share(server, net.name, self._server_optimizers[net.name], self._server_params(net))
        device = self.policy.device
        self._features = {cid: t.to(device).clone() for cid, t in server.under("features").items()}
        for client in self.clients:
            self.load_client_state(client, states[client.id], self._group_of[client.id].optimizers)

    # -- the server's steps ---------------------------------------------------------------------

    def _server_forward(self, trip: RoundTrip, clients: tuple[CohortClient, ...],
                        its: dict[str, CohortIteration]) -> _ServerGraph:
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
        keep_features(self._features, middle.kept)
        graph.samples_per_block.update(middle.samples_per_block)
        self._port.computed(SERVER_ID, tuple(graph.samples_per_block), phase, FWD,
                            sum(x.shape[0] for x in graph.leaves.values()), self._flops(graph.samples_per_block, FWD))
        for client in clients:
            graph.outputs[client.id] = flowing[client.id]
            self._send_down(client, trip, its[client.id], {"act": flowing[client.id].detach()})
        return graph

    def _server_backward(self, trip: RoundTrip, clients: tuple[CohortClient, ...], graphs: dict[str, _ServerGraph],
                         its: dict[str, CohortIteration]) -> None:
        if not clients:
            return
        outputs, grads = [], []
        for client in clients:
            received = self._receive_upload(client, trip, its[client.id])
            for name, graph in graphs.items():
                outputs.append(graph.outputs[client.id])
                grads.append(received[name])
        wanted = self._gradients.live_params(self._server_params)
        wanted += [leaf for graph in graphs.values() for leaf in graph.leaves.values()]
        torch.autograd.backward(outputs, grads, inputs=wanted)
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

    def _upload(self, client: CohortClient, trip: RoundTrip, it: CohortIteration, tensors: dict[str, torch.Tensor]) -> None:
        msg_id = self._port.sent(trip.kind, client.id, SERVER_ID, trip.phase, tensors.values())
        it.uploads[trip.phase] = (msg_id, tensors)

    def _receive_upload(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> dict[str, torch.Tensor]:
        msg_id, tensors = it.uploads.pop(trip.phase)
        self._port.received(SERVER_ID, msg_id)
        return {name: t.detach() for name, t in tensors.items()}

    def _send_down(self, client: CohortClient, trip: RoundTrip, it: CohortIteration, tensors: dict[str, torch.Tensor]) -> None:
        msg_id = self._port.sent(trip.kind, SERVER_ID, client.id, trip.phase, tensors.values())
        it.downloads[trip.phase] = (msg_id, tensors)

    def _download(self, client: CohortClient, trip: RoundTrip, it: CohortIteration) -> dict[str, torch.Tensor]:
        msg_id, tensors = it.downloads.pop(trip.phase)
        self._port.received(client.id, msg_id)
        return {name: t.detach() for name, t in tensors.items()}

    # -- helpers --------------------------------------------------------------------------------

    def _flops(self, samples_per_block: dict[str, int], direction: str) -> float:
        costs = self._setup.costs
        return sum(costs.flops((name,), direction) * n for name, n in samples_per_block.items())


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _host_copy(state: BlockState) -> BlockState:
    """A block's state as a node would send it: a copy on the CPU, never the live tensors."""
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}
