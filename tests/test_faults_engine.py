"""Faults in the node engine, in memory: the run goes on with the clients present.

A scripted dropout and rejoin completes; the dropped client publishes no losses for what it
missed and sends nothing to the federations it misses; aggregation covers the federated clients
only (its weights sum to 1 over them); back, it loads exactly the weights the server sent it,
which are its cluster's model; two runs with the same seed write the same files. Under
``faults.policy: continue`` a peer that never answers is dropped after its deadline, the run
completes without it, and a resume from a checkpoint keeps it dropped (no second wait).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from p2pgan.bus import EventBus
from p2pgan.config import load_scenario
from p2pgan.engine.participation import Participation, ParticipationView
from p2pgan.engine.state import NodeState
from p2pgan.errors import PeerError
from p2pgan.ids import SERVER_ID
from p2pgan.plan.faults import FaultPlan
from p2pgan.protocol.events import LogEvent, NodeStopped, ParticipationChanged, RoundAggregated
from p2pgan.protocol.federation import FederationResult
from p2pgan.protocol.messages import MessageKind
from p2pgan.protocol.params import flatten_blocks
from p2pgan.model.costs import profile_model
from p2pgan.run.checkpoint import CheckpointMarkers, ResumePoint, read_node_state, rewind_results
from p2pgan.run.nodes import run_nodes
from p2pgan.run.prepare import prepare_run
from p2pgan.run.session import run_scenario
from transports.memory import MemoryTransport

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
SMALL = ["training.max_batches_per_epoch=2", "training.batch_size=8", "model.width=0.125",
         "domains={mnist: 2, fashion-mnist: 2}"]
# c001 takes part in round 1's first step only, misses round 1's federation, and is back in round 2.
DROPOUT = "faults={dropout: [{clients: c001, at_round: 1, at_step: 1, rejoin_round: 2}]}"
CLIENTS = ("c000", "c001", "c002", "c003")


def scenario(out: Path, *overrides: str):
    return load_scenario(QUICK, [*SMALL, *overrides, f"output.dir={out}"])


@pytest.fixture(scope="module")
def costs():
    """Measured once: every run here prices with the same costs (so their latency files compare)."""
    return profile_model(scenario(Path("unused"), "training.rounds=2").model_spec)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_wall(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


class Recorder:
    """Every event of a run, and every AGGREGATE message the server sent (copied at sending)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.aggregates: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def __call__(self, event: object) -> None:
        self.events.append(event)

    def tap(self, msg) -> None:
        if msg.kind is MessageKind.AGGREGATE:
            self.aggregates[(msg.dst, msg.round)] = {k: t.detach().clone() for k, t in msg.tensors.items()}

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def run_recorded(out: Path, costs, *overrides: str, node_ids=None, **kwargs) -> tuple[object, Recorder]:
    sc = scenario(out, *overrides)
    recorder = Recorder()
    transport = MemoryTransport(receive_timeout_s=60)
    transport.add_tap(recorder.tap)
    outcome = run_scenario(sc, [recorder], transport=transport, prepared=prepare_run(sc, costs), node_ids=node_ids,
                           **kwargs)
    assert outcome.status == "completed", outcome.summary.get("detail")
    return outcome, recorder


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory, costs):
    out = tmp_path_factory.mktemp("faults") / "dropout"
    _, recorder = run_recorded(out, costs, "training.rounds=2", DROPOUT)
    return out, recorder


def test_dropout_and_rejoin_complete_and_rounds_record_who_took_part(dropout_run):
    out, recorder = dropout_run
    rounds = lines(out / "rounds.jsonl")
    assert [r["participants"] for r in rounds] == [
        {"present": list(CLIENTS), "federated": ["c000", "c002", "c003"], "dropped": ["c001"],
         "dropped_at_step": {"c001": 1}, "late": [], "rejoined": []},
        {"present": list(CLIENTS), "federated": list(CLIENTS), "dropped": [], "dropped_at_step": {},
         "late": [], "rejoined": ["c001"]},
    ]
    # Round losses come from the clients at the federation only.
    assert sorted(rounds[0]["client_losses"]) == ["c000", "c002", "c003"]
    assert sorted(rounds[1]["client_losses"]) == list(CLIENTS)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    changes = recorder.of(ParticipationChanged)
    assert [(e.round, e.step, e.present, e.dropped) for e in changes] == [
        (1, 1, ("c000", "c002", "c003"), ("c001",)), (2, 0, CLIENTS, ())]
    assert "c001" in changes[0].reason and "scripted" in changes[0].reason


