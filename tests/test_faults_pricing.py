"""Faults in virtual time: stragglers, lossy links and absences priced by the SimPy engine.

Each test prices the same tiny plan (three clients on the paper's edge devices behind the
server's shared NIC) with and without one fault, and checks that the number moved where it
should by exactly what the fault says: a compute factor multiplies that client's busy time, a
link factor its access link's, a lossy link adds its seeded resends' bits on that link only, a
dropped client has no operation in what it missed. The round deadline and the latency
extension (planned trace, dropped peers, live estimate, latency.json) are checked on the same plan.
"""

from __future__ import annotations

import json

import pytest
import torch

from p2pgan.bus import EventBus
from p2pgan.config.loader import parse_scenario
from p2pgan.config.schema import DropoutSpec, FaultsSpec, LossyLinkSpec, Scenario, StragglerSpec
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.policies import CUT_POLICIES
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.nodedata import ClientRecord, PreparedRun
from p2pgan.plan.program import U_SHAPED
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.events import ParticipationChanged, RoundAggregated
from p2pgan.protocol.federation import FederationResult
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, MessageKind
from p2pgan.resources import resource_path
from p2pgan.run.faults import build_fault_plan
from p2pgan.run.latency import LatencyExtension
from p2pgan.sim.engine import simulate
from p2pgan.sim.faults import own_rounds
from p2pgan.sim.trace import trace_from_program
from p2pgan.topology.profiles import load_topology

torch.set_num_threads(1)

SPEC = ModelSpec(width=0.125, z_dim=8)
IDS = ["c000", "c001", "c002"]
BATCH, STEPS, ROUNDS = 4, 2, 3
NIC = "shared:nic"


@pytest.fixture(scope="module")
def costs():
    return profile_model(SPEC, batch=2)


@pytest.fixture(scope="module")
def topology():
    return load_topology(resource_path("topologies", "paper-edge-nic.yaml"))


@pytest.fixture(scope="module")
def run_plan():
    cuts = CUT_POLICIES["all-offload"].cuts(IDS)
    return RunPlan(tuple(ClientPlan(c, cuts[c], 64) for c in IDS), Schedule(ROUNDS, 1, STEPS, BATCH))


def faults(**sections) -> FaultPlan:
    return FaultPlan.from_spec(FaultsSpec(**sections), {"mnist": IDS}, ROUNDS, STEPS, seed=1)


def price(plan, costs, topology, faults=None):
    splits = {c.client_id: c.split for c in plan.clients}
    ops = trace_from_program(U_SHAPED, splits, costs, {c: BATCH for c in IDS}, STEPS, include_aggregation=True,
                             rounds=ROUNDS, faults=faults)
    return ops, simulate(ops, topology, topology.assign_profiles(IDS), faults)


def test_the_topology_has_a_shared_segment(topology):
    hops = topology.path("c000", topology.assign_profiles(IDS)["c000"], "up")
    assert [h.shared for h in hops] == [False, True] and hops[1].resource == f"{NIC}:up"


def test_a_compute_factor_multiplies_that_clients_compute_time_only(run_plan, costs, topology):
    _, base = price(run_plan, costs, topology)
    _, slow = price(run_plan, costs, topology, faults(stragglers=[StragglerSpec(clients=["c001"], compute=3.0)]))
    assert slow.node_busy_s["c001"] == pytest.approx(3 * base.node_busy_s["c001"], rel=1e-12)
    for node in ("c000", "c002", SERVER_ID):
        assert slow.node_busy_s[node] == pytest.approx(base.node_busy_s[node], rel=1e-12)
    assert slow.link_busy_s == pytest.approx(base.link_busy_s, rel=1e-12)
    assert slow.total_seconds >= base.total_seconds


def test_a_link_factor_slows_that_clients_access_link_both_ways(run_plan, costs, topology):
    _, base = price(run_plan, costs, topology)
    _, slow = price(run_plan, costs, topology, faults(stragglers=[StragglerSpec(clients=["c000"], link=2.5)]))
    for direction in ("up", "down"):
        assert slow.link_busy_s[f"c000:{direction}"] == pytest.approx(2.5 * base.link_busy_s[f"c000:{direction}"])
        assert slow.link_busy_s[f"c001:{direction}"] == pytest.approx(base.link_busy_s[f"c001:{direction}"])
    assert slow.link_busy_s[NIC + ":up"] == pytest.approx(base.link_busy_s[NIC + ":up"])
    assert slow.node_busy_s == pytest.approx(base.node_busy_s)
    assert slow.total_seconds > base.total_seconds


