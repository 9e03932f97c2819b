"""The analytic model and SimPy price the same plan the same way (and SimPy adds contention)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import all_cut_options, split_client
from p2pgan.sim.analytic import analytic_iteration_seconds
from p2pgan.sim.engine import simulate
from p2pgan.sim.pricing import client_ids_for, policy_splits
from p2pgan.topology.profiles import load_topology, topology_from_mapping
from p2pgan.sim.trace import trace_from_plan

REL = 1e-9
OPTIONS = all_cut_options()


@pytest.fixture(scope="module")
def costs():
    return profile_model(ModelSpec(width=0.5, z_dim=32), batch=2)


def random_topology(rng: random.Random, shared: bool):
    profiles = {}
    for k in range(rng.randint(1, 4)):
        link = {"up_bps": 10 ** rng.uniform(6, 10), "down_bps": 10 ** rng.uniform(6, 10),
                "latency_s": rng.choice([0.0, rng.uniform(0, 0.05)])}
        if shared:
            link["via"] = rng.sample(["site", "backhaul"], rng.randint(0, 2))
        profiles[f"p{k}"] = {"clock_hz": 10 ** rng.uniform(8, 10.5), "flops_per_cycle": rng.choice([1, 2, 4, 8]),
                             "cores": rng.randint(1, 4), "link": link}
    raw = {"name": "random", "profiles": profiles,
           "server": {"clock_hz": 10 ** rng.uniform(9, 11), "flops_per_cycle": rng.choice([1, 16]),
                      "via": ["nic"] if shared else []},
           "assignment": {"mode": "weighted", "weights": {name: rng.uniform(0.1, 1) for name in profiles},
                          "seed": rng.randint(0, 99)}}
    if shared:
        raw["shared"] = {name: {"up_bps": 10 ** rng.uniform(7, 9.5), "down_bps": 10 ** rng.uniform(7, 9.5),
                                "latency_s": rng.choice([0.0, 0.005])} for name in ("site", "backhaul", "nic")}
    return topology_from_mapping(raw)


def random_plan(rng: random.Random, n: int):
    ids = client_ids_for(n)
    splits = {c: split_client(rng.choice(OPTIONS), full_local=rng.random() < 0.15) for c in ids}
    batches = {c: rng.choice([2, 8, 64]) for c in ids}
    return splits, batches


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), clients=st.integers(1, 12))
def test_analytic_equals_simpy_without_shared_capacity(costs, seed, clients):
    rng = random.Random(seed)
    topology = random_topology(rng, shared=False)
    splits, batches = random_plan(rng, clients)
    assignment = topology.assign_profiles(list(splits))
    analytic = analytic_iteration_seconds(splits, costs, batches, topology, assignment)
    one = simulate(trace_from_plan(splits, costs, batches, 1, False), topology, assignment)
    assert one.first_iteration_seconds == pytest.approx(analytic, rel=REL)
    # The first iteration of a longer run, aggregation included, starts from idle too.
    longer = simulate(trace_from_plan(splits, costs, batches, 3, True, rounds=2), topology, assignment)
    assert longer.first_iteration_seconds == pytest.approx(analytic, rel=REL)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), clients=st.integers(1, 12))
def test_simpy_never_below_analytic_with_shared_capacity(costs, seed, clients):
    rng = random.Random(seed)
    topology = random_topology(rng, shared=True)
    splits, batches = random_plan(rng, clients)
    assignment = topology.assign_profiles(list(splits))
    analytic = analytic_iteration_seconds(splits, costs, batches, topology, assignment)
    report = simulate(trace_from_plan(splits, costs, batches, 1, False), topology, assignment)
    assert report.first_iteration_seconds >= analytic * (1 - REL)


def test_paper_plans_agree_and_the_shared_nic_shows_contention(repo_root):
    costs = profile_model(ModelSpec())
    star = load_topology(repo_root / "topologies" / "paper-edge.yaml")
    nic = load_topology(repo_root / "topologies" / "paper-edge-nic.yaml")
    ids = client_ids_for(80)
    batches = {c: 64 for c in ids}
    rng = random.Random(0)
    plans = [policy_splits("all-offload", ids), {c: split_client(rng.choice(OPTIONS)) for c in ids}]
    for splits in plans:
        ops = trace_from_plan(splits, costs, batches, 1, False)
        for topo, exact in ((star, True), (nic, False)):
            assignment = topo.assign_profiles(ids)
            analytic = analytic_iteration_seconds(splits, costs, batches, topo, assignment)
            simulated = simulate(ops, topo, assignment).first_iteration_seconds
            if exact:
                assert simulated == pytest.approx(analytic, rel=REL)
            else:
                assert simulated > analytic * 1.01  # 80 clients queue for one 1 Gbit/s NIC


def test_report_accounts_for_iterations_rounds_nodes_and_bytes(repo_root, costs):
    topo = load_topology(repo_root / "topologies" / "paper-edge.yaml")
    ids = client_ids_for(5)
    splits = {c: split_client(OPTIONS[i]) for i, c in enumerate(ids)}
    batches = {c: 8 for c in ids}
    ops = trace_from_plan(splits, costs, batches, 3, True, rounds=2)
    report = simulate(ops, topo, topo.assign_profiles(ids))
    assert sorted(report.iteration_seconds) == [(r, s) for r in (1, 2) for s in range(3)]
    for rnd in (1, 2):
        steps = sum(report.iteration_seconds[(rnd, s)] for s in range(3))
        assert report.round_seconds[rnd] == pytest.approx(steps + report.federate_seconds[rnd])
        assert report.federate_seconds[rnd] > 0
    assert report.total_seconds == pytest.approx(sum(report.round_seconds.values()))
    sent = sum(op.nbytes for op in ops if not op.is_compute)
    assert sum(report.bytes_sent.values()) == sent == sum(report.bytes_received.values())
    assert report.bytes_sent["server"] == sum(op.nbytes for op in ops if op.node == "server" and not op.is_compute)
    busy = sum(op.flops for op in ops if op.is_compute and op.node == "server") / topo.server.flops_per_s
    assert report.node_busy_s["server"] == pytest.approx(busy)
    assert report.critical_path and report.critical_path[-1].endswith("r2/round/federate")
    payload = report.to_json()
    assert payload["iterations"][0]["round"] == 1 and len(payload["rounds"]) == 2
