"""The ``faults:`` section and the FaultPlan: validation at the edge, who takes part when, seeds.

Schema errors go through ``p2pgan scenario validate`` (one line naming ``file:faults...``, exit 2);
the plan's questions are answered on hand-written specs; one real prepare proves the run builds
the plan from the scenario and refuses what only the schedule can refuse.
"""

from __future__ import annotations


import pytest
import torch

from p2pgan.cli import main
from p2pgan.config.loader import parse_scenario
from p2pgan.config.schema import DropoutSpec, FaultsSpec, LossyLinkSpec, StragglerSpec
from p2pgan.errors import ConfigError
from p2pgan.plan.faults import FaultPlan
from p2pgan.protocol.messages import Phase

torch.set_num_threads(1)

GOOD = """\
name: t
seed: 1
domains: {mnist: 2, kmnist: 2}
training: {rounds: 4, batch_size: 8, max_batches_per_epoch: 3}
cuts: [0, 0, 0, 0]
"""
DOMAINS = {"mnist": ["c000", "c001"], "kmnist": ["c002", "c003"]}

# name -> (faults section in flow style, blamed key, words in the problem)
BAD: dict[str, tuple[str, str, str]] = {
    "unknown-client": ("{dropout: [{clients: [c009], at_round: 2}]}", "faults.dropout[0].clients", "'c009'"),
    "unknown-domain": ("{stragglers: [{clients: notmnist, compute: 2}]}", "faults.stragglers[0].clients",
                       "unknown client or domain 'notmnist'"),
    "unknown-in-list": ("{lossy_links: [{clients: [c000, mnist], loss_rate: .1}, {clients: [c001, x], loss_rate: .1}]}",
                        "faults.lossy_links[1].clients", "'x'"),
    "empty-list": ("{dropout: [{clients: [], probability: .1}]}", "faults.dropout[0].clients", "names no client"),
    "not-names": ("{dropout: [{clients: [3], probability: .1}]}", "faults.dropout[0].clients", "expected \"*\""),
    "round-after-run": ("{dropout: [{clients: '*', at_round: 5}]}", "faults.dropout[0].at_round", "has 4 rounds"),
    "rejoin-before-drop": ("{dropout: [{clients: c000, at_round: 3, rejoin_round: 2}]}",
                           "faults.dropout[0].rejoin_round", "not after"),
    "rejoin-after-run": ("{dropout: [{clients: c000, at_round: 3, rejoin_round: 9}]}",
                         "faults.dropout[0].rejoin_round", "has 4 rounds"),
    "step-beyond-most": ("{dropout: [{clients: c000, at_round: 1, at_step: 3}]}", "faults.dropout[0].at_step",
                         "at most 3 steps"),
    "neither": ("{dropout: [{clients: c000}]}", "faults.dropout[0]", "not neither"),
    "both": ("{dropout: [{clients: c000, at_round: 1, probability: .5}]}", "faults.dropout[0]", "not both"),
    "step-with-probability": ("{dropout: [{clients: c000, probability: .5, at_step: 1}]}",
                              "faults.dropout[0].at_step", "random dropout"),
    "probability-over-one": ("{dropout: [{clients: c000, probability: 1.5}]}", "faults.dropout[0].probability",
                             "less than or equal to 1"),
    "loss-one": ("{lossy_links: [{clients: c000, loss_rate: 1}]}", "faults.lossy_links[0].loss_rate", "less than 1"),
    "loss-missing": ("{lossy_links: [{clients: c000}]}", "faults.lossy_links[0].loss_rate", "required"),
    "speedup": ("{stragglers: [{clients: c000, compute: 0.5}]}", "faults.stragglers[0].compute", "greater than or equal to 1"),
    "factor-yes": ("{stragglers: [{clients: c000, link: yes}]}", "faults.stragglers[0].link", "booleans"),
    "factor-inf": ("{stragglers: [{clients: c000, link: .inf}]}", "faults.stragglers[0].link", "finite"),
    "unknown-rule-key": ("{dropout: [{clients: c000, at_round: 1, at: 2}]}", "faults.dropout[0].at",
                         "unknown key (expected one of: clients, at_round"),
    "unknown-section-key": ("{stragglers: [], dropouts: []}", "faults.dropouts", "unknown key (expected one of: seed"),
    "policy": ("{policy: ignore}", "faults.policy", "'fail' or 'continue'"),
    "deadline-zero": ("{round_deadline_s: 0}", "faults.round_deadline_s", "greater than 0"),
    "peer-deadline-nan": ("{peer_deadline_s: .nan}", "faults.peer_deadline_s", "finite"),
    "seed-negative": ("{seed: -1}", "faults.seed", "greater than or equal to 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_faults_are_one_line_naming_file_and_key(case, tmp_path, capsys):
    section, key, words = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + f"faults: {section}\n", encoding="utf-8")
    code = main(["scenario", "validate", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f" {path}:{key}: " in f" {err}", err
    assert words in err, err


def test_good_faults_validate_and_set_overrides_reach_them(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + "faults:\n  dropout: [{clients: kmnist, probability: .2}, {clients: [c001], at_round: 2,"
                           " at_step: 1, rejoin_round: 4}]\n  stragglers: [{clients: '*', compute: 1.5}]\n",
                    encoding="utf-8")
    assert main(["scenario", "validate", str(path), "--set", "faults.round_deadline_s=2.5"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["scenario", "validate", str(path), "--set", "faults.dropout=[{clients: [c7], at_round: 1}]"]) == 2
    assert f"{path}:faults.dropout[0].clients: unknown client" in capsys.readouterr().err


def _plan(steps: int = 3, rounds: int = 6, scenario_seed: int = 5, **sections) -> FaultPlan:
    return FaultPlan.from_spec(FaultsSpec(**sections), DOMAINS, rounds, steps, scenario_seed, source="s.yaml")


def test_no_faults_is_everyone_everywhere():
    plan = FaultPlan.none(["c000", "c001"], rounds=3, steps_per_round=2)
    assert not plan.active and not _plan().active
    assert all(plan.present(r, s) == {"c000", "c001"} for r in (1, 2, 3) for s in (0, 1))
    assert plan.at_federation(2) == {"c000", "c001"} and plan.rejoining(2) == frozenset()
    assert plan.retransmissions(1, 0, Phase.G_FWD, "c000", "server") == 0
    assert (plan.compute_factor("c000"), plan.link_factor("c001"), plan.loss_rate("c000")) == (1.0, 1.0, 0.0)
    assert _plan(policy="continue").active


def test_scripted_dropout_timeline_and_rejoin():
    plan = _plan(dropout=[DropoutSpec(clients=["c001"], at_round=2, at_step=1, rejoin_round=4),
                          DropoutSpec(clients="kmnist", at_round=5)])
    everyone = {"c000", "c001", "c002", "c003"}
    assert plan.present(2, 0) == everyone  # takes part in the steps before its dropout step
    assert plan.present(2, 1) == plan.present(3, 0) == everyone - {"c001"}
    assert plan.at_federation(1) == everyone and plan.at_federation(2) == everyone - {"c001"}
    assert plan.rejoining(3) == frozenset() and plan.rejoining(4) == {"c001"}
    assert plan.present(4, 0) == everyone
    assert plan.present(5, 0) == plan.at_federation(6) == {"c000", "c001"}  # a domain, never back
    assert plan.participation(2) == {"present": ["c000", "c001", "c002", "c003"], "federated": ["c000", "c002", "c003"],
                                     "dropped": ["c001"], "dropped_at_step": {"c001": 1}, "late": [], "rejoined": []}
    assert plan.participation(4)["rejoined"] == ["c001"]
    dead = plan.with_dropped("c000", 6, 2)
    assert plan.present(6, 2) == {"c000", "c001"} and dead.present(6, 2) == {"c001"}
    assert dead.participation(6)["dropped_at_step"] == {"c000": 2, "c002": 0, "c003": 0}


def test_random_dropouts_are_seeded_per_round_and_client():
    rule = [DropoutSpec(clients="*", probability=0.3)]
    a, b, other = _plan(rounds=2000, dropout=rule), _plan(rounds=2000, dropout=rule), _plan(rounds=2000, scenario_seed=6, dropout=rule)
    rounds = range(1, 2001)
    drawn = [a.randomly_dropped(r) for r in rounds]
    assert drawn == [b.randomly_dropped(r) for r in reversed(rounds)][::-1]  # order of questions is irrelevant
    assert drawn != [other.randomly_dropped(r) for r in rounds]
    share = sum(len(d) for d in drawn) / (4 * len(drawn))
    assert abs(share - 0.3) < 0.02, share
    # Out for the whole round, back the next one (rejoining, unless drawn again).
    r = next(r for r in rounds if drawn[r - 1] and not drawn[r])
    out = next(iter(drawn[r - 1]))
    assert all(out not in a.present(r, s) for s in range(3)) and out in a.rejoining(r + 1)
    # faults.seed wins over the scenario's seed.
    pinned = [_plan(scenario_seed=s, seed=9, rounds=50, dropout=rule) for s in (1, 2)]
    assert [pinned[0].randomly_dropped(r) for r in range(1, 51)] == [pinned[1].randomly_dropped(r) for r in range(1, 51)]
    assert pinned[0].seed == 9


def test_retransmissions_are_seeded_and_geometric():
    plan = _plan(lossy_links=[LossyLinkSpec(clients=["c002"], loss_rate=0.2),
                              LossyLinkSpec(clients="kmnist", loss_rate=0.5)])
    assert plan.loss_rate("c002") == pytest.approx(1 - 0.8 * 0.5) and plan.loss_rate("c003") == 0.5
    assert plan.loss_rate("c000") == 0.0 and plan.retransmissions(1, 0, "g_fwd", "c000", "server") == 0
    counts = [plan.retransmissions(r, s, "d_real", "server", "c003") for r in range(1, 201) for s in range(50)]
    assert counts == [plan.retransmissions(r, s, Phase.D_REAL, "server", "c003") for r in range(1, 201) for s in range(50)]
    assert sum(counts) / len(counts) == pytest.approx(0.5 / 0.5, rel=0.05)  # mean p / (1 - p)
    assert counts.count(0) / len(counts) == pytest.approx(0.5, abs=0.02)
    up = [plan.retransmissions(r, s, "d_real", "c003", "server") for r in range(1, 201) for s in range(50)]
    assert up != counts  # each message draws its own losses (direction is part of the key)
    # A pure function of the seed and the message (blake2b, not Python's salted hash): fixed values.
    assert [plan.retransmissions(1, s, "g_fwd", "c003", "server") for s in range(8)] == GOLDEN


GOLDEN = [0, 0, 1, 0, 4, 1, 2, 1]


def test_stragglers_multiply_and_describe():
    plan = _plan(stragglers=[StragglerSpec(clients="*", compute=1.5), StragglerSpec(clients=["c001"], compute=2, link=3)])
    assert plan.compute_factor("c000") == 1.5 and plan.compute_factor("c001") == 3.0
    assert plan.link_factor("c001") == 3.0 and plan.link_factor("c000") == 1.0
    assert plan.describe() == ["c000, c002, c003 compute 1.5x slower", "c001 compute 3x slower",
                               "c001 send and receive 3x slower"]


def test_round_deadline_cuts_late_clients_at_the_step_it_falls_in():
    plan = _plan(steps=4, round_deadline_s=10.0)
    own_round = {"c000": 8.0, "c001": 10.5, "c002": 25.0, "c003": 9.0}
    own_step = {"c000": 2.0, "c001": 2.5, "c002": 6.0, "c003": 2.2}
    late = plan.with_deadline(own_round, own_step)
    assert late.deadline_steps == {"c001": 4, "c002": 1}  # c001: only its upload is late; c002 one step
    assert late.present(1, 3) == {"c000", "c001", "c003"} and late.present(1, 0) == {"c000", "c001", "c002", "c003"}
    assert late.at_federation(2) == {"c000", "c003"}
    assert late.rejoining(2) == {"c001", "c002"}
    assert late.participation(1)["late"] == ["c001", "c002"]
    assert _plan().with_deadline(own_round, own_step).deadline_steps == {}  # no deadline, nobody late


def test_a_round_without_anyone_at_federation_is_refused():
    with pytest.raises(ConfigError, match=r"^s.yaml:faults: faults leave no client at the federation of rounds 2, 3 "):
        _plan(rounds=4, dropout=[DropoutSpec(clients="*", at_round=2, at_step=2, rejoin_round=4)]
              ).check_every_round_federates("s.yaml")
    with pytest.raises(ConfigError, match=r"^s.yaml:faults.dropout\[0\].at_step: step 3 but a round of this run has 3"):
        _plan(steps=3, dropout=[DropoutSpec(clients="*", at_round=2, at_step=3)])


def test_prepare_builds_the_plan_and_checks_the_real_schedule(tmp_path):
    from p2pgan.run.prepare import prepare_run

    path = tmp_path / "s.yaml"
    raw = {"name": "t", "seed": 1, "domains": {"mnist": 2}, "model": {"width": 0.125, "z_dim": 8},
           "training": {"rounds": 3, "batch_size": 256}, "cuts": [0, 0, 0, 0],
           "faults": {"dropout": [{"clients": ["c001"], "at_round": 2, "rejoin_round": 3}]}}
    prepared = prepare_run(parse_scenario(raw, path))
    steps = prepared.plan.schedule.steps_per_round
    assert prepared.faults.steps_per_round == steps and prepared.faults.rounds == 3
    assert prepared.faults.present(2, 0) == {"c000"} and prepared.faults.rejoining(3) == {"c001"}
    raw["faults"] = {"dropout": [{"clients": ["c001"], "at_round": 2, "at_step": steps}]}
    with pytest.raises(ConfigError, match=rf"^{path}:faults.dropout\[0\].at_step: step {steps} but a round of this "
                                          rf"run has {steps} steps"):
        prepare_run(parse_scenario(raw, path))
    raw["strategy"], raw["faults"] = {"name": "centralized"}, {"stragglers": [{"clients": "*", "compute": 2}]}
    with pytest.raises(ConfigError, match=rf"^{path}:faults: strategy centralized pools"):
        prepare_run(parse_scenario(raw, path))
