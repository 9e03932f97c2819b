"""The cohort engine equals the node engine: every parameter, buffer, loss and priced operation,
for every cut, mixed plans and HuSCF's federation; its runs are deterministic; its scenario
section is checked at the edge. CUDA variants run where a GPU is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from p2pgan.bus import EventBus
from p2pgan.cli import main
from p2pgan.config.loader import load_scenario
from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain, to_model_input
from p2pgan.engine.client import ClientNode
from p2pgan.engine.cohort import CohortEngine
from p2pgan.engine.execution import KernelPolicy, default_policy, exact_cuda, place_blocks, resolve_device
from p2pgan.engine.server import ServerNode
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.ids import SERVER_ID
from p2pgan.model.blocks import ModelSpec, build_initial_blocks
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, all_cut_options
from p2pgan.plan.nodedata import ClientRecord, LocalData, PreparedRun
from p2pgan.plan.program import U_SHAPED
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.protocol.events import ClientLosses, RoundAggregated
from p2pgan.run import session
from p2pgan.run.cohort import check_cohort_strategy, run_cohort, run_shard_cohort
from p2pgan.run.nodes import run_nodes
from p2pgan.sim.trace import OperationTracer
from p2pgan.strategies.catalogue import create_strategy
from p2pgan.strategies.fedavg import SplitFedAvg
from transports.memory import MemoryTransport

SPEC = ModelSpec(width=0.125, z_dim=8)
SEED, BATCH, LR, BETAS = 11, 4, 2e-3, (0.5, 0.999)
TOLERANCE = 1e-5
OPTIONS = all_cut_options()
MIXED_PLANS = {
    "five-mixed": [OPTIONS[0], OPTIONS[5], OPTIONS[10], OPTIONS[15], OPTIONS[6]],
    "six-mixed": [OPTIONS[3], OPTIONS[12], OPTIONS[9], OPTIONS[3], OPTIONS[1], OPTIONS[14]],
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def costs():
    return profile_model(SPEC, batch=2)


@pytest.fixture(scope="module")
def digits():
    train = load_domain("mnist", "train")
    return to_model_input(train.images[:400]), train.labels[:400].long()


def client_data(digits, count: int, sizes=None) -> dict[str, LocalData]:
    images, labels = digits
    out, start = {}, 0
    for i in range(count):
        n = sizes[i] if sizes else 10 + i
        out[f"c{i}"] = LocalData(images[start:start + n], labels[start:start + n])
        start += n
    return out


def run_plan(cuts: list[ClientCut], data: dict[str, LocalData], steps: int = 1) -> RunPlan:
    plans = tuple(ClientPlan(cid, cut, len(data[cid])) for cid, cut in zip(data, cuts))
    return RunPlan(plans, Schedule(rounds=1, local_epochs=1, steps_per_epoch=steps, batch_size=BATCH))


# -- one iteration, both engines --------------------------------------------------------------


class Iterated:
    """One engine after its iterations: every block state by node, the losses, the priced trace."""

    def __init__(self, states: dict[str, dict[str, dict[str, torch.Tensor]]], losses: list[ClientLosses],
                 operations: list) -> None:
        self.states, self.losses, self.operations = states, losses, operations


def states_of(blocks: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().cpu().clone() for k, v in block.state_dict().items()} for name, block in blocks.items()}


def iterate_nodes(setup: NodeSetup, plan: RunPlan, data: dict[str, LocalData], steps: int = 1,
                  policy: KernelPolicy | None = None) -> Iterated:
    bus, tracer, losses = EventBus(), OperationTracer(), []
    bus.subscribe(tracer)

    async def go():
        transport = MemoryTransport(receive_timeout_s=30)
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED)
        clients = [ClientNode(setup, p, plan.schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED)
                   for p in plan.clients]
        if policy is not None:  # the nodes placed as the cohort places its blocks
            for node in (server, *clients):
                place_blocks(node.blocks, policy)
        for step in range(steps):
            done = await asyncio.gather(server.iteration(1, step), *(c.iteration(1, step) for c in clients))
            losses.extend(done[1:])
        return server, clients

    server, clients = asyncio.run(go())
    states = {c.node_id: states_of(c.blocks) for c in clients}
    states[SERVER_ID] = states_of(server.blocks)
    return Iterated(states, losses, tracer.operations())


def iterate_cohort(setup: NodeSetup, plan: RunPlan, data: dict[str, LocalData], steps: int = 1,
                   policy: KernelPolicy | None = None) -> Iterated:
    bus, tracer = EventBus(), OperationTracer()
    bus.subscribe(tracer)
    engine = CohortEngine(setup, plan, data, SplitFedAvg(), 1, U_SHAPED, bus, policy)
    losses = [loss for step in range(steps) for loss in engine.iteration(1, step)]
    states = {c.id: states_of(c.blocks) for c in engine.clients}
    states[SERVER_ID] = states_of(engine.server_blocks)
    return Iterated(states, losses, tracer.operations())


def assert_states_close(a: dict, b: dict, tolerance: float = TOLERANCE) -> int:
    assert a.keys() == b.keys()
    checked = 0
    for node in a:
        assert a[node].keys() == b[node].keys(), node
        for block in a[node]:
            for key, value in a[node][block].items():
                torch.testing.assert_close(b[node][block][key], value, atol=tolerance, rtol=0,
                                           msg=f"{node}.{block}.{key}")
                checked += 1
    return checked


def assert_losses_close(a: list[ClientLosses], b: list[ClientLosses]) -> None:
    order = lambda losses: sorted(losses, key=lambda x: (x.round, x.step, x.node))  # noqa: E731
    assert len(a) == len(b) > 0
    for x, y in zip(order(a), order(b)):
        assert (x.node, x.round, x.step) == (y.node, y.round, y.step)
        for name in ("d_real", "d_fake", "d_loss", "g_loss"):
            assert abs(getattr(x, name) - getattr(y, name)) <= TOLERANCE, (x, y, name)


def assert_engines_agree(cuts, digits, costs, steps: int = 1, sizes=None) -> None:
    setup = NodeSetup(SPEC, costs, SEED, LR, BETAS)
    data = client_data(digits, len(cuts), sizes)
    plan = run_plan(cuts, data, steps)
    nodes, cohort = iterate_nodes(setup, plan, data, steps), iterate_cohort(setup, plan, data, steps)
    assert assert_states_close(nodes.states, cohort.states) > 0
    assert_losses_close(nodes.losses, cohort.losses)
    # Priced identically: the same operations, bytes, FLOPs and dependencies.
    assert cohort.operations == nodes.operations
    # The iteration moved the parameters, or equality would prove nothing.
    initial = build_initial_blocks(SPEC, SEED)["g0"].linear.weight
    assert not torch.equal(cohort.states["c0"]["g0"]["linear.weight"], initial)


@pytest.mark.parametrize("cut", OPTIONS, ids=str)
def test_every_cut_cohort_equals_nodes(cut, digits, costs):
    assert_engines_agree([cut, cut, cut], digits, costs)


@pytest.mark.parametrize("name", sorted(MIXED_PLANS))
def test_mixed_plans_cohort_equals_nodes_over_two_iterations(name, digits, costs):
    cuts = MIXED_PLANS[name]
    assert_engines_agree(cuts, digits, costs, steps=2, sizes=[9 + 3 * i for i in range(len(cuts))])


@pytest.mark.parametrize("policy", [default_policy(CPU), KernelPolicy(CPU, frozenset({"g2", "g3", "d1", "d3"}))],
                         ids=["cpu-default", "some-channels-last"])
def test_a_kernel_policy_placed_on_both_engines_keeps_them_equal(policy, digits, costs):
    """The CPU default runs convolutions in channels_last: nodes placed alike give the same numbers."""
    setup = NodeSetup(SPEC, costs, SEED, LR, BETAS)
    cuts = MIXED_PLANS["five-mixed"]
    data = client_data(digits, len(cuts))
    plan = run_plan(cuts, data, steps=2)
    nodes = iterate_nodes(setup, plan, data, 2, policy=policy)
    cohort = iterate_cohort(setup, plan, data, 2, policy=policy)
    assert assert_states_close(nodes.states, cohort.states) > 0
    assert_losses_close(nodes.losses, cohort.losses)
    client = CohortEngine(setup, plan, data, SplitFedAvg(), 1, U_SHAPED, EventBus(), policy).clients[0]
    d0 = client.blocks["d0"].conv.weight
    assert d0.is_contiguous(memory_format=torch.channels_last) != d0.is_contiguous()
    assert d0.is_contiguous(memory_format=torch.channels_last) == ("d0" in policy.channels_last)


def run_with_client_threads(digits, costs, threads: int, steps: int = 2):
    """Two iterations and a federation of six mixed-cut clients; every node's state and every event."""
    cuts = MIXED_PLANS["six-mixed"]
    data = client_data(digits, len(cuts), sizes=[9 + 3 * i for i in range(len(cuts))])
    bus, events = EventBus(), []
    bus.subscribe(events.append)
    engine = CohortEngine(NodeSetup(SPEC, costs, SEED, LR, BETAS), run_plan(cuts, data, steps), data, SplitFedAvg(),
                          1, U_SHAPED, bus, KernelPolicy(CPU, client_threads=threads))
    try:
        for step in range(steps):
            for losses in engine.iteration(1, step):
                bus.publish(losses)
        engine.federate(1, {c.id: {"g_loss": 0.0} for c in engine.clients})
        return engine.state_dicts(), events
    finally:
        engine.close()