def test_a_lossy_link_costs_exactly_its_seeded_resends(run_plan, costs, topology):
    ops, base = price(run_plan, costs, topology)
    lossy = faults(lossy_links=[LossyLinkSpec(clients=["c002"], loss_rate=0.5)])
    _, priced = price(run_plan, costs, topology, lossy)
    assignment = topology.assign_profiles(IDS)
    resends = 0
    for direction, mine in (("up", lambda op: op.node == "c002"), ("down", lambda op: op.dst == "c002")):
        access = topology.path("c002", assignment["c002"], direction)[0]
        mine_ops = [op for op in ops if not op.is_compute and mine(op)]
        lost = [lossy.retransmissions(op.round, op.step, op.phase, op.node, op.dst) for op in mine_ops]
        resends += sum(lost)
        extra = sum(k * op.nbytes * 8.0 / access.bps for k, op in zip(lost, mine_ops))
        key = f"c002:{direction}"
        assert priced.link_busy_s[key] - base.link_busy_s[key] == pytest.approx(extra, rel=1e-9)
    assert resends > 0
    # The shared NIC carries each message once; nobody else's link changes.
    for key in (f"{NIC}:up", f"{NIC}:down", "c000:up", "c001:down"):
        assert priced.link_busy_s[key] == pytest.approx(base.link_busy_s[key])


def test_a_dropped_client_has_no_operation_in_what_it_missed(run_plan, costs, topology):
    plan = faults(dropout=[DropoutSpec(clients=["c001"], at_round=2, rejoin_round=3),
                           DropoutSpec(clients=["c002"], at_round=1, at_step=1)])
    ops, priced = price(run_plan, costs, topology, plan)
    _, base = price(run_plan, costs, topology)

    def touches(op, cid):
        return op.node == cid or op.dst == cid

    assert not [op for op in ops if op.round == 2 and op.step >= 0 and touches(op, "c001")]
    assert [op for op in ops if op.round == 3 and op.step == 0 and op.node == "c001"]
    params = {(op.round, op.node) for op in ops if op.msg_kind == MessageKind.PARAMS.value}
    assert params == {(1, "c000"), (1, "c001"), (2, "c000"), (3, "c000"), (3, "c001")}
    aggregates = {(op.round, op.dst) for op in ops if op.msg_kind == MessageKind.AGGREGATE.value}
    assert aggregates == params | {(2, "c001")}  # c001 gets its cluster's weights at round 2's end: back in round 3
    assert {(op.round, op.step) for op in ops if touches(op, "c002") and op.step != ROUND_LEVEL_STEP} == {(1, 0)}
    # The server batches over those present; a client's busy time shrinks by the iterations it missed.
    server_batches = {(op.round, op.step, op.phase): op.batch for op in ops if op.node == SERVER_ID and op.is_compute}
    full = server_batches[(1, 0, "g_fwd")]
    assert server_batches[(1, 1, "g_fwd")] == 2 * full // 3 and server_batches[(2, 0, "g_fwd")] == full // 3
    assert priced.node_busy_s["c001"] == pytest.approx(base.node_busy_s["c001"] * 2 / 3)
    assert priced.node_busy_s["c002"] == pytest.approx(base.node_busy_s["c002"] / (ROUNDS * STEPS))


def test_the_round_deadline_makes_the_slow_client_late(run_plan, costs, topology, tmp_path):
    raw = {"name": "d", "seed": 1, "domains": {"mnist": 3}, "training": {"rounds": ROUNDS},
           "topology": str(resource_path("topologies", "paper-edge-nic.yaml")), "cuts": "all-offload",
           "faults": {"stragglers": [{"clients": ["c002"], "link": 100.0}]}}
    path = tmp_path / "d.yaml"
    splits = {c.client_id: c.split for c in run_plan.clients}
    straggling = faults(stragglers=[StragglerSpec(clients=["c002"], link=100.0)])
    own = own_rounds(U_SHAPED, splits, costs, {c: BATCH for c in IDS}, topology, topology.assign_profiles(IDS),
                     straggling, STEPS, server_batch=BATCH)
    others = max(own["c000"].round_s, own["c001"].round_s)
    assert own["c002"].round_s > 1.5 * others  # a 100x slower link makes it the slowest by far
    deadline = max(1.2 * others, 1.5 * own["c002"].iteration_s)  # inside c002's second step
    assert deadline < own["c002"].round_s
    raw["faults"]["round_deadline_s"] = deadline
    records = tuple(ClientRecord(c, "mnist", (), 1.0) for c in IDS)
    plan = build_fault_plan(parse_scenario(raw, path), run_plan, records, U_SHAPED, costs)
    assert plan.deadline_steps == {"c002": 1}
    assert plan.present(2, 0) == set(IDS) and plan.present(2, 1) == {"c000", "c001"}
    assert all("c002" not in plan.at_federation(r) for r in range(1, ROUNDS + 1))
    assert plan.participation(2)["late"] == ["c002"] and plan.rejoining(2) == {"c002"}
    raw["faults"]["round_deadline_s"] = min(o.round_s for o in own.values()) / 2
    with pytest.raises(Exception, match="faults leave no client at the federation of rounds 1, 2, 3"):
        build_fault_plan(parse_scenario(raw, path), run_plan, records, U_SHAPED, costs)


