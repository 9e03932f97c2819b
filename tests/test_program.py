"""The iteration written once: every strategy's real run publishes exactly its program's trace,
and carries exactly the messages its program's specs allow."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import torch

from p2pgan.bus import EventBus
from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain, to_model_input
from p2pgan.errors import P2PGanError
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, split_client
from p2pgan.plan.nodedata import ClientRecord, LocalData, PreparedRun
from p2pgan.plan.program import MD_GAN, U_SHAPED, Program
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.events import ClientLosses
from p2pgan.protocol.federation import ClientUpdate, FederationInput
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Message, MessageKind, Phase
from p2pgan.protocol.specs import DOWN, UP
from p2pgan.sim.analytic import OptionTable, analytic_iteration_seconds
from p2pgan.sim.trace import LABEL_BYTES, OperationTracer, trace_from_plan, trace_from_program
from p2pgan.strategies.base import Strategy
from p2pgan.strategies.catalogue import STRATEGIES, create_strategy
from p2pgan.strategies.fedavg import SplitFedAvg
from p2pgan.strategies.mdgan import MDGan
from p2pgan.topology.profiles import topology_from_mapping
from transports.memory import MemoryTransport

SPEC = ModelSpec(width=0.125, z_dim=8)
ROUNDS, STEPS, BATCH, EXAMPLES = 2, 2, 4, 12
MIXED = [ClientCut(0, 0, 0, 0), ClientCut(1, 0, 1, 1), ClientCut(0, 1, 1, 0), ClientCut(1, 1, 1, 1)]


@pytest.fixture(scope="module")
def costs():
    return profile_model(SPEC, batch=2)


@pytest.fixture(scope="module")
def mnist():
    train = load_domain("mnist", "train")
    return to_model_input(train.images[:6 * EXAMPLES]), train.labels[:6 * EXAMPLES].long()


@dataclass
class Recorded:
    prepared: PreparedRun
    tracer: OperationTracer
    messages: list[Message]
    losses: list[ClientLosses]


def prepared_run(plans: list[ClientPlan], costs, mnist) -> PreparedRun:
    images, labels = mnist
    schedule = Schedule(rounds=ROUNDS, local_epochs=1, steps_per_epoch=STEPS, batch_size=BATCH)
    data = {p.client_id: LocalData(images[i * EXAMPLES:(i + 1) * EXAMPLES], labels[i * EXAMPLES:(i + 1) * EXAMPLES])
            for i, p in enumerate(plans)}
    records = tuple(ClientRecord(p.client_id, "mnist", (), 1.0) for p in plans)
    return PreparedRun(Scenario(name="program-test", domains={"mnist": len(plans)}), RunPlan(tuple(plans), schedule),
                       NodeSetup(SPEC, costs, 5, 2e-4, (0.5, 0.999)), records, data)


def record_run(strategy: Strategy, prepared: PreparedRun) -> Recorded:
    """A real run over the memory transport: every event on the bus, every message on the wire."""
    tracer, messages, losses = OperationTracer(), [], []

    async def go():
        transport = MemoryTransport(receive_timeout_s=30)
        transport.add_tap(messages.append)
        node_ids = [SERVER_ID, *prepared.plan.client_ids]
        endpoints = await transport.open(node_ids)
        bus = EventBus()
        bus.subscribe(tracer)
        bus.subscribe(lambda event: losses.append(event) if isinstance(event, ClientLosses) else None)
        nodes = [strategy.create_node(prepared, nid, endpoints[nid], bus) for nid in node_ids]
        await asyncio.gather(*(node.run() for node in nodes))
        await transport.close()

    asyncio.run(go())
    return Recorded(prepared, tracer, messages, losses)


def program_trace(program: Program, prepared: PreparedRun):
    plan = prepared.plan
    return trace_from_program(program, {c.client_id: c.split for c in plan.clients}, prepared.setup.costs,
                              {c.client_id: BATCH for c in plan.clients}, STEPS, include_aggregation=True,
                              rounds=ROUNDS, server_batch=BATCH)


def assert_same_trace(recorded: Recorded, program: Program) -> None:
    real = recorded.tracer.operations()
    assert not recorded.tracer.unknown_messages
    synthetic = program_trace(program, recorded.prepared)
    assert len(real) == len(synthetic)
    for ours, theirs in zip(real, synthetic):
        assert ours == theirs, (ours.describe(), theirs.describe())


def strategy_plans(strategy: Strategy, count: int = 3) -> list[ClientPlan]:
    """The strategy's own layout over ``count`` clients (the scenario's cuts: a mixed list)."""
    ids = [f"c{i:03d}" for i in range(count)]
    layout = strategy.layout(Scenario(name="program-test", domains={"mnist": count}), ids,
                             lambda client_ids: {cid: MIXED[i % len(MIXED)] for i, cid in enumerate(client_ids)})
    if layout.pooled:  # one client holds everything
        ids = ids[:1]
    return [ClientPlan(cid, layout.cuts[cid], EXAMPLES, full_local=layout.full_local) for cid in ids]


def message_signature(msg: Message) -> tuple:
    direction = UP if msg.dst == SERVER_ID else DOWN
    return msg.kind, msg.phase, direction


def assert_specs_cover_exactly(program: Program, messages: list[Message], every_spec: bool = True) -> None:
    """Every message is one the program sends; with ``every_spec``, every spec was also sent."""
    specs = program.message_specs()
    used = set()
    for msg in messages:
        assert specs.problem(msg, SERVER_ID) is None, (msg.key, sorted(msg.tensors))
        matching = [s for s in specs.matching(msg.kind, msg.phase, message_signature(msg)[2])
                    if s.tensors is None or s.tensors == frozenset(msg.tensors)]
        used.update(matching)
    if every_spec:
        assert used == set(specs.specs)


# -- every strategy in the catalogue -------------------------------------------------------------


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_catalogue_strategy_runs_exactly_its_programs_trace(costs, mnist, name):
    """Operations, bytes, FLOPs and dependencies of a real 2-round run equal the program's trace."""
    strategy = create_strategy(name, num_domains=1)
    prepared = prepared_run(strategy_plans(strategy), costs, mnist)
    recorded = record_run(strategy, prepared)
    assert_same_trace(recorded, strategy.program)
    moves_activations = strategy.program is MD_GAN or not prepared.plan.clients[0].full_local
    assert_specs_cover_exactly(strategy.program, recorded.messages, every_spec=moves_activations)