def test_a_dropped_client_publishes_no_losses_and_sends_nothing_for_what_it_missed(dropout_run):
    out, recorder = dropout_run
    steps = {(r["node"], r["round"], r["step"]) for r in lines(out / "steps.jsonl")}
    assert {(n, r, s) for n, r, s in steps if n == "c001"} == {("c001", 1, 0), ("c001", 2, 0), ("c001", 2, 1)}
    assert len(steps) == 4 * 2 * 2 - 1
    # Round 1's federation used three updates: the server's aggregate compute counted them alone.
    federate = [e for e in recorder.events if type(e).__name__ == "ComputeEvent" and e.node == SERVER_ID
                and e.phase == "federate"]
    assert [e.batch for e in federate] == [3, 4]
    sent = [e for e in recorder.events if type(e).__name__ == "TransferEvent"]
    assert not [e for e in sent if e.src == "c001" and e.round == 1 and e.step != 0]


def test_aggregation_weights_cover_the_federated_clients_and_sum_to_one(dropout_run):
    out, _ = dropout_run
    for record in lines(out / "rounds.jsonl"):
        federated = record["participants"]["federated"]
        details = record["details"]
        assert sorted(details["global_weights"]) == federated
        assert sum(details["global_weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert sorted(record["clusters"]) == federated
        for cluster in set(record["clusters"].values()):
            members = [c for c, k in record["clusters"].items() if k == cluster]
            assert sum(details["weights"][c] for c in members) == pytest.approx(1.0, abs=1e-5)


def test_a_returning_client_loads_exactly_its_clusters_weights_sent_by_the_server(dropout_run):
    out, recorder = dropout_run
    # c001 got round 1's aggregate although it sent no parameters to round 1's federation.
    sent = recorder.aggregates[("c001", 1)]
    round_1 = [e for e in recorder.of(RoundAggregated) if e.round == 1][0]
    assert "c001" not in round_1.result.clusters
    model = round_1.result.cluster_models[0]  # warm-up: one cluster
    state = read_node_state(out / "checkpoints" / "round-1", "c001")
    held = {key.split(".", 1)[0] for key in sent}
    assert held == {key.split("/", 1)[0] for key in state.under("blocks")}  # every block it holds, no other
    expected = flatten_blocks({block: model[block] for block in held})
    assert sent.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(sent[key], tensor), key
    # Its state at the end of round 1 (the checkpoint) holds exactly those weights.
    for key, tensor in sent.items():
        block, name = key.split(".", 1)
        assert torch.equal(state.tensors[f"blocks/{block}/{name}"], tensor), key


def test_same_seed_same_files_under_faults(dropout_run, tmp_path, costs):
    out, _ = dropout_run
    again = tmp_path / "again"
    run_recorded(again, costs, "training.rounds=2", DROPOUT)
    assert without_wall(lines(again / "rounds.jsonl")) == without_wall(lines(out / "rounds.jsonl"))
    assert (again / "steps.jsonl").read_bytes() == (out / "steps.jsonl").read_bytes()
    for name in ("latency.json", "latency_iterations.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    weights = sorted(p.name for p in (out / "weights").glob("*.safetensors"))
    assert weights
    for name in weights:
        assert (again / "weights" / name).read_bytes() == (out / "weights" / name).read_bytes(), name


def test_the_engine_does_what_the_plan_prices(dropout_run, tmp_path, costs):
    """Where the server runs apart from its clients it prices the plan, not a trace: the two agree."""
    out, _ = dropout_run
    planned = tmp_path / "planned"
    run_recorded(planned, costs, "training.rounds=2", DROPOUT, node_ids=[SERVER_ID, *CLIENTS])
    for name in ("latency.json", "latency_iterations.csv", "latency_nodes.csv"):
        assert (planned / name).read_bytes() == (out / name).read_bytes(), name


def test_a_silent_peer_is_dropped_under_continue_and_a_resume_keeps_it_dropped(tmp_path, costs):
    """c001's node never runs (a peer that never came up): the server waits its deadline once, drops
    it, and completes with the rest; resumed from round 1's checkpoint it does not wait again."""
    here = [SERVER_ID, "c000", "c002", "c003"]
    settings = ("training.rounds=3", "faults={policy: continue, peer_deadline_s: 1}")
    out = tmp_path / "continue"
    markers = CheckpointMarkers(out, here, 3, "test")
    _, recorder = run_recorded(out, costs, *settings, node_ids=here, checkpoint_written=markers.report)
    rounds = lines(out / "rounds.jsonl")
    assert [r["participants"]["federated"] for r in rounds] == [["c000", "c002", "c003"]] * 3
    assert rounds[0]["participants"]["dropped_at_step"] == {"c001": 0}
    assert not [r for r in lines(out / "steps.jsonl") if r["node"] == "c001"]
    (change,) = recorder.of(ParticipationChanged)
    assert (change.round, change.step, change.dropped) == (1, 0, ("c001",))
    assert "c001 dropped" in change.reason and "peer_deadline_s" in change.reason
    assert any("peer c001 dropped" in e.message for e in recorder.of(LogEvent))
    # The server's checkpoint holds the dropped set.
    state = read_node_state(out / "checkpoints" / "round-1", SERVER_ID)
    assert state.tensors["faults/dropped"].tolist() == [[-1, -1], [1, 0], [-1, -1], [-1, -1]]

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    rewind_results(resumed, 1)
    started = time.perf_counter()
    _, again = run_recorded(resumed, costs, *settings, node_ids=here, resume=ResumePoint(resumed, 1),
                            checkpoint_written=CheckpointMarkers(resumed, here, 3, "test").report)
    assert [(e.round, e.step, e.dropped, e.reason) for e in again.of(ParticipationChanged)] == [
        (1, 0, ("c001",), "c001 dropped: gone before the resume")]
    assert not any("no activation" in e.message for e in again.of(LogEvent))
    assert without_wall(lines(resumed / "rounds.jsonl")) == without_wall(rounds)
    assert (resumed / "steps.jsonl").read_bytes() == (out / "steps.jsonl").read_bytes()
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("strategy", ["md-gan"])
def test_other_node_kinds_drop_out_and_rejoin(strategy, tmp_path, costs):
    """MD-GAN's pair: the server generates only for the clients present."""
    out = tmp_path / strategy
    _, recorder = run_recorded(out, costs, "training.rounds=2", DROPOUT, f"strategy={{name: {strategy}}}")
    rounds = lines(out / "rounds.jsonl")
    assert [sorted(r["client_losses"]) for r in rounds] == [["c000", "c002", "c003"], list(CLIENTS)]
    assert rounds[1]["participants"]["rejoined"] == ["c001"]
    state = read_node_state(out / "checkpoints" / "round-1", "c001")
    sent = recorder.aggregates[("c001", 1)]
    assert sent and {k.split(".", 1)[0] for k in sent} == {k.split("/", 1)[0] for k in state.under("blocks")}
    for key, tensor in sent.items():
        block, name = key.split(".", 1)
        assert torch.equal(state.tensors[f"blocks/{block}/{name}"], tensor), key
    if strategy == "md-gan":  # generated for three clients in round 1's second step, four in round 2
        generated = [e.batch for e in recorder.events if type(e).__name__ == "ComputeEvent"
                     and e.node == SERVER_ID and e.phase == "g_fwd"]
        assert generated == [4 * 8, 3 * 8, 4 * 8, 4 * 8]


def test_faults_on_the_cohort_engine_are_refused_in_one_line(tmp_path):
    from p2pgan.errors import ConfigError

    refused = r"quick.yaml:faults: execution.engine cohort .*expected execution.engine: nodes"
    with pytest.raises(ConfigError, match=refused):
        scenario(tmp_path, "execution.engine=cohort", DROPOUT)
    assert scenario(tmp_path, "execution.engine=cohort").execution.engine == "cohort"  # no faults: fine


# -- the server's participation, alone ------------------------------------------------------------


def _result(clusters: dict[str, int]) -> FederationResult:
    models = {k: {"g1": {"w": torch.full((2,), float(k + 1))}} for k in set(clusters.values())}
    return FederationResult({}, {}, clusters, models)


def test_a_returning_client_gets_the_cluster_holding_most_of_its_last_cluster():
    part = Participation(FaultPlan.none(["c0", "c1", "c2", "c3", "c4"], rounds=4, steps_per_round=2))
    part.remember(_result({"c0": 0, "c1": 0, "c2": 1, "c3": 1, "c4": 1}))
    sizes = {c: 10 for c in ("c0", "c1", "c2", "c3", "c4")}
    # c2 was with c3 and c4; they are now mostly in cluster 0 (labels are renumbered every round).
    now = _result({"c0": 1, "c1": 1, "c3": 0, "c4": 0})
    assert torch.equal(part.rejoin_model("c2", now, sizes)["g1"]["w"], torch.full((2,), 1.0))
    # Never aggregated: the clusters' mean weighted by their examples (here 2 and 2 clients: equal).
    fresh = Participation(FaultPlan.none(["c0", "c1", "c2", "c3", "c4"], rounds=4, steps_per_round=2))
    assert torch.allclose(fresh.rejoin_model("c2", now, sizes)["g1"]["w"], torch.full((2,), 1.5))
    sizes["c0"] = 30  # cluster 1 (c0, c1) now holds 40 of 60 examples
    assert torch.allclose(fresh.rejoin_model("c2", now, sizes)["g1"]["w"], torch.full((2,), 2 * 40 / 60 + 20 / 60))


def test_dropped_peers_and_clusters_survive_a_checkpoint_and_are_published_again():
    plan = FaultPlan.none(["c0", "c1", "c2"], rounds=3, steps_per_round=2)
    plan = dataclasses.replace(plan, policy="continue")
    events: list[object] = []
    bus = type("Bus", (), {"publish": lambda self, e: events.append(e)})()
    part = Participation(plan, bus)
    part.enter(1, 0)
    part.drop("c1", 1, 1, "no answer")
    part.remember(_result({"c0": 0, "c2": 1}))
    assert not part.plan.present(2, 0) & {"c1"} and "c1" not in part.at_federation(1)
    state = NodeState(SERVER_ID, part.state())

    view = ParticipationView(plan)
    again = Participation(plan, type("Bus", (), {"publish": lambda self, e: view(e)})())
    again.load_state(state)
    assert again.dropped == {"c1": (1, 1, "gone before the resume")}
    assert again.plan.present(3, 0) == {"c0", "c2"} == view.plan.present(3, 0)
    assert view.plan.participation(1)["dropped_at_step"] == {"c1": 1}
    assert again.state()["faults/members"].equal(state.tensors["faults/members"])
    # Without faults nothing is added to a checkpoint.
    assert Participation(FaultPlan.none(["c0"], 1, 1)).state() == {}


class _ScriptedClient:
    """A client node that ends after ``delay_s``, failing as dropped by the server when ``dropped``."""

    def __init__(self, node_id: str, delay_s: float, dropped: bool) -> None:
        self.node_id, self._delay_s, self._dropped = node_id, delay_s, dropped

    async def run(self, first_round: int, checkpoint) -> None:
        await asyncio.sleep(self._delay_s)
        if self._dropped:
            raise PeerError(SERVER_ID, f"no activation message for {self.node_id} within 1 s")


class _Scripted:
    """The strategy as run_nodes uses it: node id -> (delay, dropped)."""

    def __init__(self, script: dict[str, tuple[float, bool]]) -> None:
        self._script = script

    def create_node(self, prepared, node_id, endpoint, bus):
        return _ScriptedClient(node_id, *self._script[node_id])


def _clients_host(script: dict[str, tuple[float, bool]]) -> list[object]:
    """run_nodes hosting only clients (a Ray shard, a client process) under policy continue."""
    events: list[object] = []
    bus = EventBus()
    bus.subscribe(events.append)
    prepared = SimpleNamespace(faults=SimpleNamespace(policy="continue"), scenario=None)
    asyncio.run(run_nodes(prepared, MemoryTransport(), bus, list(script), strategy=_Scripted(script)))
    return events


def test_a_client_host_goes_on_when_a_dropped_client_stops_after_the_others_finished():
    # c1 times out only after c0 and c2 have finished training: the host still completes.
    events = _clients_host({"c0": (0.0, False), "c1": (0.05, True), "c2": (0.0, False)})
    assert [e.node for e in events if isinstance(e, NodeStopped)] == ["c1"]
    # And while the others still run.
    events = _clients_host({"c0": (0.1, False), "c1": (0.0, True)})
    assert [e.node for e in events if isinstance(e, NodeStopped)] == ["c1"]
    # Every client stopped is the host's failure, for the host above to handle.
    with pytest.raises(PeerError, match="c1 within"):
        _clients_host({"c0": (0.0, True), "c1": (0.05, True)})
