"""``faults:`` on ``execution: {engine: ray}`` (p2pgan/run/ray.py, docs/ray.md, docs/faults.md).

Faults in virtual time (a scripted dropout and rejoin, a permanent dropout, random dropouts, a
straggler, a lossy link, a round deadline) give on Ray the results files of the memory run of the
same scenario. Under ``faults.policy: continue`` a shard actor killed mid-run costs only its
clients: the server drops them at once (one warning line naming the shard and its clients), the
run completes without them, and a resume keeps them dropped and hosts them nowhere. Under
``policy: fail`` (the default) the same kill fails the run in one line naming the shard.
Uses the two-node cluster of tests/test_ray.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

import test_ray  # noqa: E402


from p2pgan.bus import EventBus  # noqa: E402
from p2pgan.config.loader import load_scenario  # noqa: E402
from p2pgan.engine.participation import Participation  # noqa: E402
from p2pgan.errors import ConfigError, P2PGanError  # noqa: E402
from p2pgan.plan.faults import FaultPlan  # noqa: E402
from p2pgan.protocol.events import ClientLosses, LogEvent, ParticipationChanged, RoundClosed  # noqa: E402
from p2pgan.run.checkpoint import find_resume_point, rewind_results  # noqa: E402
from p2pgan.run.ray import _shard_routes, run_ray  # noqa: E402
from p2pgan.run.session import run_scenario  # noqa: E402
from transports.ray import Parcel, RayTransport  # noqa: E402

# tests/test_ray.py's two-node cluster, its one torch thread (the actors run one each) and helpers.
cluster = test_ray.cluster
one_thread = test_ray.one_thread
our_actors = test_ray.our_actors
rounds_without_wall_clock = test_ray.rounds_without_wall_clock

QUICK = Path(__file__).resolve().parents[1] / "scenarios" / "quick.yaml"
SMALL = ["training.max_batches_per_epoch=2", "training.batch_size=8", "model.width=0.125"]
RAY = ["execution.engine=ray", "ray.shards=2", "ray.num_cpus_per_shard=0.5"]
# c001 is out from round 1 step 1 until round 3, c000 and c004 miss the round deadline, c002
# straggles, c005's link loses copies; the random dropouts take c001 out of round 1, c000 out of
# rounds 2 and 3 and c005 out of round 3.
VIRTUAL = ("faults={round_deadline_s: 0.2, dropout: [{clients: c001, at_round: 1, at_step: 1, rejoin_round: 3},"
           " {clients: '*', probability: 0.2}], stragglers: [{clients: c002, compute: 3.0, link: 2.0}],"
           " lossy_links: [{clients: c005, loss_rate: 0.2}]}")
SHARD_1 = ["c003", "c004", "c005"]


def scenario(out: Path, *overrides: str):
    return load_scenario(QUICK, [*SMALL, f"output.dir={out}", *overrides])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Watch:
    """Every event; each round's close notes which rounds ``steps.jsonl`` already has all steps of."""

    def __init__(self, out: Path, kill_after: int | None = None, shard: str = "shard-1") -> None:
        self.out = out
        self.kill_after = kill_after
        self.shard = shard
        self.events: list[object] = []
        self.steps_at_close: dict[int, set[int]] = {}

    def __call__(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, RoundClosed):
            self.steps_at_close[event.round] = {r["round"] for r in lines(self.out / "steps.jsonl")}
            if event.round == self.kill_after:
                (name,) = [n for n in our_actors() if n.endswith(f"-{self.shard}")]
                ray.kill(ray.get_actor(name, namespace="p2pgan"))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def test_virtual_time_faults_on_ray_give_the_memory_runs_files(tmp_path, cluster):
    settings = ["training.rounds=3", "checkpoint.enabled=false", VIRTUAL]
    memory_seen: list[object] = []
    memory = run_scenario(scenario(tmp_path / "memory", *settings), [memory_seen.append])
    assert memory.status == "completed", memory.summary.get("detail")
    out = tmp_path / "ray"
    watch = Watch(out)
    outcome = run_ray(scenario(out, *settings, *RAY), [watch])
    assert outcome.status == "completed", outcome.summary.get("detail")
    reference = tmp_path / "memory"
    for name in ["steps.jsonl", "latency.json", "latency_iterations.csv", "latency_nodes.csv", "plan.json",
                 *[str(p.relative_to(reference)) for p in (reference / "weights").iterdir()]]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    rounds = rounds_without_wall_clock(out)
    assert rounds == rounds_without_wall_clock(reference)
    participants = [r["participants"] for r in rounds]
    assert [p["late"] for p in participants][0] == ["c000", "c004"]  # the faults did bite
    assert participants[1]["rejoined"] == ["c004"] and participants[2]["rejoined"] == ["c001", "c004"]
    assert "c001" not in participants[1]["present"]
    # The live view hears what it hears in memory: every change of who takes part, in order.
    changes = [(e.round, e.step, e.present, e.reason) for e in memory_seen if isinstance(e, ParticipationChanged)]
    assert changes and [(e.round, e.step, e.present, e.reason) for e in watch.of(ParticipationChanged)] == changes
    # A step's losses are written once its present clients reported them, not held to the run's end.
    assert {1} <= watch.steps_at_close[2] and {1, 2} <= watch.steps_at_close[3]
    assert our_actors() == []


