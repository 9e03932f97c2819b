"""One key language: ``--set`` and ``whatif --vary`` take the same dotted scenario paths."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from p2pgan.cli import main
from p2pgan.config import load_scenario
from p2pgan.config.keys import KeySpace, parse_assignment, split_top_level
from p2pgan.config.loader import read_scenario
from p2pgan.errors import ConfigError
from p2pgan.run.latency import scenario_topology
from p2pgan.topology.profiles import default_topology_path, load_topology


@pytest.fixture
def small(tmp_path):
    """Two domains, 3 clients each, a fixed all-offload plan on the packaged paper-edge topology."""
    path = tmp_path / "s.yaml"
    path.write_text("name: keys\ndomains: {mnist: 3, fashion-mnist: 3}\nmodel: {width: 0.25, z_dim: 16}\n"
                    "training: {batch_size: 32}\ncuts: all-offload\nmetrics: {enabled: false}\n")
    return path


def whatif(tmp_path, path, *argv):
    out = tmp_path / f"wi{len(list(tmp_path.glob('wi*')))}"
    assert main(["whatif", str(path), "--out", str(out), *argv]) == 0
    return list(csv.DictReader((out / "whatif.csv").open()))


def sim(rows):
    return [float(r["sim_s_per_iter"]) for r in rows]


def test_set_and_vary_take_the_same_keys_with_the_same_effect(tmp_path, small, capsys):
    # A scenario key, its alias, and the same key through --set: one price.
    by_vary = whatif(tmp_path, small, "--vary", "training.batch_size=16")
    by_alias = whatif(tmp_path, small, "--vary", "batch_size=16")
    by_set = whatif(tmp_path, small, "--set", "training.batch_size=16", "--vary", "seed=0")
    by_set_alias = whatif(tmp_path, small, "--set", "batch_size=16", "--vary", "seed=0")
    assert sim(by_vary) == sim(by_alias) == sim(by_set) == sim(by_set_alias)
    assert by_vary[0]["batch_size"] == "16"
    assert sim(whatif(tmp_path, small, "--vary", "training.batch_size=64")) != sim(by_vary)  # the key acts
    # A topology key: dotted under topology., bare, or with a wildcard that covers that link.
    slow = "1e6"
    rows = [whatif(tmp_path, small, "--vary", f"topology.links.device1.up_bps={slow}"),
            whatif(tmp_path, small, "--vary", f"links.device1.up_bps={slow}"),
            whatif(tmp_path, small, "--set", f"topology.links.device1.up_bps={slow}", "--vary", "seed=0"),
            whatif(tmp_path, small, "--set", f"links.device1.up_bps={slow}", "--vary", "seed=0")]
    assert len({tuple(sim(r)) for r in rows}) == 1
    assert sim(rows[0]) > sim(whatif(tmp_path, small, "--vary", "seed=0"))
    # A grid over both kinds at once: every combination, the varied values shown as written.
    grid = whatif(tmp_path, small, "--vary", "clients=6,60", "--vary", "topology.links.*.up_bps=50 Mbit/s,1 Gbit/s")
    assert [(r["clients"], r["topology.links.*.up_bps"]) for r in grid] == [
        ("6", "50 Mbit/s"), ("6", "1 Gbit/s"), ("60", "50 Mbit/s"), ("60", "1 Gbit/s")]
    by = {(r["clients"], r["topology.links.*.up_bps"]): float(r["sim_s_per_iter"]) for r in grid}
    assert by[("6", "50 Mbit/s")] > by[("6", "1 Gbit/s")]
    capsys.readouterr()


def test_set_keys_reach_the_scenario_and_the_topology_a_run_prices_on(small):
    scenario = load_scenario(small, ["training.batch_size=16", "topology.links.device1.up_bps=1e6",
                                     "server.clock_hz=1 GHz"])
    assert scenario.training.batch_size == 16
    assert scenario.topology_overrides == {"links.device1.up_bps": 1e6, "server.clock_hz": "1 GHz"}
    topology = scenario_topology(SimpleNamespace(scenario=scenario))  # what the latency extension prices on
    assert topology.profile_links["device1"].up_bps == 1e6 and topology.server.clock_hz == 1e9
    assert topology.profile_links["device2"].up_bps == load_topology(default_topology_path()).profile_links["device2"].up_bps


def test_wildcards_expand_against_the_scenario_and_the_topology(small):
    scenario = load_scenario(small, ["domains.*=2", "topology.links.*.latency_s=0.005"])
    assert scenario.domains == {"mnist": 2, "fashion-mnist": 2}
    assert set(scenario.topology_overrides) == {f"links.device{i}.latency_s" for i in range(1, 8)}
    assert load_scenario(small, ["training.*=16"]).training.batch_size == 16  # what the file writes
    with pytest.raises(ConfigError, match=r"'\*' matched nothing under partition"):
        load_scenario(small, ["partition.*=iid"])  # the file writes no partition keys

def test_aliases(small):
    assert load_scenario(small, ["clients=7"]).domains == {"mnist": 4, "fashion-mnist": 3}
    assert load_scenario(small, ["batch_size=8"]).training.batch_size == 8
    assert load_scenario(small, ["cuts=0110"]).cuts.fixed == (0, 1, 1, 0)
    assert load_scenario(small, ["cuts=[1,1,1,1]"]).cuts.fixed == (1, 1, 1, 1)
    assert load_scenario(small, ["cuts=mixed"]).cuts.policy == "mixed"
    searched = load_scenario(small, [f"topology={default_topology_path()}", "cuts=exact"]).cuts
    assert searched.search == "exact" and searched.policy is None
    # Setting one way of cuts: drops the others (exactly one is allowed).
    assert load_scenario(small, ["cuts.fixed=[0,0,1,1]"]).cuts.policy is None
    with pytest.raises(ConfigError, match="at least one per domain"):
        load_scenario(small, ["clients=1"])


@pytest.mark.parametrize("key, near", [
    ("training.batchsize", "did you mean training.batch_size"),
    ("batchsize", "did you mean batch_size"),
    ("links.device1.upbps", "did you mean topology.links.device1.up_bps"),
    ("topology.server.clock", "did you mean topology.server.clock_hz"),
])
def test_an_unknown_key_lists_the_valid_keys_near_it(small, key, near):
    with pytest.raises(ConfigError) as caught:
        load_scenario(small, [f"{key}=1"])
    message = str(caught.value)
    assert near in message and "valid under" in message and "\n" not in message


def test_whatif_errors_and_help_name_the_keys(tmp_path, small, capsys):
    code = main(["whatif", str(small), "--out", str(tmp_path / "wi"), "--vary", "training.batchsize=16,32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "training.batch_size" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["whatif", "--help"])
    text = capsys.readouterr().out
    for word in ("training.batch_size", "domains.mnist", "topology.links.device1.up_bps", "links.*.up_bps",
                 "clients=N", "cuts=PLAN", "--list-keys"):
        assert word in text, word
    assert main(["whatif", str(small), "--list-keys"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"training.batch_size", "domains.mnist", "clients", "topology.links.device1.up_bps",
            "topology.links.*.up_bps", "strategy.name"} <= set(listed)


def test_values_parse_the_same_for_set_and_vary():
    one = parse_assignment("training.lr=1e-4")
    many = parse_assignment("training.lr=1e-4,2e-4", "--vary", many=True)
    assert one.values == (1e-4,) and many.values == (1e-4, 2e-4)
    assert parse_assignment("cuts=0110,[1,1,1,1]", "--vary", many=True).texts == ("0110", "[1,1,1,1]")
    assert split_top_level("a,[1,2],{x: 1, y: 2},'p,q'") == ["a", "[1,2]", "{x: 1, y: 2}", "'p,q'"]
    with pytest.raises(ConfigError, match="override must look like"):
        parse_assignment("training.rounds")


def test_valid_keys_follow_the_schema_not_only_the_file(small):
    keys = KeySpace(read_scenario(small), str(small)).valid_keys()
    assert "training.rounds" in keys  # a default the file does not write
    assert "metrics.score_samples" in keys and "transport.kind" in keys
    assert load_scenario(small, ["training.rounds=2"]).training.rounds == 2
