"""Constrained cut search: memory, full-local, privacy budgets, exactness under SimPy's price."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from p2pgan.cli import main
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.blocks import ModelSpec
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, all_cut_options, split_client
from p2pgan.sim.analytic import OptionTable, analytic_iteration_seconds, client_groups
from p2pgan.sim.budgets import CutPrivacyBudget, Leakage, budget_from_flags, leakage_from_mapping, parse_budget
from p2pgan.sim.contention import SharedArrays, contention_seconds
from p2pgan.sim.engine import simulate
from p2pgan.sim.feasibility import memory_need
from p2pgan.sim.placement import FULL_LOCAL, Placement
from p2pgan.sim.pricing import client_ids_for
from p2pgan.sim.search import (GAParams, SearchProblem, SearchSpace, brute_force, exact_search, feasible_plans,
                               run_search, search_cuts)
from p2pgan.sim.trace import trace_from_plan
from p2pgan.topology.profiles import topology_from_mapping

OPTIONS = all_cut_options()


@pytest.fixture(scope="module")
def costs():
    return profile_model(ModelSpec(width=0.25, z_dim=32), batch=2)


def hand_leakage() -> dict[ClientCut, Leakage]:
    """Plausible, not measured: d_head = 0 lets the server invert one conv of the real image;
    g_head = 0 / d_head = 0 send a near-linear function of the label."""
    table = {}
    for cut in OPTIONS:
        ssim = (0.82 if cut.d_head == 0 else 0.41) - 0.03 * cut.d_tail
        label = max(0.97 if cut.g_head == 0 else 0.62, 0.93 if cut.d_head == 0 else 0.58)
        table[cut] = Leakage(round(ssim, 3), round(label + (0.02 if cut.d_tail == 0 else 0.0), 3))
    return table


def star(rng: random.Random, profiles: int, shared: bool = False, memory: dict | None = None, source="t.yaml"):
    """Profiles spread widely around the server so every kind of placement can win somewhere."""
    raw = {
        "name": "random",
        "profiles": {f"p{k}": {"clock_hz": 10 ** rng.uniform(8.5, 10.5), "flops_per_cycle": rng.choice([1, 4, 8]),
                               "link": {"up_bps": 10 ** rng.uniform(6, 9.5), "down_bps": 10 ** rng.uniform(6, 9.5),
                                        "latency_s": rng.choice([0.0, 0.01]),
                                        **({"via": rng.sample(["site"], rng.randint(0, 1))} if shared else {})}}
                     for k in range(profiles)},
        "server": {"clock_hz": 10 ** rng.uniform(9.5, 11), "flops_per_cycle": 1,
                   **({"via": ["nic"]} if shared else {})},
    }
    if shared:
        raw["shared"] = {name: {"up_bps": 10 ** rng.uniform(7, 8.5), "down_bps": 10 ** rng.uniform(7, 8.5)}
                         for name in ("site", "nic")}
    for name, value in (memory or {}).items():
        raw["profiles"][name]["memory_bytes"] = value
    return topology_from_mapping(raw, source)


def needs(costs, batch):
    placements = [Placement(cut) for cut in OPTIONS] + [FULL_LOCAL]
    return {p: memory_need(p.split(), costs, batch).total for p in placements}


# -- memory ----------------------------------------------------------------------------------


def test_memory_need_is_params_gradients_adam_and_live_activations(costs):
    B = 16
    cut = ClientCut(0, 0, 0, 0)
    split = split_client(cut)
    need = memory_need(split, costs, B)
    params = sum(costs[b].param_bytes for b in split.client_blocks)
    g, d = split.generator, split.discriminator
    g_acts = sum(costs[b].out_bytes for b in g.client_blocks) + costs[g.server[-1]].out_bytes  # + tail input
    d_acts = sum(costs[b].out_bytes for b in d.client_blocks) + costs[d.server[-1]].out_bytes
    assert need.total == 4 * params + B * (g_acts + 2 * d_acts)
    full = memory_need(FULL_LOCAL.split(), costs, B).total
    local = memory_need(split_client(ClientCut(1, 1, 1, 1)), costs, B).total
    assert full > local > need.total
    assert memory_need(split, costs, 2 * B).total > need.total


def test_memory_bytes_takes_units_and_bad_values_are_one_line_errors():
    rng = random.Random(0)
    topo = star(rng, 2, memory={"p0": "4 GiB", "p1": 1e6})
    assert topo.profile("p0").memory_bytes == 4 * 2**30 and topo.profile("p1").memory_bytes == 1e6
    assert star(rng, 1).profile("p0").memory_bytes is None
    for bad, words in (("4 GHz", "not a bytes unit"), (-5, "greater than 0"), ("lots", "expected"), (True, "expected")):
        with pytest.raises(ConfigError) as info:
            star(rng, 1, memory={"p0": bad}, source="edge.yaml")
        text = str(info.value)
        assert text.startswith("edge.yaml:profiles.p0.memory_bytes: ") and words in text and "\n" not in text


@pytest.mark.parametrize("seed", range(5))
def test_memory_infeasible_plans_are_never_chosen_and_exact_equals_brute_force(costs, seed):
    rng = random.Random(seed)
    batch = rng.choice([16, 64])
    sizes = sorted(needs(costs, batch).values())
    topo = star(rng, 3, memory={f"p{k}": rng.uniform(sizes[0], sizes[-1]) for k in range(3)})
    ids = client_ids_for(rng.randint(3, 9))
    assignment = topo.assign_profiles(ids)
    space = SearchSpace(full_local=True)
    problem = SearchProblem.build(ids, costs, batch, topo, assignment, space)
    plan, seconds, _ = exact_search(problem)
    _, best = brute_force(problem)
    assert seconds == pytest.approx(best, rel=1e-12)
    assert problem.feasible(plan[None, :])[0]
    # Against brute force by hand: every plan, feasibility judged from memory_need directly.
    limit = {p: topo.profile(p).memory_bytes for p in problem.profiles}
    every = np.stack(np.meshgrid(*[np.arange(len(problem.placements))] * len(problem.profiles), indexing="ij"),
                     -1).reshape(-1, len(problem.profiles))
    fits = np.array([all(memory_need(problem.placements[k].split(), costs, batch).total <= limit[p]
                         for p, k in zip(problem.profiles, row)) for row in every])
    assert problem.evaluate(every[fits]).min() == pytest.approx(seconds, rel=1e-12)
    for search in (run_search("exact", ids, costs, batch, topo, assignment, 0, space=space),
                   run_search("ga", ids, costs, batch, topo, assignment, 0, GAParams(population=40, generations=10),
                              space=space)):
        for client, placement in search.placements.items():
            assert memory_need(placement.split(), costs, batch).total <= topo.profile(assignment[client]).memory_bytes


def test_no_placement_that_fits_is_a_one_line_error_naming_file_and_profile(costs, tmp_path, repo_root, capsys):
    rng = random.Random(1)
    topo = star(rng, 2, memory={"p1": "1 KiB"}, source="tiny.yaml")
    ids = client_ids_for(4)
    with pytest.raises(ConfigError) as info:
        search_cuts("exact", ids, costs, 32, topo, topo.assign_profiles(ids), 0)
    text = str(info.value)
    assert text.startswith("tiny.yaml:profiles.p1.memory_bytes: 1 KiB holds no placement at batch 32")
    assert "\n" not in text
    # Memory for the smallest cut only, and a budget that cuts it: both limits are named.
    need = needs(costs, 32)
    smallest = min(need.values())
    topo = star(rng, 2, memory={"p1": smallest * 1.01}, source="tiny.yaml")
    space = SearchSpace(leakage=hand_leakage(), budget=CutPrivacyBudget(max_ssim=0.5))
    with pytest.raises(ConfigError) as info:
        run_search("exact", ids, costs, 32, topo, topo.assign_profiles(ids), 0, space=space)
    assert str(info.value).startswith("tiny.yaml:profiles.p1.memory_bytes: ") and "privacy budget (max_ssim 0.5) " \
        "excludes every one of them" in str(info.value)
    # From the command line: exit 2, one line, no traceback.
    raw = (repo_root / "topologies" / "paper-edge.yaml").read_text()
    topo_file = tmp_path / "small.yaml"
    topo_file.write_text(raw.replace("device3: {clock_hz: 15600e6, flops_per_cycle: 8,  cores: 1, link: device3}",
                                     "device3: {clock_hz: 15600e6, flops_per_cycle: 8,  cores: 1, link: device3, "
                                     "memory_bytes: 1 MiB}"))
    assert "memory_bytes: 1 MiB" in topo_file.read_text()
    code = main(["cuts", str(scenario_file(tmp_path, topo_file))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{topo_file}:profiles.device3.memory_bytes: 1 MiB holds no placement" in err


# -- full-local ------------------------------------------------------------------------------


def slow_link_topology(memory=None):
    """A fast device behind a 1 Mbit/s link (activations crawl) next to a weak one on a good link."""
    raw = {
        "name": "slow-link",
        "profiles": {"fast": {"clock_hz": "3 GHz", "flops_per_cycle": 16, "cores": 4,
                              "link": {"up_bps": "1 Mbit/s", "down_bps": "1 Mbit/s"}},
                     "weak": {"clock_hz": "500 MHz", "flops_per_cycle": 1, "link": {"up_bps": "1 Gbit/s",
                                                                                     "down_bps": "1 Gbit/s"}}},
        "server": {"clock_hz": "40 GHz", "flops_per_cycle": 16},
    }
    if memory is not None:
        raw["profiles"]["fast"]["memory_bytes"] = memory
    return topology_from_mapping(raw, "slow.yaml")


def test_full_local_is_chosen_where_fastest_and_fits(costs):
    ids = client_ids_for(4)
    topo = slow_link_topology()
    assignment = topo.assign_profiles(ids)
    space = SearchSpace(full_local=True)
    free = run_search("exact", ids, costs, 32, topo, assignment, 0, space=space)
    assert free.per_profile_placement["fast"] == FULL_LOCAL
    assert not free.per_profile_placement["weak"].full_local
    cuts_only = run_search("exact", ids, costs, 32, topo, assignment, 0)
    assert free.seconds < cuts_only.seconds / 3  # no activation crosses the 1 Mbit/s link
    with pytest.raises(P2PGanError, match="full-local"):
        free.cuts  # the old return type cannot express it
    # The same device without the memory for the whole model: the best cut instead.
    need = needs(costs, 32)
    squeezed = slow_link_topology(memory=(need[FULL_LOCAL] + need[Placement(ClientCut(1, 1, 1, 1))]) / 2)
    capped = run_search("exact", ids, costs, 32, squeezed, assignment, 0, space=space)
    assert not capped.per_profile_placement["fast"].full_local
    assert free.seconds < capped.seconds <= cuts_only.seconds * (1 + 1e-12)
    # The SimPy price agrees with the analytic one here (no shared capacity).
    splits = free.splits()
    sim = simulate(trace_from_plan(splits, costs, {c: 32 for c in ids}, 1, False), topo, assignment)
    assert sim.first_iteration_seconds == pytest.approx(free.seconds, rel=1e-9)


# -- privacy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_privacy_budget_excludes_leaky_cuts_and_exact_equals_brute_force(costs, seed):
    rng = random.Random(10 + seed)
    topo = star(rng, 3)
    ids = client_ids_for(rng.randint(3, 8))
    assignment = topo.assign_profiles(ids)
    leakage = hand_leakage()
    budget = CutPrivacyBudget(max_ssim=rng.choice([0.4, 0.5, 0.8]), max_label_accuracy=rng.choice([0.65, 0.95]))
    space = SearchSpace(full_local=True, leakage=leakage, budget=budget)
    problem = SearchProblem.build(ids, costs, 32, topo, assignment, space)
    plan, seconds, _ = exact_search(problem)
    _, best = brute_force(problem)
    assert seconds == pytest.approx(best, rel=1e-12)
    admitted = [k for k, p in enumerate(problem.placements) if p.full_local or budget.admits(leakage[p.cut])]
    every = feasible_plans(problem)
    assert set(np.unique(every)) <= set(admitted)
    assert problem.evaluate(every).min() == pytest.approx(seconds, rel=1e-12)
    result = run_search("exact", ids, costs, 32, topo, assignment, 0, space=space)
    for placement in result.placements.values():
        assert placement.full_local or budget.admits(leakage[placement.cut])
    unconstrained = run_search("exact", ids, costs, 32, topo, assignment, 0, space=SearchSpace(full_local=True))
    assert unconstrained.seconds <= result.seconds * (1 + 1e-12)


def test_budget_values_and_leakage_tables_give_one_line_errors(costs):
    assert parse_budget({"max_ssim": 0.3}, "s.yaml") == CutPrivacyBudget(max_ssim=0.3)
    assert parse_budget(None, "s.yaml") == CutPrivacyBudget()
    for raw, key, words in (({"max_ssim": 1.5}, "cuts.privacy.max_ssim", "less than or equal to 1"),
                            ({"max_ssim": -0.1}, "cuts.privacy.max_ssim", "greater than or equal to 0"),
                            ({"max_label_accuracy": "0.5"}, "cuts.privacy.max_label_accuracy", "valid number"),
                            ({"max_label_accuracy": True}, "cuts.privacy.max_label_accuracy", "valid number"),
                            ({"max_ssim": float("nan")}, "cuts.privacy.max_ssim", "finite"),
                            ({"max_psnr": 20}, "cuts.privacy.max_psnr", "unknown key"),
                            (0.3, "cuts.privacy", "expected a mapping")):
        with pytest.raises(ConfigError) as info:
            parse_budget(raw, "s.yaml")
        text = str(info.value)
        assert text.startswith(f"s.yaml:{key}: ") and words in text and "\n" not in text, text
    assert budget_from_flags("0.4", None) == CutPrivacyBudget(max_ssim=0.4)
    with pytest.raises(ConfigError, match=r"^--max-label-accuracy: expected a number in \[0, 1\], got '2'$"):
        budget_from_flags(None, "2")
    with pytest.raises(ConfigError, match=r"^p.json:0110.ssim: expected a number in \[0, 1\]"):
        leakage_from_mapping({"0110": {"ssim": 3, "label_accuracy": 0.5}}, "p.json")
    with pytest.raises(ConfigError, match=r"^p.json:summary.0.label_accuracy: required key is missing$"):
        leakage_from_mapping({"summary": [{"cut": "(0,1,1,0)", "ssim": 0.3}]}, "p.json")
    assert leakage_from_mapping({"summary": [{"cut": "(0,1,1,0)", "ssim": 0.3, "label_accuracy": 0.5}]},
                                "p.json") == {ClientCut(0, 1, 1, 0): Leakage(0.3, 0.5)}
    # A budget without a measured table, or with a cut missing from it, says so.
    topo = star(random.Random(3), 2)
    ids = client_ids_for(3)
    with pytest.raises(P2PGanError, match="needs a leakage table"):
        SearchProblem.build(ids, costs, 32, topo, topo.assign_profiles(ids), SearchSpace(budget=CutPrivacyBudget(0.5)))
    partial = dict(list(hand_leakage().items())[:5])
    with pytest.raises(P2PGanError, match="no entry for cut"):
        SearchProblem.build(ids, costs, 32, topo, topo.assign_profiles(ids),
                            SearchSpace(leakage=partial, budget=CutPrivacyBudget(0.5)))


# -- exact under SimPy's price with shared capacity --------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_contention_bound_lies_between_analytic_and_simpy(costs, seed):
    rng = random.Random(200 + seed)
    shared = seed % 4 != 0
    topo = star(rng, rng.randint(1, 3), shared=shared)
    ids = client_ids_for(rng.randint(1, 10))
    assignment = topo.assign_profiles(ids)
    splits = {c: split_client(rng.choice(OPTIONS), full_local=rng.random() < 0.15) for c in ids}
    batches = {c: rng.choice([2, 16, 64]) for c in ids}
    unique = list(dict.fromkeys(splits.values()))
    table = OptionTable.build(unique, costs)
    options = np.array([unique.index(splits[c]) for c in ids])
    groups = client_groups(ids, topo, assignment, batches)
    bound = float(contention_seconds(options, table, groups, SharedArrays.build(topo, [assignment[c] for c in ids],
                                                                                [1] * len(ids), ids)))
    analytic = analytic_iteration_seconds(splits, costs, batches, topo, assignment)
    simpy = simulate(trace_from_plan(splits, costs, batches, 1, False), topo, assignment).first_iteration_seconds
    assert analytic * (1 - 1e-12) <= bound <= simpy * (1 + 1e-9)
    if not shared:
        assert bound == pytest.approx(analytic, rel=1e-12)


@pytest.mark.parametrize("seed, full_local, memory, private, analytic_misses", [
    (6, False, False, False, True),   # the analytic optimum is 1 % slower than SimPy's
    (16, True, False, False, True),   # ... 22 % slower (full-local everywhere vs a split)
    (11, False, True, False, False),
    (18, False, False, True, False),
    (0, True, True, True, False),
])
def test_simpy_exact_search_equals_brute_force_under_shared_capacity(costs, seed, full_local, memory, private,
                                                                    analytic_misses):
    rng = random.Random(300 + seed)
    batch = 32
    budget = CutPrivacyBudget(max_label_accuracy=0.95) if private else CutPrivacyBudget()
    leakage = hand_leakage()
    sizes = sorted(v for p, v in needs(costs, batch).items()
                   if (full_local or not p.full_local) and (p.full_local or budget.admits(leakage[p.cut])))
    limits = {"p0": sizes[0] + 0.6 * (sizes[-1] - sizes[0])} if memory else {}
    topo = star(rng, 2, shared=True, memory=limits)
    ids = client_ids_for(rng.randint(3, 6))
    assignment = topo.assign_profiles(ids)
    space = SearchSpace(full_local=full_local, leakage=leakage, budget=budget)
    result = run_search("exact", ids, costs, batch, topo, assignment, 0, space=space, price="simpy")
    problem = SearchProblem.build(ids, costs, batch, topo, assignment, space)
    every = feasible_plans(problem)
    sims = np.array([problem.simulate(plan) for plan in every])
    proof = result.proof
    assert proof is not None and proof.proven
    assert proof.simulated_s == pytest.approx(sims.min(), rel=1e-9)
    chosen = np.array([problem.placements.index(result.per_profile_placement[p]) for p in problem.profiles])
    assert problem.simulate(chosen) == pytest.approx(sims.min(), rel=1e-9)
    # The analytic model prices the chosen plan no higher than SimPy, and its own optimum no
    # better under SimPy than the plan returned.
    assert proof.analytic_s <= proof.simulated_s * (1 + 1e-12)
    assert proof.analytic_optimum_simulated_s >= proof.simulated_s * (1 - 1e-9)
    assert proof.analytic_gap >= -1e-12 and proof.analytic_plan_excess >= -1e-9
    assert proof.simulations <= len(every)
    if analytic_misses:  # the case the SimPy stage exists for: exact under analytic is not under SimPy
        assert proof.analytic_plan_excess > 0.005


def test_simpy_stage_stays_exact_with_a_loose_bound(costs, monkeypatch):
    """With only the analytic bound (no queueing counted) the best-first stage has to price many
    more candidates in SimPy before it can stop, and still lands on the brute-force optimum."""
    from p2pgan.sim.analytic import iteration_seconds

    rng = random.Random(311)
    topo = star(rng, 2, shared=True)
    ids = client_ids_for(rng.randint(3, 6))
    assignment = topo.assign_profiles(ids)
    tight = run_search("exact", ids, costs, 32, topo, assignment, 0, price="simpy").proof
    monkeypatch.setattr(SearchProblem, "contention",
                        lambda self, plans, table=None: iteration_seconds(plans, table or self.table, self.groups))
    loose = run_search("exact", ids, costs, 32, topo, assignment, 0, price="simpy").proof
    problem = SearchProblem.build(ids, costs, 32, topo, assignment)
    best = min(problem.simulate(plan) for plan in feasible_plans(problem))
    assert loose.proven and tight.proven
    assert loose.simulated_s == pytest.approx(best, rel=1e-9) == tight.simulated_s
    assert loose.simulations > tight.simulations
    assert loose.next_bound_s >= best * (1 - 1e-9)
    capped = run_search("exact", ids, costs, 32, topo, assignment, 0, price="simpy", max_simulations=2).proof
    assert not capped.proven and capped.simulations == 2 and capped.next_bound_s < capped.simulated_s


def test_simpy_exact_search_on_the_paper_nic_topology(costs, repo_root):
    from p2pgan.topology.profiles import load_topology

    topo = load_topology(repo_root / "topologies" / "paper-edge-nic.yaml")
    ids = client_ids_for(12)
    assignment = topo.assign_profiles(ids)
    result = run_search("exact", ids, costs, 32, topo, assignment, 0, price="simpy")
    proof = result.proof
    assert proof.proven and proof.simulations <= 5
    analytic = run_search("exact", ids, costs, 32, topo, assignment, 0)
    # The analytic optimum is not SimPy's: it is slower there than the plan found.
    assert proof.analytic_optimum_s == pytest.approx(analytic.seconds, rel=1e-12)
    assert proof.analytic_optimum_simulated_s > proof.simulated_s * 1.005
    assert proof.analytic_gap > 0.02


# -- the command ------------------------------------------------------------------------------


def scenario_file(tmp_path, topology, clients=(4, 3), extra=""):
    path = tmp_path / "s.yaml"
    path.write_text("name: constrained\n"
                    f"domains: {{mnist: {clients[0]}, fashion-mnist: {clients[1]}}}\n"
                    "model: {width: 0.25, z_dim: 32}\n"
                    "training: {batch_size: 32}\n"
                    "cuts: {search: exact}\n"
                    f"topology: {topology}\n" + extra)
    return path


def write_leakage(tmp_path) -> str:
    path = tmp_path / "leakage.json"
    path.write_text(json.dumps({"".join(map(str, cut.as_tuple())): {"ssim": v.ssim, "label_accuracy": v.label_accuracy}
                                for cut, v in hand_leakage().items()}))
    return str(path)


def test_cuts_command_shows_binding_constraints_and_budget_costs(tmp_path, repo_root, capsys):
    raw = (repo_root / "topologies" / "paper-edge.yaml").read_text()
    topo_file = tmp_path / "edge.yaml"
    # device3 holds every cut but not the whole model (its best placement without the limit).
    topo_file.write_text(raw.replace("cores: 1, link: device3}", "cores: 1, link: device3, memory_bytes: 9 MiB}"))
    out_json = tmp_path / "cuts.json"
    argv = ["cuts", str(scenario_file(tmp_path, topo_file)), "--leakage", write_leakage(tmp_path),
            "--max-label-accuracy", "0.7", "--json", str(out_json)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for words in ("memory binds", "privacy binds", "latency cost of privacy budgets", "max_label_accuracy 0.7",
                  "full-local", "limits", "9 MiB"):
        assert words in text, words
    data = json.loads(out_json.read_text())
    budgets = {row["budget"]: row["seconds"] for row in data["budgets"]}
    assert budgets["none"] < budgets["max_label_accuracy 0.7"]
    assert data["binding"]["memory"] < data["binding"]["with_all_s"]
    assert data["binding"]["privacy"] < data["binding"]["with_all_s"]
    prices = {row["plan"]: row for row in data["prices"]}
    assert prices["exact search"]["limits"] == "ok" and prices["all-offload"]["limits"] == "privacy"
    assert prices["full-model"]["limits"] == "memory"
    leaky = {str(cut) for cut, v in hand_leakage().items() if v.label_accuracy > 0.7}
    assert not leaky & set(data["plan"].values())


def test_cuts_command_flags_and_shared_capacity(tmp_path, repo_root, capsys):
    nic = repo_root / "topologies" / "paper-edge-nic.yaml"
    path = scenario_file(tmp_path, nic)
    out_json = tmp_path / "cuts.json"
    assert main(["cuts", str(path), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "proved optimal under SimPy's price" in text and "below SimPy" in text
    proof = json.loads(out_json.read_text())["simpy_proof"]
    assert proof["proven"] and proof["analytic_gap"] >= 0 and proof["simulations"] >= 1
    for argv, words in ((["--max-ssim", "1.5"], "--max-ssim: expected a number in [0, 1], got '1.5'"),
                        (["--max-ssim", "x"], "--max-ssim: expected a number in [0, 1]"),
                        (["--max-ssim", "0.5"], "needs measured leakage per cut: pass --leakage"),
                        (["--leakage", str(tmp_path / "missing.json")], "missing.json: cannot read")):
        code = main(["cuts", str(path), *argv])
        err = capsys.readouterr().err
        assert code in (1, 2) and err.count("\n") == 1 and words in err and "Traceback" not in err, err