def test_every_catalogue_program_is_one_tested_here():
    assert {cls.program for cls in STRATEGIES.values()} <= {U_SHAPED, MD_GAN}


# -- the U-shaped split over several cut mixes ---------------------------------------------------


CUT_MIXES = {
    "mixed-with-full-local": [ClientPlan(f"c{i:03d}", cut, EXAMPLES) for i, cut in enumerate(MIXED)]
    + [ClientPlan("c004", ClientCut(1, 1, 1, 1), EXAMPLES, full_local=True)],
    "all-offload": [ClientPlan(f"c{i:03d}", ClientCut(0, 0, 0, 0), EXAMPLES) for i in range(3)],
    "all-full-local": [ClientPlan(f"c{i:03d}", ClientCut(1, 1, 1, 1), EXAMPLES, full_local=True) for i in range(2)],
    "one-client": [ClientPlan("c000", ClientCut(1, 0, 0, 1), EXAMPLES)],
}


@pytest.mark.parametrize("mix", list(CUT_MIXES))
def test_u_shaped_trace_equals_a_real_run_for_every_cut_mix(costs, mnist, mix):
    plans = CUT_MIXES[mix]
    recorded = record_run(SplitFedAvg(), prepared_run(plans, costs, mnist))
    assert_same_trace(recorded, U_SHAPED)
    assert_specs_cover_exactly(U_SHAPED, recorded.messages, every_spec=not all(p.full_local for p in plans))
    # trace_from_plan is the U-shaped program's trace
    splits = {p.client_id: p.split for p in plans}
    assert trace_from_plan(splits, costs, {c: BATCH for c in splits}, STEPS, True, rounds=ROUNDS) == \
        program_trace(U_SHAPED, recorded.prepared)


