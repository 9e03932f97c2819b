"""Operation traces: the tracer's causal edges, and synthetic traces == what the engine records."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from p2pgan.engine.client import ClientNode

from p2pgan.plan.nodedata import LocalData
from p2pgan.ids import SERVER_ID
from p2pgan.protocol.messages import MessageKey, MessageKind, Phase
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.engine.server import ServerNode
from p2pgan.plan.program import U_SHAPED
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.events import ComputeEvent, NodeStateEvent, TransferEvent
from p2pgan.bus import EventBus
from p2pgan.strategies.fedavg import SplitFedAvg
from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, all_cut_options, split_client
from p2pgan.sim.trace import OperationTracer, trace_from_plan
from transports.memory import MemoryTransport

SPEC = ModelSpec(width=0.125, z_dim=8)


@pytest.fixture(scope="module")
def costs():
    return profile_model(SPEC, batch=2)


def msg(kind, src, dst, phase, step=0, rnd=1):
    return str(MessageKey(kind, src, dst, rnd, step, phase))


def test_tracer_edges_from_a_hand_built_event_sequence():
    """Consumed messages gate computes; a transfer waits for its sender's last compute."""
    up = msg(MessageKind.ACTIVATION, "c0", SERVER_ID, Phase.G_FWD)
    down = msg(MessageKind.ACTIVATION, SERVER_ID, "c0", Phase.G_FWD)
    params = msg(MessageKind.PARAMS, "c0", SERVER_ID, Phase.FEDERATE, step=-1)
    agg = msg(MessageKind.AGGREGATE, SERVER_ID, "c0", Phase.FEDERATE, step=-1)
    events = [
        ComputeEvent("c0", 1, 0, "g_fwd", "fwd", ("g0",), 4, 100.0),
        TransferEvent(up, "c0", SERVER_ID, "activation", 1, 0, "g_fwd", 40),
        NodeStateEvent("c0", "waiting"),  # ignored
        ComputeEvent(SERVER_ID, 1, 0, "g_fwd", "fwd", ("g1", "g2"), 4, 500.0, (up,)),
        TransferEvent(down, SERVER_ID, "c0", "activation", 1, 0, "g_fwd", 80),
        ComputeEvent("c0", 1, 0, "g_fwd", "fwd", ("g3", "g4"), 4, 200.0, (down,)),
        TransferEvent(params, "c0", SERVER_ID, "params", 1, -1, "federate", 1000),
        ComputeEvent(SERVER_ID, 1, -1, "federate", "fwd", (), 1, 250.0, (params,)),
        TransferEvent(agg, SERVER_ID, "c0", "aggregate", 1, -1, "federate", 1000),
        # next round: the engine clears consumed after loading the aggregate; the tracer keeps the edge
        ComputeEvent("c0", 2, 0, "g_fwd", "fwd", ("g0",), 4, 100.0),
    ]
    tracer = OperationTracer()
    for event in events:
        tracer(event)
    ops = tracer.operations()
    by_desc = {(op.node, op.round, op.step, op.msg_id or op.blocks): op for op in ops}
    head = by_desc[("c0", 1, 0, ("g0",))]
    upload = by_desc[("c0", 1, 0, up)]
    server = by_desc[(SERVER_ID, 1, 0, ("g1", "g2"))]
    download = by_desc[(SERVER_ID, 1, 0, down)]
    tail = by_desc[("c0", 1, 0, ("g3", "g4"))]
    aggregate = by_desc[(SERVER_ID, 1, 0, agg)] if (SERVER_ID, 1, 0, agg) in by_desc else by_desc[(SERVER_ID, 1, -1, agg)]
    next_head = by_desc[("c0", 2, 0, ("g0",))]
    assert upload.deps == (head.index,)
    assert server.deps == (upload.index,)
    assert download.deps == (server.index,)
    assert tail.deps == (download.index,)
    assert next_head.deps == (aggregate.index,)
    assert [op.index for op in ops] == list(range(len(ops)))
    assert sum(op.nbytes for op in ops) == 40 + 80 + 2000
    assert not tracer.unknown_messages