def _extension(run_plan, costs, topology, plan, directory):
    prepared = PreparedRun(Scenario(name="faults-test", domains={"mnist": len(IDS)}), run_plan,
                           NodeSetup(SPEC, costs, 1, 2e-4, (0.5, 0.999)),
                           tuple(ClientRecord(c, "mnist", (), 1.0) for c in IDS), {}, plan)
    bus = EventBus()
    return bus, LatencyExtension(prepared, bus, directory, topology, U_SHAPED, sees_all_nodes=False)


def _aggregated(round_: int) -> RoundAggregated:
    return RoundAggregated(round_, FederationResult({}, {}, {}, {}), {})


def test_the_planned_trace_prices_scripted_and_dropped_peers(run_plan, costs, topology, tmp_path):
    plan = faults(dropout=[DropoutSpec(clients=["c000"], at_round=2, rejoin_round=3)], policy="continue")
    bus, ext = _extension(run_plan, costs, topology, plan, tmp_path)
    for r in range(1, ROUNDS + 1):
        if r == 2:  # a node dropped c001 at round 2, step 1 (policy continue): the plan never said so
            bus.publish(ParticipationChanged(2, 1, ("c002",), ("c000", "c001"), "c001 silent"))
        bus.publish(_aggregated(r))
    ops = ext._tracer.operations()
    assert {(op.round, op.step) for op in ops if op.node == "c001" and op.step >= 0} == {(1, 0), (1, 1), (2, 0)}
    assert not [op for op in ops if op.round == 2 and op.node == "c000"]
    section = ext.finish("completed")["latency"]
    saved = json.loads((tmp_path / "latency.json").read_text())
    rounds = {entry["round"]: entry for entry in saved["faults"]["rounds"]}
    assert rounds[2]["dropped_at_step"] == {"c000": 0, "c001": 1} and rounds[3]["present"] == ["c000", "c002"]
    assert rounds[3]["rejoined"] == ["c000"] and saved["faults"]["policy"] == "continue"
    assert section["iterations"] == ROUNDS * STEPS


def test_the_live_estimate_follows_who_is_present(run_plan, costs, topology, tmp_path):
    # c000 (device1 on a 50 Mbit/s link) is the slowest client: round 2 without it is quicker.
    plan = faults(dropout=[DropoutSpec(clients=["c000"], at_round=2, rejoin_round=3)])
    _, ext = _extension(run_plan, costs, topology, plan, tmp_path)
    per_round = [ext.simulated_s(r) - ext.simulated_s(r - 1) for r in (1, 2, 3)]
    assert per_round[1] < per_round[0] == pytest.approx(per_round[2])
    _, plain = _extension(run_plan, costs, topology, FaultPlan.none(IDS, ROUNDS, STEPS), tmp_path / "plain")
    assert plain.simulated_s(1) == pytest.approx(per_round[0], rel=1e-9)  # analytic == SimPy without faults here


def test_dropped_peers_survive_a_checkpoint_and_resume(run_plan, costs, topology, tmp_path):
    plan = faults(policy="continue")
    bus, ext = _extension(run_plan, costs, topology, plan, tmp_path / "a")
    bus.publish(_aggregated(1))
    bus.publish(ParticipationChanged(2, 0, ("c000", "c002"), ("c001",), "c001 silent"))
    bus.publish(_aggregated(2))
    state, journal = ext.checkpoint_round(2)
    assert state == {"rounds": 2, "dropped_peers": [["c001", 2, 0]]} and journal is None
    bus2, resumed = _extension(run_plan, costs, topology, plan, tmp_path / "b")
    resumed.restore(json.loads(json.dumps(state)), [])
    for bus_, ext_ in ((bus, ext), (bus2, resumed)):
        bus_.publish(_aggregated(3))
    assert resumed._tracer.operations() == ext._tracer.operations()
    assert not [op for op in ext._tracer.operations() if op.round >= 2 and op.node == "c001"]