@pytest.fixture(scope="module")
def continued(tmp_path_factory, cluster):
    """A continue run on Ray whose shard-1 is killed once round 1 is closed."""
    out = tmp_path_factory.mktemp("continue") / "run"
    watch = Watch(out, kill_after=1)
    outcome = run_ray(scenario(out, "training.rounds=4", "checkpoint.every=1", *RAY,
                               "faults={policy: continue, peer_deadline_s: 3}"), [watch], grace_s=5)
    return out, watch, outcome


def test_continue_on_ray_drops_a_killed_shards_clients_and_completes(continued):
    out, watch, outcome = continued
    assert outcome.status == "completed" and outcome.error is None, outcome.summary.get("detail")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert summary["ray"]["actors"]["shard-1"]["lost"].startswith("died")
    assert summary["ray"]["clients_gone"] == SHARD_1
    (change,) = watch.of(ParticipationChanged)  # at once, all three together
    assert change.present == ("c000", "c001", "c002") and change.dropped == tuple(SHARD_1)
    gone_from = change.round  # the server was at round 1's end or in round 2 when it learnt it
    assert 2 <= gone_from <= 3
    warnings = [line for line in (out / "log.txt").read_text().splitlines() if line.startswith("[warning]")]
    assert len(warnings) == 1, warnings
    assert "ray actor shard-1 (clients c003..c005) died" in warnings[0] and "c003, c004, c005 dropped" in warnings[0]
    rounds = lines(out / "rounds.jsonl")
    assert rounds[0]["participants"]["federated"] == ["c000", "c001", "c002", *SHARD_1]
    assert rounds[gone_from - 1]["participants"]["dropped_at_step"] == {c: change.step for c in SHARD_1}
    for record in rounds[gone_from - 1:]:
        assert record["participants"]["dropped"] == SHARD_1
        assert record["participants"]["federated"] == ["c000", "c001", "c002"]
        assert sorted(record["client_losses"]) == ["c000", "c001", "c002"]
    for record in rounds[gone_from:]:
        assert record["participants"]["present"] == ["c000", "c001", "c002"]
    assert not [r for r in lines(out / "steps.jsonl") if r["node"] in SHARD_1 and r["round"] > gone_from]
    assert our_actors() == []


def test_a_resume_of_a_continued_ray_run_keeps_the_shards_clients_dropped(continued, tmp_path):
    out, _, _ = continued
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    point = find_resume_point(resumed, 4)
    assert point.round == 3
    rewind_results(resumed, point.round)
    outcome = run_ray(scenario(resumed, "training.rounds=4", "checkpoint.every=1", *RAY,
                               "faults={policy: continue, peer_deadline_s: 3}"), resume=point)
    assert outcome.status == "completed", outcome.summary.get("detail")
    assert list(outcome.summary["ray"]["actors"]) == ["server", "shard-0"]  # the dead shard's clients: nowhere
    assert outcome.summary["ray"]["clients_gone"] == SHARD_1
    assert rounds_without_wall_clock(resumed) == rounds_without_wall_clock(out)
    for name in ["steps.jsonl", "latency.json", *[str(p.relative_to(out)) for p in (out / "weights").iterdir()]]:
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name


