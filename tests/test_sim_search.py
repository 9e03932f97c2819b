"""Cut search: exact == brute force on small instances, exact <= GA on the paper's 80 clients."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut
from p2pgan.sim.analytic import analytic_iteration_seconds, iteration_seconds
from p2pgan.sim.pricing import client_ids_for, cuts_to_splits
from p2pgan.sim.search import GAParams, SearchProblem, brute_force, exact_search, run_search, search_cuts
from p2pgan.topology.profiles import load_topology, topology_from_mapping


@pytest.fixture(scope="module")
def costs():
    return profile_model(ModelSpec(), batch=2)


@pytest.fixture(scope="module")
def paper():
    return load_topology(Path(__file__).resolve().parents[1] / "topologies" / "paper-edge.yaml")


def random_star(rng: random.Random, profiles: int):
    """Profiles spread widely around the server so every kind of cut can win somewhere."""
    raw = {
        "name": "random",
        "profiles": {f"p{k}": {"clock_hz": 10 ** rng.uniform(8.5, 10.5), "flops_per_cycle": rng.choice([1, 4, 8]),
                               "link": {"up_bps": 10 ** rng.uniform(6.5, 9.5), "down_bps": 10 ** rng.uniform(6.5, 9.5),
                                        "latency_s": rng.choice([0.0, 0.01])}} for k in range(profiles)},
        "server": {"clock_hz": 10 ** rng.uniform(9.5, 11.5), "flops_per_cycle": 1},
    }
    return topology_from_mapping(raw)


@pytest.mark.parametrize("seed", range(6))
def test_exact_equals_brute_force_over_per_profile_plans(costs, seed):
    rng = random.Random(seed)
    topo = random_star(rng, profiles=rng.randint(2, 4))
    ids = client_ids_for(rng.randint(4, 12))
    problem = SearchProblem.build(ids, costs, rng.choice([16, 64]), topo, topo.assign_profiles(ids))
    plan, seconds, _ = exact_search(problem)
    _, best = brute_force(problem)
    assert seconds == pytest.approx(best, rel=1e-12)
    assert problem.evaluate(plan[None, :])[0] == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_exact_equals_brute_force_over_per_client_plans(costs, seed):
    """Mixing cuts inside a profile never beats the best per-profile plan on these instances."""
    rng = random.Random(100 + seed)
    topo = random_star(rng, profiles=rng.randint(1, 2))
    ids = client_ids_for(4)
    problem = SearchProblem.build(ids, costs, rng.choice([16, 64]), topo, topo.assign_profiles(ids))
    _, seconds, _ = exact_search(problem)
    _, best = brute_force(problem, per_client=True)
    assert seconds == pytest.approx(best, rel=1e-12)


def test_bound_row_is_below_every_option(costs, paper):
    ids = client_ids_for(14)
    problem = SearchProblem.build(ids, costs, 64, paper, paper.assign_profiles(ids))
    table = problem.bound_table()
    virtual = len(problem.options)
    rng = np.random.default_rng(0)
    plans = rng.integers(0, virtual, (200, len(problem.profiles)))
    relaxed = plans.copy()
    relaxed[rng.random(plans.shape) < 0.5] = virtual
    assert np.all(iteration_seconds(relaxed, table, problem.groups) <= problem.evaluate(plans) * (1 + 1e-12))


def test_exact_beats_or_ties_the_ga_on_the_paper_plan(costs, paper):
    ids = client_ids_for(80)
    assignment = paper.assign_profiles(ids)
    exact = run_search("exact", ids, costs, 64, paper, assignment, seed=0)
    ga = run_search("ga", ids, costs, 64, paper, assignment, seed=0, ga=GAParams(population=200, generations=40))
    assert exact.seconds <= ga.seconds * (1 + 1e-12)
    # The plan's analytic price is the objective the search reports, and per profile it is uniform.
    assert analytic_iteration_seconds(cuts_to_splits(exact.cuts), costs, {c: 64 for c in ids}, paper,
                                      assignment) == pytest.approx(exact.seconds, rel=1e-12)
    for c in ids:
        assert exact.cuts[c] == exact.per_profile[assignment[c]]
    # Strong devices keep blocks, the 0.48 GFLOP/s one offloads everything.
    assert exact.per_profile["device1"] == ClientCut(0, 0, 0, 0)
    assert exact.per_profile["device3"] == ClientCut(1, 1, 1, 1)


def test_ga_is_deterministic_per_seed_and_search_cuts_interface(costs, paper):
    ids = client_ids_for(10)
    assignment = paper.assign_profiles(ids)
    a = search_cuts("ga", ids, costs, 64, paper, assignment, 3, population=30, generations=5)
    b = search_cuts("ga", ids, costs, 64, paper, assignment, 3, population=30, generations=5)
    assert a == b and set(a) == set(ids)
    client = run_search("ga", ids, costs, 64, paper, assignment, 3, GAParams(population=30, generations=5,
                                                                             encoding="client"))
    assert set(client.cuts) == set(ids) and len(client.history) == 5
    exact = search_cuts("exact", ids, costs, 64, paper, assignment, 0)
    assert all(isinstance(cut, ClientCut) for cut in exact.values())
    with pytest.raises(Exception, match="unknown cut search"):
        search_cuts("anneal", ids, costs, 64, paper, assignment, 0)
