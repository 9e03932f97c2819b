"""The layout holds: import contracts, no import cycles, one walk of the chain, one id order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from p2pgan.config import load_scenario
from p2pgan.ids import SERVER_ID, client_id, natural_sorted
from p2pgan.run.prepare import prepare_run
from p2pgan.strategies.catalogue import STRATEGIES


def test_import_contracts_hold(repo_root):
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules_or_packages():
    graph = grimp.build_graph("p2pgan", "transports")
    modules = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(modules) == []
    packages: dict[str, set[str]] = {}
    for module, imported in modules.items():
        source = ".".join(module.split(".")[:2])
        packages.setdefault(source, set()).update(
            ".".join(m.split(".")[:2]) for m in imported if ".".join(m.split(".")[:2]) != source)
    assert _cycles(packages) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_natural_client_order_everywhere():
    ids = [client_id(i) for i in range(1001)]
    assert ids[999:] == ["c999", "c1000"]
    assert natural_sorted(reversed(ids)) == ids


def test_a_thousand_and_one_clients_prepare_and_price(repo_root, tmp_path):
    from p2pgan.run.latency import latency_extension
    from p2pgan.bus import EventBus
    from p2pgan.strategies.catalogue import strategy_for
    from p2pgan.sim.engine import simulate
    from p2pgan.sim.trace import trace_from_program
    from p2pgan.topology.profiles import default_topology_path, load_topology

    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "domains={mnist: 1001}", "training.batch_size=2", f"output.dir={tmp_path}", "model.width=0.125"])
    prepared = prepare_run(scenario, for_node=SERVER_ID)
    assert len(prepared.plan.clients) == 1001 and prepared.plan.client_ids[-1] == "c1000"
    plan = prepared.plan
    splits = {c.client_id: c.split for c in plan.clients}
    ops = trace_from_program(strategy_for(scenario).program, splits, prepared.setup.costs,
                             {c: 2 for c in splits}, 1, include_aggregation=True)
    topology = load_topology(default_topology_path())
    report = simulate(ops, topology, topology.assign_profiles(list(plan.client_ids)))
    assert report.mean_iteration_seconds > 0
    assert latency_extension(prepared, EventBus(), tmp_path, strategy_for(scenario).program) is not None


def test_a_node_process_holds_only_its_own_examples(repo_root, tmp_path):
    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [f"output.dir={tmp_path}"])
    everyone = prepare_run(scenario)
    client = prepare_run(scenario, for_node="c001")
    server = prepare_run(scenario, for_node=SERVER_ID)
    assert set(everyone.client_data) == set(everyone.plan.client_ids)
    assert set(client.client_data) == {"c001"}
    assert client.client_data["c001"].images.equal(everyone.client_data["c001"].images)
    assert server.client_data == {}
    # every process agrees on the public plan, whatever data it holds
    assert client.plan == server.plan == everyone.plan


def test_centralized_writes_one_sample_grid_per_true_domain(repo_root, tmp_path):
    from p2pgan.run.session import run_scenario

    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "strategy={name: centralized}", "training.rounds=1", "training.max_batches_per_epoch=1",
        f"output.dir={tmp_path}"])
    assert run_scenario(scenario).status == "completed"
    grids = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert grids == sorted(f"{d}.png" for d in scenario.domains)


def test_every_strategy_in_the_catalogue_validates_its_own_options(repo_root, tmp_path):
    from p2pgan.errors import ConfigError
    from p2pgan.strategies.catalogue import strategy_for

    base = repo_root / "scenarios" / "quick.yaml"
    for name in STRATEGIES:
        strategy_for(load_scenario(base, [f"strategy={{name: {name}}}", f"output.dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"strategy\.kld_alpha: not an option of strategy fedavg-gan"):
        strategy_for(load_scenario(base, ["strategy={name: fedavg-gan, kld_alpha: 2}", f"output.dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"strategy\.mu"):
        strategy_for(load_scenario(base, ["strategy={name: fedprox, mu: -1}", f"output.dir={tmp_path}"]))


def test_default_topology_is_found_from_a_non_editable_install(repo_root, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", str(target), str(repo_root)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = ("import p2pgan.topology.profiles as p, pathlib; path = p.default_topology_path(); "
             "assert 'site' in str(path), path; print(p.load_topology(path).name); "
             "from p2pgan.resources import resource_path; print(resource_path('scenarios', 'quick.yaml').is_file())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["paper-edge", "True"]


def test_default_thread_policy_depends_on_the_machine_and_the_model_never_on_the_load(monkeypatch):
    """Thread counts change float sums, so the default must not follow the load: a seed gives the
    same numbers run after run. Small kernels get one thread, larger ones every core."""
    import p2pgan.runtime as runtime
    from p2pgan.config import load_scenario
    from p2pgan.run.threads import largest_kernel_flops, threads_for
    from p2pgan.runtime import SMALL_KERNEL_FLOPS, default_threads, passive_thread_waits

    monkeypatch.delenv("P2PGAN_THREADS", raising=False)
    assert default_threads(cores=2, kernel_flops=SMALL_KERNEL_FLOPS / 2) == 1
    assert default_threads(cores=2, kernel_flops=SMALL_KERNEL_FLOPS * 2) == 2
    assert default_threads(cores=16) == 16
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a busy machine changes nothing
    assert default_threads(cores=2, kernel_flops=SMALL_KERNEL_FLOPS * 2) == 2
    quick = load_scenario(Path(__file__).parents[1] / "scenarios" / "quick.yaml")
    paper = load_scenario(Path(__file__).parents[1] / "scenarios" / "paper" / "s6.yaml")
    assert largest_kernel_flops(quick) < SMALL_KERNEL_FLOPS < largest_kernel_flops(paper)
    assert threads_for(quick) == 1
    assert threads_for(paper) == default_threads()
    monkeypatch.setenv("P2PGAN_THREADS", "3")
    assert default_threads(cores=2, kernel_flops=1.0) == 3
    env: dict[str, str] = {}
    assert passive_thread_waits(env) is False  # torch is already imported in this process
    assert env == {}