def test_fail_on_ray_ends_the_run_in_one_line_naming_the_killed_shard(tmp_path, cluster):
    """The default policy, with faults in force: a dead shard is the run's end, as without faults."""
    out = tmp_path / "run"
    watch = Watch(out, kill_after=1, shard="shard-0")
    outcome = run_ray(scenario(out, "training.rounds=6", "checkpoint.enabled=false", *RAY, "ray.shards=1",
                               "faults={policy: fail, stragglers: [{clients: c001, compute: 2.0}]}"),
                      [watch], grace_s=5)
    assert outcome.status == "failed"
    message = str(outcome.error)
    assert outcome.error.exit_code == 3 and "\n" not in message
    assert "shard-0" in message, message  # from the driver, or from the server that lost it
    rounds = lines(out / "rounds.jsonl")
    assert 1 <= len(rounds) < 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == len(rounds)
    assert not watch.of(ParticipationChanged)
    assert {e.node for e in watch.of(ClientLosses)} == {"c000", "c001", "c002", *SHARD_1}
    assert our_actors() == []


def test_faults_with_the_cohort_engine_are_refused_in_one_line_and_ray_takes_them(tmp_path):
    faults = "faults={dropout: [{clients: c001, at_round: 2}]}"
    with pytest.raises(ConfigError) as caught:
        scenario(tmp_path, "execution.engine=cohort", faults)
    message = str(caught.value)
    assert "quick.yaml:faults: execution.engine cohort" in message and "\n" not in message, message
    assert scenario(tmp_path, *RAY, faults).faults.dropout[0].clients == "c001"
    # A hung shard's clients wait for the server transport.timeout_s at most: the peer deadline is shorter.
    with pytest.raises(ConfigError, match=r"quick\.yaml:faults\.peer_deadline_s: must be below transport\.timeout_s"):
        scenario(tmp_path, *RAY, "transport.timeout_s=20", "faults={policy: continue, peer_deadline_s: 30}")


def _cut_off(client: str, from_round: int):
    """The shard actors' body with every message to ``client`` lost from ``from_round`` on: a
    client silent in a shard that is itself alive. Defined here, so Ray ships it by value."""
    import p2pgan.run.ray as host

    class CutOffHost(host.NodeHost):
        async def deliver(self, parcels) -> None:
            parcels = [parcels] if isinstance(parcels, Parcel) else list(parcels)
            await super().deliver([p for p in parcels if not (p.dst == client and p.round >= from_round)])

    return CutOffHost


SILENT = ["training.rounds=3", "checkpoint.every=1", "transport.timeout_s=8",
          "faults={policy: continue, peer_deadline_s: 1.5}", *RAY]


def test_a_client_dropped_as_silent_in_a_live_shard_stops_alone(tmp_path, cluster, monkeypatch):
    """c004 hears nothing from round 2 on: the server drops it at its deadline, c004 times out and
    stops, and its shard goes on with c003 and c005; checkpoints complete, and a resume from
    round 2 hosts c004 nowhere and ends as the uninterrupted run."""
    import p2pgan.run.ray as host

    monkeypatch.setattr(host, "NodeHost", _cut_off("c004", 2))
    out = tmp_path / "run"
    watch = Watch(out)
    outcome = run_ray(scenario(out, *SILENT), [watch], grace_s=5)
    assert outcome.status == "completed" and outcome.error is None, outcome.summary.get("detail")
    summary = json.loads((out / "summary.json").read_text())
    assert not any("lost" in actor for actor in summary["ray"]["actors"].values()), summary["ray"]["actors"]
    assert summary["ray"]["clients_gone"] == ["c004"]
    (change,) = watch.of(ParticipationChanged)
    assert (change.round, change.step, change.dropped) == (2, 0, ("c004",)), change
    rounds = lines(out / "rounds.jsonl")
    assert rounds[1]["participants"]["dropped_at_step"] == {"c004": 0}
    assert [sorted(r["client_losses"]) for r in rounds[1:]] == [["c000", "c001", "c002", "c003", "c005"]] * 2
    steps = lines(out / "steps.jsonl")
    assert {r["node"] for r in steps if r["round"] == 3} == {"c000", "c001", "c002", "c003", "c005"}
    assert not [r for r in steps if r["node"] == "c004" and r["round"] > 1]
    assert any("node c004 stopped" in e.message for e in watch.of(LogEvent))
    # Checkpoints complete without it: round 1 holds its state, round 2 none.
    point = find_resume_point(out, 3)
    assert point.round == 2
    assert json.loads((out / "checkpoints" / "round-1" / "c004.json").read_text())["tensors"]
    assert not json.loads((out / "checkpoints" / "round-2" / "c004.json").read_text())["tensors"]
    assert our_actors() == []

    monkeypatch.undo()
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    rewind_results(resumed, point.round)
    again = run_ray(scenario(resumed, *SILENT), resume=point)
    assert again.status == "completed", again.summary.get("detail")
    assert again.summary["ray"]["actors"]["shard-1"]["clients"] == ["c003", "c005"]
    assert rounds_without_wall_clock(resumed) == rounds_without_wall_clock(out)
    for name in ["steps.jsonl", "latency.json", *[str(p.relative_to(out)) for p in (out / "weights").iterdir()]]:
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name