# -- md-gan ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def md_gan_run(costs, mnist):
    strategy = MDGan()
    strategy_plans_ = strategy_plans(strategy)
    return record_run(strategy, prepared_run(strategy_plans_, costs, mnist))


def test_md_gan_trace_equals_a_real_run_and_prices_its_traffic(md_gan_run, costs):
    assert_same_trace(md_gan_run, MD_GAN)
    ops = program_trace(MD_GAN, md_gan_run.prepared)
    n = len(md_gan_run.prepared.plan.clients)
    image = costs.image_bytes()
    per_iteration = [op for op in ops if op.step == 0 and op.round == 1]
    # down: B generated images + their B int64 labels per client; up: an image-shaped gradient
    assert sum(op.nbytes for op in per_iteration) == n * BATCH * (2 * image + LABEL_BYTES)
    server = sum(op.flops for op in per_iteration if op.is_compute and op.node == SERVER_ID)
    g = GENERATOR.block_names
    assert server == pytest.approx((costs.flops(g, "fwd") + costs.flops(g, "bwd")) * n * BATCH)
    # round end: each client's whole D goes up and a D comes back; nothing of G leaves the server
    d_bytes = sum(costs[name].param_bytes for name in DISCRIMINATOR.block_names)
    federate = [op for op in ops if op.step == ROUND_LEVEL_STEP and op.round == 1 and not op.is_compute]
    assert sorted({op.nbytes for op in federate}) == [d_bytes] and len(federate) == 2 * n
    # what the U-shaped trace of the same full-local plan would have priced: no iteration traffic
    splits = {c.client_id: c.split for c in md_gan_run.prepared.plan.clients}
    wrong = trace_from_plan(splits, costs, {c: BATCH for c in splits}, 1, False)
    assert sum(op.nbytes for op in wrong) == 0


def test_md_gan_messages_are_exactly_its_programs(md_gan_run):
    assert_specs_cover_exactly(MD_GAN, md_gan_run.messages)
    down = [m for m in md_gan_run.messages if m.kind is MessageKind.ACTIVATION]
    assert down and all(set(m.tensors) == {"images", "labels"} and m.src == SERVER_ID for m in down)
    params = [m for m in md_gan_run.messages if m.kind is MessageKind.PARAMS]
    assert all({k.split(".")[0] for k in m.tensors} == set(DISCRIMINATOR.block_names) for m in params)


def test_md_gan_d_loss_is_the_sum_of_both_terms(md_gan_run):
    assert len(md_gan_run.losses) == ROUNDS * STEPS * len(md_gan_run.prepared.plan.clients)
    for losses in md_gan_run.losses:
        assert losses.d_loss == pytest.approx(losses.d_real + losses.d_fake, rel=1e-6)


def test_md_gan_aggregate_swaps_discriminators_cyclically():
    ids = ["c000", "c001", "c002"]
    updates = {cid: ClientUpdate(cid, 10, (1, 1, 1, 1), {"d0": {"w": torch.full((2,), float(i))}})
               for i, cid in enumerate(ids)}
    g = {"g0": {"w": torch.ones(3)}}
    result = MDGan().aggregate(FederationInput(1, updates, g, {}, 1))
    assert result.details["d_swap"] == {"c000": "c002", "c001": "c000", "c002": "c001"}
    assert [float(result.client_blocks[cid]["d0"]["w"][0]) for cid in ids] == [2.0, 0.0, 1.0]
    assert torch.equal(result.server_blocks["g0"]["w"], g["g0"]["w"])
    assert result.server_blocks["g0"]["w"] is not g["g0"]["w"]  # a copy, never the live parameters


# -- message specs refuse what the program never sends -------------------------------------------


def first(messages: list[Message], kind: MessageKind, phase: Phase, up: bool) -> Message:
    return next(m for m in messages if m.kind is kind and m.phase is phase and (m.dst == SERVER_ID) == up)


def with_tensors(msg: Message, tensors: dict[str, torch.Tensor]) -> Message:
    return Message(msg.kind, msg.src, msg.dst, msg.round, msg.step, msg.phase, tensors, dict(msg.meta))