def test_trace_is_canonical_whatever_the_interleaving(costs):
    """Nodes publish in their own program order; how coroutines interleave must not matter."""
    splits = {f"c{i}": split_client(cut) for i, cut in enumerate(all_cut_options()[:5])}
    ops = trace_from_plan(splits, costs, {c: 4 for c in splits}, iterations=2, include_aggregation=True)
    tracer = OperationTracer()
    # Re-publish the same events, shuffled across nodes but in program order per node.
    queues: dict[str, list] = {}
    for op in ops:
        queues.setdefault(op.node, []).append(op)
    rng = random.Random(3)
    remaining = {node: list(q) for node, q in queues.items()}
    published = set()
    while remaining:
        node = rng.choice(sorted(remaining))
        op = remaining[node][0]
        # A compute may only be published after the transfers it consumed (as in a real run).
        if any(d not in published and not ops[d].is_compute for d in op.deps):
            continue
        remaining[node].pop(0)
        if not remaining[node]:
            del remaining[node]
        published.add(op.index)
        if op.is_compute:
            # The engine reports consumed messages, except the aggregate (the tracer adds that edge).
            consumed = tuple(ops[d].msg_id for d in op.deps if not ops[d].is_compute and ops[d].msg_kind != "aggregate")
            tracer(ComputeEvent(op.node, op.round, op.step, op.phase, op.direction, op.blocks, op.batch, op.flops,
                                consumed))
        else:
            tracer(TransferEvent(op.msg_id, op.node, op.dst, op.msg_kind, op.round, op.step, op.phase, op.nbytes))
    assert tracer.operations() == ops


def run_engine(costs, plans, rounds, steps, batch):
    setup = NodeSetup(SPEC, costs, 5, 2e-4, (0.5, 0.999))
    schedule = Schedule(rounds=rounds, local_epochs=1, steps_per_epoch=steps, batch_size=batch)
    plan = RunPlan(tuple(plans), schedule)
    gen = torch.Generator().manual_seed(0)
    data = {p.client_id: LocalData(torch.rand(12, 1, 28, 28, generator=gen) * 2 - 1,
                                   torch.randint(0, 10, (12,), generator=gen)) for p in plans}
    tracer = OperationTracer()

    async def go():
        transport = MemoryTransport(receive_timeout_s=30)
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        bus.subscribe(tracer)
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED)
        clients = [ClientNode(setup, p, schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED) for p in plans]
        await asyncio.gather(server.run(), *(c.run() for c in clients))
        await transport.close()

    asyncio.run(go())
    return tracer


def test_synthetic_trace_equals_the_engines_recorded_trace(costs):
    """Every operation, byte count, FLOP count and dependency of a real run, predicted exactly."""
    cuts = [ClientCut(0, 0, 0, 0), ClientCut(1, 0, 1, 1), ClientCut(0, 1, 1, 0), ClientCut(1, 1, 1, 1)]
    plans = [ClientPlan(f"c{i:03d}", cut, 12) for i, cut in enumerate(cuts)]
    plans.append(ClientPlan("c004", ClientCut(1, 1, 1, 1), 12, full_local=True))
    rounds, steps, batch = 2, 2, 4
    tracer = run_engine(costs, plans, rounds, steps, batch)
    recorded = tracer.operations()
    assert not tracer.unknown_messages
    synthetic = trace_from_plan({p.client_id: p.split for p in plans}, costs, {p.client_id: batch for p in plans},
                                iterations=steps, include_aggregation=True, rounds=rounds)
    assert len(recorded) == len(synthetic)
    for real, synth in zip(recorded, synthetic):
        assert real == synth, (real.describe(), synth.describe())