# -- without actors -----------------------------------------------------------------------------


def test_the_server_drops_a_shards_clients_at_once_and_refuses_to_drop_the_last():
    events: list[object] = []
    plan = dataclasses.replace(FaultPlan.none(["c0", "c1", "c2", "c3"], rounds=3, steps_per_round=2),
                               policy="continue")
    bus = EventBus()
    bus.subscribe(events.append)
    part = Participation(plan, bus)
    assert part.drop_gone(["c1", "c0"], "ray actor shard-0 died", first_round=2) == (2, 0)  # before it started
    part.at_federation(2)
    assert part.drop_gone(["c2"], "ray actor shard-1 died") == (3, 0)  # at a round's end: from the next round
    assert part.drop_gone(["c2"], "again") is None
    assert [(e.round, e.step, e.present, e.dropped) for e in events if isinstance(e, ParticipationChanged)] == [
        (2, 0, ("c2", "c3"), ("c0", "c1")), (3, 0, ("c3",), ("c0", "c1", "c2"))]
    warnings = [e.message for e in events if isinstance(e, LogEvent)]
    assert warnings == ["round 2 step 0: ray actor shard-0 died; clients c0, c1 dropped, the run goes on with "
                        "2 clients", "round 3 step 0: ray actor shard-1 died; client c2 dropped, the run goes on "
                        "with 1 client"]
    assert part.dropped == {"c0": (2, 0, "ray actor shard-0 died"), "c1": (2, 0, "ray actor shard-0 died"),
                            "c2": (3, 0, "ray actor shard-1 died")}
    part.enter(3, 1)
    with pytest.raises(P2PGanError, match="every client is gone"):
        part.drop_gone(["c3"], "ray actor shard-2 died")
    assert part.now == {"c3"} and "c3" not in part.dropped  # refused whole


async def test_under_continue_the_servers_route_to_a_dead_shard_drops_its_clients_not_the_transport():
    import asyncio

    dead, alive = test_ray.FakeActor(dead=True), test_ray.FakeActor()
    gone: list[tuple[list[str], str]] = []
    names = {"c0": "ray actor shard-0 (clients c0..c1)", "c1": "ray actor shard-0 (clients c0..c1)",
             "c2": "ray actor shard-1 (clients c2)"}
    routes = _shard_routes({"server": None, "c0": dead, "c1": dead, "c2": alive}, names,
                           lambda clients, why: gone.append((clients, why)))
    transport = RayTransport(routes, receive_timeout_s=5, actor_names=names)
    endpoints = await transport.open(["server"])
    waiting = asyncio.ensure_future(endpoints["server"].receive(test_ray.activation("c2", "server").key))
    for dst in ("c0", "c1", "c2"):
        await transport.send(test_ray.activation("server", dst))
    await asyncio.sleep(0)
    await transport.close()
    assert gone == [(["c0", "c1"], "ray actor shard-0 (clients c0..c1) died")]
    assert not waiting.done()  # the other shard's client is still awaited
    await transport.send(test_ray.activation("server", "c2", step=1))  # and reached
    await asyncio.sleep(0)
    assert [p.dst for call in alive.calls for p in call] == ["c2", "c2"]
    waiting.cancel()