def test_specs_refuse_unexpected_names_and_integer_tensors(costs, mnist, md_gan_run):
    recorded = record_run(SplitFedAvg(), prepared_run(CUT_MIXES["all-offload"], costs, mnist))
    specs = U_SHAPED.message_specs()
    act = first(recorded.messages, MessageKind.ACTIVATION, Phase.G_FWD, up=True)
    assert specs.problem(act, SERVER_ID) is None
    renamed = with_tensors(act, {"activation": act.tensors["act"]})
    assert "carries tensors ['activation'], expected ['act']" in specs.problem(renamed, SERVER_ID)
    extra = with_tensors(act, {**act.tensors, "labels": torch.zeros(BATCH, dtype=torch.long)})
    assert "carries tensors" in specs.problem(extra, SERVER_ID)
    integer = with_tensors(act, {"act": act.tensors["act"].long()})
    assert "must be a floating-point tensor" in specs.problem(integer, SERVER_ID)
    grads = first(recorded.messages, MessageKind.GRADIENT, Phase.D_BWD, up=False)
    assert specs.problem(grads, SERVER_ID) is None and set(grads.tensors) == {"fake", "real"}
    assert "carries tensors" in specs.problem(with_tensors(grads, {"fake": grads.tensors["fake"]}), SERVER_ID)

    md_specs = MD_GAN.message_specs()
    down = first(md_gan_run.messages, MessageKind.ACTIVATION, Phase.G_FWD, up=False)
    assert md_specs.problem(down, SERVER_ID) is None
    float_labels = with_tensors(down, {**down.tensors, "labels": down.tensors["labels"].float()})
    assert "must be an integer tensor" in md_specs.problem(float_labels, SERVER_ID)
    integer_images = with_tensors(down, {**down.tensors, "images": down.tensors["images"].long()})
    assert "must be a floating-point tensor" in md_specs.problem(integer_images, SERVER_ID)
    # a split-engine message is not an md-gan one, and the other way round
    assert "no up activation message in phase g_fwd" in md_specs.problem(act, SERVER_ID)
    assert "carries tensors" in specs.problem(down, SERVER_ID)


# -- the analytic model reads the program --------------------------------------------------------


def tiny_topology():
    return topology_from_mapping({
        "name": "tiny", "profiles": {"edge": {"clock_hz": 1e9, "flops_per_cycle": 4, "cores": 1,
                                              "link": {"up_bps": 1e7, "down_bps": 5e7, "latency_s": 0.01}}},
        "server": {"clock_hz": 3e9, "flops_per_cycle": 16}, "assignment": {"mode": "weighted", "weights": {"edge": 1}},
    })


def test_analytic_model_refuses_a_server_first_program(costs):
    splits = {"c000": split_client(ClientCut(1, 1, 1, 1), full_local=True)}
    with pytest.raises(P2PGanError, match="cannot price program 'md-gan'.*Broadcast"):
        analytic_iteration_seconds(splits, costs, {"c000": BATCH}, tiny_topology(), {"c000": "edge"}, MD_GAN)
    with pytest.raises(P2PGanError, match="Broadcast"):
        OptionTable.build(list(splits.values()), costs, MD_GAN)


def test_analytic_columns_come_from_the_programs_round_trips(costs):
    table = OptionTable.build([split_client(ClientCut(0, 0, 0, 0))], costs)
    phases = {key.split(".")[0] for key in table.columns if "." in key}
    assert phases == {trip.phase.value for trip in U_SHAPED.round_trips()} | {GENERATOR.name, DISCRIMINATOR.name}
    # the paired D backward carries two tensors each way
    split = split_client(ClientCut(0, 0, 0, 0)).discriminator
    assert table.columns["d_bwd.up"][0] == 2 * costs[split.server[-1]].out_bytes
    assert table.columns["d_bwd.down"][0] == 2 * costs[split.head[-1]].out_bytes


def test_program_client_blocks():
    local = split_client(ClientCut(1, 1, 1, 1), full_local=True)
    assert MD_GAN.client_blocks(local) == DISCRIMINATOR.block_names
    cut = split_client(ClientCut(1, 0, 0, 1))
    assert U_SHAPED.client_blocks(cut) == cut.client_blocks
