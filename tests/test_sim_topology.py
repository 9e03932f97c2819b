"""Topology files: shipped ones load, units are explicit and checked, assignment is deterministic."""

from __future__ import annotations

import pytest
import yaml

from p2pgan.errors import ConfigError
from p2pgan.topology.profiles import SERVER_PROFILE, load_topology, topology_from_mapping
from p2pgan.topology.units import parse_quantity

SHIPPED = ("paper-edge", "paper-edge-nic", "edge-cloud")


def minimal(**changes):
    raw = {
        "name": "t",
        "profiles": {"a": {"clock_hz": 1e9, "flops_per_cycle": 2, "link": "l"}},
        "server": {"clock_hz": 4e9, "flops_per_cycle": 8},
        "links": {"l": {"up_bps": 1e6, "down_bps": 2e6, "latency_s": 0.01}},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_topologies_load(repo_root, name):
    topo = load_topology(repo_root / "topologies" / f"{name}.yaml")
    assert topo.name == name
    assignment = topo.assign_profiles([f"c{i:03d}" for i in range(20)])
    assert assignment["server"] == SERVER_PROFILE
    assert set(assignment.values()) - {SERVER_PROFILE} <= set(topo.profiles)


def test_paper_edge_has_the_reference_profiles(repo_root):
    topo = load_topology(repo_root / "topologies" / "paper-edge.yaml")
    table = {  # docs/design.md §1.2: MHz, FLOPs/cycle, bit/s
        "device1": (480, 1, 50e6), "device2": (6000, 8, 150e6), "device3": (15600, 8, 1e9),
        "device4": (5720, 8, 300e6), "device5": (4000, 4, 50e6), "device6": (9000, 4, 100e6),
        "device7": (12000, 10, 800e6),
    }
    assert list(topo.profiles) == list(table)
    for name, (mhz, fpc, bps) in table.items():
        profile, link = topo.profiles[name], topo.profile_links[name]
        assert profile.clock_hz == mhz * 1e6 and profile.flops_per_cycle == fpc and profile.cores == 1
        assert link.up_bps == bps and link.down_bps == bps
    assert topo.server.flops_per_s == 42e9 * 16
    assert not topo.has_shared_capacity
    ids = [f"c{i:03d}" for i in range(80)]
    assignment = topo.assign_profiles(ids)
    assert [assignment[c] for c in ids[:8]] == [*table, "device1"]  # round-robin


def test_units_in_strings_are_converted_and_checked():
    assert parse_quantity("480 MHz", "frequency") == 480e6
    assert parse_quantity("50 Mbit/s", "bitrate") == 50e6
    assert parse_quantity("1 MB/s", "bitrate") == 8e6
    assert parse_quantity("5 ms", "time") == pytest.approx(0.005)
    assert parse_quantity("480e6", "frequency") == 480e6  # YAML 1.1 reads this as a string
    with pytest.raises(ValueError, match="not a bitrate unit"):
        parse_quantity("5 ms", "bitrate")


@pytest.mark.parametrize("mutate, key, words", [
    (lambda r: r["profiles"]["a"].update(clock_hz=-1), "profiles.a.clock_hz", "greater than 0"),
    (lambda r: r["profiles"]["a"].update(clock_hz="3 Mbit/s"), "profiles.a.clock_hz", "not a frequency unit"),
    (lambda r: r["links"]["l"].update(up_bps=0), "links.l.up_bps", "greater than 0"),
    (lambda r: r["links"]["l"].update(latency_s=-0.1), "links.l.latency_s", "greater than or equal to 0"),
    (lambda r: r["profiles"]["a"].update(link="nope"), "profiles.a.link", "unknown link 'nope'"),
    (lambda r: r["profiles"]["a"].update(speed=3), "profiles.a.speed", "unknown key"),
    (lambda r: r["links"]["l"].update(via=["nic"]), "links.l.via", "unknown shared segment"),
    (lambda r: r.update(assignment={"mode": "round-robin", "profiles": ["b"]}), "assignment.profiles",
     "unknown profile 'b'"),
    (lambda r: r.update(assignment={"mode": "weighted", "weights": {"a": 0}}), "assignment.weights", "positive sum"),
    (lambda r: r["profiles"].update(server=r["profiles"]["a"]), "profiles.server", "reserved"),
])
def test_bad_values_fail_with_one_line_naming_the_key(tmp_path, mutate, key, words):
    raw = minimal()
    mutate(raw)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{key}: "), message
    assert words in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_topology(bad)


def test_assignment_modes():
    ids = [f"c{i}" for i in range(10)]
    two = {"a": {"clock_hz": 1e9, "flops_per_cycle": 1, "link": "l"},
           "b": {"clock_hz": 2e9, "flops_per_cycle": 1, "link": "l"}}
    explicit = topology_from_mapping(minimal(profiles=two, assignment={
        "mode": "explicit", "clients": {"c1": "b"}, "default": "a"}))
    out = explicit.assign_profiles(ids)
    assert out["c1"] == "b" and all(out[c] == "a" for c in ids if c != "c1")

    strict = topology_from_mapping(minimal(profiles=two, assignment={"mode": "explicit", "clients": {"c1": "b"}}))
    with pytest.raises(ConfigError, match="no profile for client 'c0'"):
        strict.assign_profiles(ids)

    weighted = topology_from_mapping(minimal(profiles=two, assignment={
        "mode": "weighted", "weights": {"a": 1, "b": 3}, "seed": 5}))
    first, second = weighted.assign_profiles(ids), weighted.assign_profiles(ids)
    assert first == second and {"a", "b"} <= set(first.values())
    other_seed = topology_from_mapping(minimal(profiles=two, assignment={
        "mode": "weighted", "weights": {"a": 1, "b": 3}, "seed": 6}))
    many = [f"c{i}" for i in range(200)]
    assert weighted.assign_profiles(many) != other_seed.assign_profiles(many)


def test_paths_and_variants(repo_root):
    topo = load_topology(repo_root / "topologies" / "edge-cloud.yaml")
    up = topo.path("c007", "a-phone", "up")
    assert [h.resource for h in up] == ["c007:up", "shared:site-a:up", "shared:cloud-nic:up"]
    down = topo.path("c007", "a-phone", "down")
    assert [h.resource for h in down] == ["shared:cloud-nic:down", "shared:site-a:down", "c007:down"]
    assert topo.has_shared_capacity

    faster = topo.replaced({"links.*.up_bps": "1 Gbit/s", "server.clock_hz": 2e9})
    assert all(link.up_bps == 1e9 for link in faster.profile_links.values())
    assert faster.server.clock_hz == 2e9
    assert topo.server.clock_hz == 1.4e9  # the original is untouched
    with pytest.raises(ConfigError):
        topo.replaced({"server.clock_hz": -3})