def test_client_threads_give_the_loops_bits_and_event_stream(digits, costs):
    """Clients on threads of their own (p2pgan/engine/workers.py) with one kernel thread each: the
    same bits and the same event stream as the loop, over iterations and a federation."""
    torch.set_num_threads(1)
    alone, alone_events = run_with_client_threads(digits, costs, threads=1)
    threaded, threaded_events = run_with_client_threads(digits, costs, threads=3)
    assert alone.keys() == threaded.keys()
    moved = 0
    for node, state in alone.items():
        assert state.tensors.keys() == threaded[node].tensors.keys(), node
        for name, value in state.tensors.items():
            assert torch.equal(value, threaded[node].tensors[name]), f"{node}:{name}"
            moved += value.is_floating_point()
    assert moved > 0
    # Every compute, transfer, loss and federation event, in the same order with the same values.
    assert [repr(e) for e in threaded_events] == [repr(e) for e in alone_events]
    assert len(alone_events) > 50


# -- rounds with HuSCF's federation -------------------------------------------------------------


def prepared_run(digits, costs, cuts: list[ClientCut], rounds: int, steps: int) -> PreparedRun:
    images, labels = digits
    ids = [f"c{i}" for i in range(len(cuts))]
    data = {cid: LocalData(images[i * 24:(i + 1) * 24], labels[i * 24:(i + 1) * 24]) for i, cid in enumerate(ids)}
    # Two "domains": the second half of the clients see their digits inverted.
    for cid in ids[len(ids) // 2:]:
        data[cid] = LocalData(-data[cid].images, data[cid].labels)
    records = tuple(ClientRecord(cid, "mnist" if i < len(ids) // 2 else "fashion-mnist", (), 1.0)
                    for i, cid in enumerate(ids))
    plan = RunPlan(tuple(ClientPlan(cid, cut, 24) for cid, cut in zip(ids, cuts)),
                   Schedule(rounds=rounds, local_epochs=1, steps_per_epoch=steps, batch_size=BATCH))
    scenario = Scenario(name="cohort-test", domains={"mnist": len(ids) // 2, "fashion-mnist": len(ids) - len(ids) // 2})
    return PreparedRun(scenario, plan, NodeSetup(SPEC, costs, SEED, LR, BETAS), records, data)


def huscf():
    return create_strategy("huscf", seed=SEED, num_domains=2, warmup_rounds=1)


def placed(init):
    """A node constructor that then places the node's blocks as the cohort engine does by default
    (the node engine's own placement is its owner's; this keeps comparisons about the engines)."""
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        place_blocks(self.blocks, default_policy(CPU))
    return wrapper


def place_nodes_like_the_cohort(monkeypatch) -> None:
    for cls in (ClientNode, ServerNode):
        monkeypatch.setattr(cls, "__init__", placed(cls.__init__))


def federated(prepared: PreparedRun, engine: str, monkeypatch, first_round: int = 1, states=None,
              saved: dict | None = None) -> tuple[list[RoundAggregated], list]:
    """Rounds of ``engine``; ``saved`` collects every node's checkpoint state per round."""
    bus, tracer, rounds = EventBus(), OperationTracer(), []
    bus.subscribe(tracer)
    bus.subscribe(lambda e: rounds.append(e) if isinstance(e, RoundAggregated) else None)
    hook = (lambda round_, state: saved.setdefault(round_, {}).__setitem__(state.node_id, state)) if saved is not None else None
    if engine == "nodes":
        with monkeypatch.context() as patch:
            place_nodes_like_the_cohort(patch)
            asyncio.run(run_nodes(prepared, MemoryTransport(receive_timeout_s=30), bus, None, huscf(),
                                  first_round, states, hook))
    else:
        asyncio.run(run_cohort(prepared, bus, huscf(), first_round, states, hook))
    return rounds, tracer.operations()


def test_two_huscf_rounds_give_the_same_clusters_and_weights(digits, costs, monkeypatch):
    cuts = [OPTIONS[0], OPTIONS[15], OPTIONS[6], OPTIONS[9]]
    prepared = prepared_run(digits, costs, cuts, rounds=2, steps=2)
    nodes, node_ops = federated(prepared, "nodes", monkeypatch)
    cohort, cohort_ops = federated(prepared, "cohort", monkeypatch)
    assert [r.round for r in cohort] == [r.round for r in nodes] == [1, 2]
    assert cohort_ops == node_ops
    for a, b in zip(nodes, cohort):
        assert b.result.clusters == a.result.clusters
        assert b.losses.keys() == a.losses.keys()
        for cid in a.losses:
            for key, value in a.losses[cid].items():
                assert abs(b.losses[cid][key] - value) <= TOLERANCE
        assert_facts_close(a.result.details, b.result.details)
        assert_states_close({"clients": {f"{c}/{blk}": s for c, blocks in a.result.client_blocks.items()
                                         for blk, s in blocks.items()},
                             "server": a.result.server_blocks},
                            {"clients": {f"{c}/{blk}": s for c, blocks in b.result.client_blocks.items()
                                         for blk, s in blocks.items()},
                             "server": b.result.server_blocks})
    # Round 2 is past the warm-up: clusters are formed (two of them) and weighted.
    assert len(set(cohort[-1].result.clusters.values())) == 2
    assert "weights" in cohort[-1].result.details


def test_checkpoints_are_the_node_engines_and_resume_either_way(digits, costs, monkeypatch):
    """After a round the cohort hands over every node's state exactly as the nodes do (same names,
    order, tensors); resuming the cohort from the nodes' round-1 states ends where an
    uninterrupted run ends."""
    cuts = [OPTIONS[0], OPTIONS[15], OPTIONS[6], OPTIONS[9]]
    prepared = prepared_run(digits, costs, cuts, rounds=2, steps=1)
    node_states, cohort_states = {}, {}
    federated(prepared, "nodes", monkeypatch, saved=node_states)
    whole, _ = federated(prepared, "cohort", monkeypatch, saved=cohort_states)
    assert sorted(cohort_states) == sorted(node_states) == [1, 2]
    for round_ in (1, 2):
        assert cohort_states[round_].keys() == node_states[round_].keys()
        for node, state in node_states[round_].items():
            theirs = cohort_states[round_][node].tensors
            assert list(theirs) == list(state.tensors), node
            for name, tensor in state.tensors.items():
                assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor), f"{node} {name}"
    resumed, _ = federated(prepared, "cohort", monkeypatch, first_round=2, states=node_states[1])
    assert [r.round for r in resumed] == [2]
    assert resumed[0].result.clusters == whole[-1].result.clusters
    for cid, blocks in whole[-1].result.client_blocks.items():
        for block, state in blocks.items():
            for key, tensor in state.items():
                assert torch.equal(resumed[0].result.client_blocks[cid][block][key], tensor), f"{cid}.{block}.{key}"


# -- a shard's clients together, the server a node elsewhere (ray.clients: cohort) -----------------


def sharded(prepared: PreparedRun, monkeypatch, shards: list[list[str]], client_threads: int = 1,
            saved: dict | None = None) -> tuple[list[RoundAggregated], list[ClientLosses]]:
    """The server as a node and the clients as :class:`ShardCohort` s (``shards``: their ids), over
    one memory transport: a Ray run's actors without Ray."""
    bus, rounds, losses = EventBus(), [], []
    bus.subscribe(lambda e: rounds.append(e) if isinstance(e, RoundAggregated) else None)
    bus.subscribe(lambda e: losses.append(e) if isinstance(e, ClientLosses) else None)
    hook = (lambda round_, state: saved.setdefault(round_, {}).__setitem__(state.node_id, state)) if saved is not None else None

    async def go():
        transport, strategy = MemoryTransport(receive_timeout_s=30), huscf()
        await asyncio.gather(run_nodes(prepared, transport, bus, [SERVER_ID], strategy, checkpoint=hook),
                             *(run_shard_cohort(prepared, transport, bus, strategy, ids, client_threads,
                                                checkpoint=hook) for ids in shards))

    with monkeypatch.context() as patch:
        place_nodes_like_the_cohort(patch)  # the server node's blocks as the shards place theirs
        asyncio.run(go())
    return rounds, losses


@pytest.mark.parametrize("client_threads", [1, 2])
def test_shard_cohorts_against_a_server_node_equal_the_node_engine(digits, costs, monkeypatch, client_threads):
    """Two shards of clients run together talk to the unchanged server node and end where every
    client as its own node ends: the same clusters, weights, losses and checkpoints."""
    cuts = [OPTIONS[0], OPTIONS[15], OPTIONS[6], OPTIONS[9], OPTIONS[3]]  # one full-local client (15)
    prepared = prepared_run(digits, costs, cuts, rounds=2, steps=2)
    node_states, shard_states = {}, {}
    bus, losses = EventBus(), []
    bus.subscribe(lambda e: losses.append(e) if isinstance(e, ClientLosses) else None)
    rounds = []
    bus.subscribe(lambda e: rounds.append(e) if isinstance(e, RoundAggregated) else None)
    hook = lambda round_, state: node_states.setdefault(round_, {}).__setitem__(state.node_id, state)  # noqa: E731
    with monkeypatch.context() as patch:
        place_nodes_like_the_cohort(patch)
        asyncio.run(run_nodes(prepared, MemoryTransport(receive_timeout_s=30), bus, None, huscf(), checkpoint=hook))
    ids = list(prepared.plan.client_ids)
    shard_rounds, shard_losses = sharded(prepared, monkeypatch, [ids[:2], ids[2:]], client_threads, shard_states)
    assert [r.round for r in shard_rounds] == [r.round for r in rounds] == [1, 2]
    assert_losses_close(losses, shard_losses)
    for a, b in zip(rounds, shard_rounds):
        assert b.result.clusters == a.result.clusters
        assert_facts_close(a.result.details, b.result.details)
        assert_states_close({"clients": {f"{c}/{blk}": s for c, blocks in a.result.client_blocks.items()
                                         for blk, s in blocks.items()}, "server": a.result.server_blocks},
                            {"clients": {f"{c}/{blk}": s for c, blocks in b.result.client_blocks.items()
                                         for blk, s in blocks.items()}, "server": b.result.server_blocks})
    # Every node's checkpoint state under the node engine's names, each tensor within the tolerance.
    for round_ in (1, 2):
        assert shard_states[round_].keys() == node_states[round_].keys()
        for node, state in node_states[round_].items():
            theirs = shard_states[round_][node].tensors
            assert list(theirs) == list(state.tensors), node
            for name, tensor in state.tensors.items():
                torch.testing.assert_close(theirs[name].double(), tensor.double(), atol=TOLERANCE, rtol=0,
                                           msg=f"{node} {name}")
    assert len(set(shard_rounds[-1].result.clusters.values())) == 2  # past the warm-up: clustered


def test_a_shard_cohort_resumes_from_the_node_engines_checkpoint(digits, costs, monkeypatch):
    cuts = [OPTIONS[0], OPTIONS[6], OPTIONS[9], OPTIONS[3]]
    prepared = prepared_run(digits, costs, cuts, rounds=2, steps=1)
    node_states = {}
    whole, _ = federated(prepared, "nodes", monkeypatch, saved=node_states)
    ids = list(prepared.plan.client_ids)
    bus, resumed = EventBus(), []
    bus.subscribe(lambda e: resumed.append(e) if isinstance(e, RoundAggregated) else None)

    async def go():
        transport, strategy = MemoryTransport(receive_timeout_s=30), huscf()
        await asyncio.gather(run_nodes(prepared, transport, bus, [SERVER_ID], strategy, 2, node_states[1]),
                             run_shard_cohort(prepared, transport, bus, strategy, ids, 1, 2, node_states[1]))

    with monkeypatch.context() as patch:
        place_nodes_like_the_cohort(patch)
        asyncio.run(go())
    assert [r.round for r in resumed] == [2]
    assert resumed[0].result.clusters == whole[-1].result.clusters
    for cid, blocks in whole[-1].result.client_blocks.items():
        for block, state in blocks.items():
            for key, tensor in state.items():
                torch.testing.assert_close(resumed[0].result.client_blocks[cid][block][key], tensor,
                                           atol=TOLERANCE, rtol=0, msg=f"{cid}.{block}.{key}")


def assert_facts_close(a, b, where: str = "details") -> None:
    """Equal JSON-like facts, numbers within the tolerance (KLD weights, scores)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_facts_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_facts_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert abs(a - b) <= TOLERANCE, (where, a, b)
    else:
        assert a == b, (where, a, b)


# -- the run's edge: refusals and determinism -----------------------------------------------


def test_cohort_with_http_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nseed: 1\ndomains: {mnist: 2}\ntraining: {rounds: 1, batch_size: 8}\n"
                    "cuts: [0, 0, 0, 0]\nexecution: {engine: cohort}\ntransport: {kind: http}\n")
    assert main(["scenario", "validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{path}:execution.engine:" in lines[0] and "http" in lines[0]
    assert main(["scenario", "validate", str(path), "--set", "transport.kind=memory",
                 "--set", "transport.processes=true"]) == 2
    assert "transport.processes" in capsys.readouterr().err
    assert main(["scenario", "validate", str(path), "--set", "execution.device=tpu"]) == 2
    assert ":execution.device:" in capsys.readouterr().err


def test_strategies_with_their_own_nodes_are_refused():
    with pytest.raises(ConfigError, match="execution.engine.*md-gan"):
        check_cohort_strategy(create_strategy("md-gan"), "s.yaml")
    with pytest.raises(ConfigError, match="execution.engine.*fedprox.*create_client"):
        check_cohort_strategy(create_strategy("fedprox"), "s.yaml")
    check_cohort_strategy(huscf())  # the split engine's own nodes: accepted


def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(P2PGanError, match="execution.device: cuda asked for"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def cohort_session(repo_root: Path, out: Path, monkeypatch, engine: str = "cohort"):
    """``scenarios/quick.yaml`` (small) through the run's composition root with the cohort engine."""
    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml",
                             ["training.rounds=2", "training.max_batches_per_epoch=2", f"output.dir={out}",
                              f"execution.engine={engine}"])
    ran = []
    if engine == "cohort":
        async def recorded(prepared, bus, strategy, first_round=1, states=None, checkpoint=None):
            ran.append("cohort")
            await run_cohort(prepared, bus, strategy, first_round, states, checkpoint)

        monkeypatch.setattr(session, "run_cohort", recorded)  # the session's branch for engine: cohort
    else:
        place_nodes_like_the_cohort(monkeypatch)
    outcome = session.run_scenario(scenario)
    assert outcome.status == "completed", outcome.summary
    assert ran == (["cohort"] if engine == "cohort" else [])
    return outcome


DETERMINISTIC = ("steps.jsonl", "latency.json", "latency_iterations.csv", "latency_nodes.csv",
                 "weights/clusters.json", "plan.json")


def test_same_seed_gives_byte_identical_results_and_equals_nodes(repo_root, tmp_path, monkeypatch):
    cohort_session(repo_root, tmp_path / "a", monkeypatch)
    cohort_session(repo_root, tmp_path / "b", monkeypatch)
    cohort_session(repo_root, tmp_path / "nodes", monkeypatch, engine="nodes")
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "weights").glob("*.safetensors"))
    assert weights
    for name in (*DETERMINISTIC, *weights):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # And the cohort's results are the node engine's: same weights, same priced latency, the same
    # checkpoint of every node (so either engine resumes the other's run).
    states = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").glob("checkpoints/round-*/*.safetensors"))
    assert len(states) == 1 + 6  # the server and quick.yaml's six clients, after round 1
    for name in ("latency.json", "latency_nodes.csv", "weights/clusters.json", *weights, *states):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "nodes" / name).read_bytes(), name


# -- CUDA -------------------------------------------------------------------------------------


@CUDA
def test_cuda_cohort_is_deterministic_and_close_to_cpu_before_any_step(digits, costs):
    """Run to run on the GPU: bit-identical. Against the CPU: the first forward's losses agree
    (after an Adam step parameters may differ by up to 2*lr where a gradient is rounding noise)."""
    exact_cuda()
    setup = NodeSetup(SPEC, costs, SEED, LR, BETAS)
    cuts = MIXED_PLANS["five-mixed"]
    data = client_data(digits, len(cuts))
    plan = run_plan(cuts, data, steps=2)
    gpu = KernelPolicy(torch.device("cuda"))
    first, second = iterate_cohort(setup, plan, data, 2, gpu), iterate_cohort(setup, plan, data, 2, gpu)
    assert_states_close(first.states, second.states, tolerance=0.0)
    cpu = iterate_cohort(setup, plan, data, 1)
    for a, b in zip(sorted(cpu.losses, key=lambda x: x.node), sorted(first.losses[:len(cuts)], key=lambda x: x.node)):
        for name in ("d_real", "d_fake", "d_loss"):
            assert abs(getattr(a, name) - getattr(b, name)) <= TOLERANCE


@CUDA
@pytest.mark.parametrize("name", sorted(MIXED_PLANS))
def test_cuda_cohort_equals_cuda_nodes(name, digits, costs):
    """The node engine on the GPU (its setup's device) and the cohort there agree."""
    exact_cuda()
    setup = NodeSetup(SPEC, costs, SEED, LR, BETAS, torch.device("cuda"))
    cuts = MIXED_PLANS[name]
    data = client_data(digits, len(cuts))
    plan = run_plan(cuts, data, steps=2)
    gpu = KernelPolicy(torch.device("cuda"))
    nodes = iterate_nodes(setup, plan, data, 2)
    cohort = iterate_cohort(setup, plan, data, 2, gpu)
    assert_states_close(nodes.states, cohort.states)
    assert_losses_close(nodes.losses, cohort.losses)
