"""Validation at the edge: every class of bad input is one line naming file and key, exit 2.

Each class is covered in several forms (issue 11, item 5): non-finite numbers, repeated keys,
files that are not UTF-8 or not small, deep nesting, alias bombs, seeds and ports out of range,
booleans where numbers go, unsafe names, data roots that do not exist, more clusters than
clients, output paths that are files or cannot be created. Most go through
``p2pgan.cli.main(["scenario", "validate", ...])``; one real subprocess checks the console script.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time


import numpy as np
import pytest
import torch
from sklearn.utils import check_random_state

from p2pgan.cli import main
from p2pgan.config.loader import check_duration, check_output_path, parse_scenario
from p2pgan.config.schema import SEED_MAX
from p2pgan.config.yamlfile import MAX_DEPTH, parse_yaml
from p2pgan.errors import ClusterError, ConfigError, DataError, P2PGanError, PeerError

GOOD = """\
name: t
seed: 1
domains: {mnist: 2}
training: {rounds: 1, batch_size: 8}
cuts: [0, 0, 0, 0]
"""


def _laughs(levels: int = 9) -> str:
    """The classic billion-laughs document: 9 aliases of 9 aliases of ... (9**levels values)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _block_nesting(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1\n"


# name -> (file text, extra CLI args, expected "key" (the text between "file:" and ": "), words in the problem)
CASES: dict[str, tuple[str, list[str], str, str]] = {
    # non-finite numbers, in any float field and in any spelling YAML reads as a float
    "lr-inf": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: .inf"), [], "training.lr", "not a finite number"),
    "lr-minus-inf": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: -.Inf"), [], "training.lr", "finite"),
    "lr-overflows-to-inf": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: 1.0e+999"), [], "training.lr", "finite"),
    "lr-overflows-no-dot": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: 1e999"), [], "training.lr", "finite"),
    "override-overflows": (GOOD, ["--set", "transport.timeout_s=-2E+400"], "transport.timeout_s", "finite"),
    "beta-nan": (GOOD.replace("batch_size: 8", "batch_size: 8, betas: [0.5, .nan]"), [], "training.betas[1]", "finite"),
    "timeout-inf": (GOOD + "transport: {timeout_s: .inf}\n", [], "transport.timeout_s", "finite"),
    "alpha-inf": (GOOD + "partition: {kind: dirichlet, alpha: .INF}\n", [], "partition.alpha", "finite"),
    "width-nan": (GOOD + "model: {width: .NaN}\n", [], "model.width", "finite"),
    "strategy-option-inf": (GOOD + "strategy: {name: huscf, kld_alpha: .inf}\n", [], "strategy.kld_alpha", "finite"),
    "message-size-nan": (GOOD + "transport: {max_message_mb: .nan}\n", [], "transport.max_message_mb", "finite"),
    "override-inf": (GOOD, ["--set", "training.lr=.inf"], "training.lr", "finite"),
    "override-nan-text": (GOOD, ["--set", "training.lr=nan"], "training.lr", "valid number"),
    "override-list-inf": (GOOD, ["--set", "training.betas=[0.5, -.inf]"], "training.betas[1]", "finite"),
    # repeated keys, at any depth, in block and flow style, in overrides
    "dup-top": (GOOD + "seed: 2\n", [], "seed", "duplicate key at line 6 (first at line 2"),
    "dup-nested-flow": (GOOD.replace("batch_size: 8", "batch_size: 8, rounds: 2"), [], "training.rounds", "duplicate key"),
    "dup-nested-block": (GOOD.replace("training: {rounds: 1, batch_size: 8}",
                                      "training:\n  rounds: 1\n  batch_size: 8\n  rounds: 3"),
                         [], "training.rounds", "duplicate key at line 7 (first at line 5"),
    "dup-domain": (GOOD.replace("{mnist: 2}", "{mnist: 2, kmnist: 1, mnist: 3}"), [], "domains.mnist", "duplicate key"),
    "dup-section": (GOOD + "training: {rounds: 2}\n", [], "training", "duplicate key"),
    "dup-in-override": (GOOD, ["--set", "training={rounds: 1, rounds: 2}"], "training.rounds", "duplicate key"),
    # deep nesting: bounded, never a RecursionError
    "deep-flow-lists": ("name: t\nx: " + "[" * 5000 + "]" * 5000 + "\n", [], "line 2", "nested deeper"),
    "deep-flow-unclosed": ("name: t\nx: " + "[" * 200_000 + "\n", [], "line 2", "nested deeper"),
    "deep-flow-maps": ("x: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", [], "line 1", "nested deeper"),
    "deep-block": (_block_nesting(300), [], f"line {MAX_DEPTH}", "nested deeper"),
    "deep-override": (GOOD, ["--set", "training.lr=" + "[" * 3000 + "]" * 3000], "training.lr", "nested deeper"),
    # aliases: bombs refused, cycles refused
    "billion-laughs": (_laughs(9), [], "line", "expands to more than"),
    "laughs-deep-via-aliases": ("".join(f"a{i}: &a{i} [{'*a' + str(i - 1) if i else 1}]\n" for i in range(200)),
                                [], "line", "nested deeper"),
    "alias-cycle": (GOOD + "x: &a [1, *a]\n", [], "line 6", "cycle"),
    "laughs-in-override": (GOOD, ["--set", "training.betas=" + _laughs(8).replace("\n", ", ").join("{}")],
                           "training.betas", "expands to more than"),
    # seeds: an int every consumer takes (0 .. 2**32-1, the range of scikit-learn's KMeans)
    "seed-2^63": (GOOD.replace("seed: 1", "seed: 9223372036854775808"), [], "seed", "less than or equal to 4294967295"),
    "seed-2^32": (GOOD.replace("seed: 1", "seed: 4294967296"), [], "seed", "less than or equal"),
    "seed-hex-over": (GOOD.replace("seed: 1", "seed: 0x100000000"), [], "seed", "less than or equal"),
    "seed-negative": (GOOD.replace("seed: 1", "seed: -1"), [], "seed", "greater than or equal to 0"),
    "seed-yes": (GOOD.replace("seed: 1", "seed: yes"), [], "seed", "booleans"),
    "seed-fraction": (GOOD.replace("seed: 1", "seed: 1.5"), [], "seed", "valid integer"),
    "seed-text": (GOOD.replace("seed: 1", "seed: '7'"), [], "seed", "valid integer"),
    "seed-override-huge": (GOOD, ["--set", f"seed={2**64}"], "seed", "less than or equal"),
    # booleans and text where numbers go (strict numbers)
    "rounds-yes": (GOOD.replace("rounds: 1", "rounds: yes"), [], "training.rounds", "booleans"),
    "batch-float": (GOOD.replace("batch_size: 8", "batch_size: 8.0"), [], "training.batch_size", "valid integer"),
    "lr-text": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: '0.1'"), [], "training.lr", "valid number"),
    "lr-on": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: on"), [], "training.lr", "booleans"),
    "clients-yes": (GOOD.replace("mnist: 2", "mnist: yes"), [], "domains", "whole number of clients, got True"),
    "clients-float": (GOOD.replace("mnist: 2", "mnist: 2.5"), [], "domains", "whole number of clients"),
    "cut-true": (GOOD.replace("[0, 0, 0, 0]", "[yes, 0, 0, 0]"), [], "cuts.fixed", "booleans"),
    "beta-no": (GOOD.replace("batch_size: 8", "batch_size: 8, betas: [no, 0.5]"), [], "training.betas", "booleans"),
    "port-true": (GOOD + "transport: {port: true}\n", [], "transport.port", "booleans"),
    # ports: the server and every client listen on port .. port + clients
    "port-range-overflow": (GOOD + "transport: {kind: http, port: 65535}\n", [], "transport.port", "up to 65537"),
    "port-range-one-over": (GOOD.replace("mnist: 2", "mnist: 3") + "transport: {port: 65533}\n", [],
                            "transport.port", "base port <= 65532"),
    "port-too-big": (GOOD + "transport: {port: 70000}\n", [], "transport.port", "less than or equal to 65535"),
    "port-negative": (GOOD + "transport: {port: -1}\n", [], "transport.port", "greater than or equal to 0"),
    "port-override": (GOOD, ["--set", "transport.port=65534"], "transport.port", "65536"),
    # unsafe names: the name becomes runs/<name>
    "name-dotdot": (GOOD.replace("name: t", "name: '..'"), [], "name", "must not be '..'"),
    "name-dot": (GOOD.replace("name: t", "name: ."), [], "name", "must not be '.'"),
    "name-dots": (GOOD.replace("name: t", "name: '...'"), [], "name", "must not be"),
    "name-dash": (GOOD.replace("name: t", "name: -rf"), [], "name", "start with '-'"),
    "name-slash": (GOOD.replace("name: t", "name: a/b"), [], "name", "path separator"),
    "name-backslash": (GOOD.replace("name: t", "name: 'a\\b'"), [], "name", "path separator"),
    "name-newline": (GOOD.replace("name: t", 'name: "a\\nb"'), [], "name", "control characters"),
    "name-escape": (GOOD.replace("name: t", 'name: "run\\e[31m"'), [], "name", "control characters"),
    "name-nul": (GOOD.replace("name: t", 'name: "a\\0b"'), [], "name", "control characters"),
    "name-blank": (GOOD.replace("name: t", "name: '  '"), [], "name", "must not be empty"),
    "name-empty": (GOOD.replace("name: t", "name: ''"), [], "name", "must not be empty"),
    "name-padded": (GOOD.replace("name: t", "name: ' t'"), [], "name", "whitespace"),
    "name-long": (GOOD.replace("name: t", "name: " + "n" * 300), [], "name", "at most 100 characters"),
    "name-override": (GOOD, ["--set", "name=.."], "name", "must not be '..'"),
    # more clusters than clients
    "clusters-over": (GOOD + "strategy: {name: huscf, clusters: 3}\n", [], "strategy.clusters", "3 clusters for 2 clients"),
    "clusters-override": (GOOD, ["--set", "strategy.clusters=9"], "strategy.clusters", "9 clusters for 2 clients"),
    # out-of-range sizes that would only fail (or hang) at run time
    "timeout-huge": (GOOD + "transport: {timeout_s: 1.0e+300}\n", [], "transport.timeout_s", "less than or equal"),
    "zdim-huge": (GOOD + "model: {z_dim: 100000000}\n", [], "model.z_dim", "less than or equal"),
    "clients-huge": (GOOD.replace("mnist: 2", "mnist: 1000000"), [], "domains", "at most 10000"),
}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_file_and_key(case, tmp_path, capsys):
    text, extra, key, words = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    code = main(["scenario", "validate", str(path), *extra])
    line = _one_line(capsys)
    assert code == 2, line
    assert time.perf_counter() - started < 10, "validation must not hang"
    assert f"{path}:{key}" in line, line
    assert words in line, line


# -- files that are not (small) UTF-8 text ---------------------------------------------------------

BINARY_CASES = {
    "latin-1": (b"name: caf\xe9\n", "line 1", "not UTF-8 text (byte 0xe9"),
    "latin-1-later-line": (GOOD.encode() + b"# \xff\xfe comment\n", "line 6", "not UTF-8"),
    "utf-16": ("name: t\n".encode("utf-16"), "line 1", "not UTF-8"),
    "truncated-utf8": (b"name: \xe2\x82\n", "line 1", "not UTF-8"),
    "random-bytes": (bytes(range(128, 256)) * 4, "line 1", "not UTF-8"),
    "control-chars": (b"name: t\n# bell \x07\n", "line 2", "character #x0007 is not allowed"),
    "too-large": (b"# " + b"x" * (5 * 1024 * 1024) + b"\n", "", "larger than 4 MiB"),
    "empty": (b"", "", "expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
def test_unreadable_files_are_one_line(case, tmp_path, capsys):
    data, key, words = BINARY_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    assert main(["scenario", "validate", str(path)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"p2pgan: error: {path}:{key}" if key else f"p2pgan: error: {path}"), line
    assert words in line, line


def test_a_folder_or_an_endless_device_is_not_read_forever(tmp_path, capsys):
    assert main(["scenario", "validate", str(tmp_path)]) == 2
    assert "cannot read scenario file" in _one_line(capsys)
    started = time.perf_counter()
    assert main(["scenario", "validate", "/dev/zero"]) == 2  # reads at most 4 MiB, then refuses
    assert "larger than" in _one_line(capsys)
    assert time.perf_counter() - started < 10


# -- paths the run would need: data roots that exist, outputs that can be written -------------------

def test_data_root_must_exist(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    (tmp_path / "afile").write_text("x")
    for root, words in (("missing", f"folder not found: {tmp_path / 'missing'}"), ("/no/such/dir", "folder not found"),
                        ("afile", "is a file (expected a folder)")):
        path.write_text(GOOD + f"data: {{root: {root}}}\n")
        assert main(["scenario", "validate", str(path)]) == 2
        line = _one_line(capsys)
        assert f"{path}:data.root: " in line and words in line, line
    path.write_text(GOOD)
    assert main(["scenario", "validate", str(path), "--set", f"data.root={tmp_path / 'gone'}"]) == 2
    assert f"{path}:data.root: folder not found" in _one_line(capsys)
    (tmp_path / "data").mkdir()
    path.write_text(GOOD + "data: {root: data}\n")  # relative to the scenario file
    assert main(["scenario", "validate", str(path)]) == 0


def test_output_paths_that_are_files_or_cannot_be_created(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    cases = [
        (f"output: {{dir: {blocker}}}\n", [], "output.dir", "is a file (expected a folder)"),
        (f"output: {{dir: {blocker / 'sub' / 'run'}}}\n", [], "output.dir", "is a file, not a folder"),
        (f"metrics: {{cache_dir: {blocker}}}\n", [], "metrics.cache_dir", "is a file"),
        ("", ["--set", f"output.dir={blocker}/x"], "output.dir", "cannot create"),
        ("", ["--set", "output.dir=" + "d" * 300], "output.dir", "unusable path"),
    ]
    for extra_text, extra_args, key, words in cases:
        path.write_text(GOOD + extra_text)
        assert main(["scenario", "validate", str(path), *extra_args]) == 2
        line = _one_line(capsys)
        assert f"{path}:{key}: " in line and words in line, line
    # ``run --out`` goes through the same check before any training starts
    path.write_text(GOOD)
    assert main(["scenario", "run", str(path), "--out", str(blocker), "--no-live"]) == 2
    assert f"{path}:output.dir: " in _one_line(capsys)


def test_check_output_path_for_files_and_flags(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert check_output_path(tmp_path / "new" / "cuts.json", "--json", source="cuts", kind="file")
    assert check_output_path(blocker, "--json", source="cuts", kind="file") == blocker  # overwritable
    for path, kind, words in ((folder, "file", "is a folder"), (blocker, "folder", "is a file"),
                              (blocker / "x.json", "file", "is a file, not a folder"),
                              (tmp_path / "a\0b", "folder", "unusable path")):
        with pytest.raises(ConfigError) as caught:
            check_output_path(path, "--out", source="compare", kind=kind)
        assert str(caught.value).startswith("compare:--out: ") and words in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        check_output_path(link, "--out", source="whatif")


# -- flags --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 1e7])
def test_durations_must_be_finite_and_bounded(value):
    with pytest.raises(ConfigError) as caught:
        check_duration(value, "--wait-s", source="node serve")
    assert str(caught.value).startswith("node serve:--wait-s: expected a finite number of seconds")


def test_durations_in_range_pass():
    assert check_duration(0.0, "--wait-s", source="node serve") == 0.0
    assert check_duration(300.0, "--wait-s", source="node serve") == 300.0
    with pytest.raises(ConfigError):
        check_duration(0.0, "--timeout", source="x", allow_zero=False)


# -- what must still pass -----------------------------------------------------------------------

def test_edges_of_the_ranges_are_accepted(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD.replace("seed: 1", f"seed: {2**32 - 1}").replace("name: t", "name: .hidden-run_1")
                    + "transport: {port: 65533, timeout_s: 5}\nmodel: {width: 1}\n"
                    + "strategy: {name: huscf, clusters: 2}\n")
    assert main(["scenario", "validate", str(path)]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out


def test_exponents_without_a_dot_are_numbers(tmp_path, capsys):
    """YAML 1.1 reads ``1e-3`` as a string; the strict float fields must still take it."""
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD.replace("batch_size: 8", "batch_size: 8, lr: 1e-3") + "transport: {timeout_s: 3E2}\n")
    assert main(["scenario", "validate", str(path), "--set", "training.betas=[5e-1, 9.99E-1]"]) == 0, \
        capsys.readouterr().err
    assert parse_yaml("a: 1e-3\nb: -2E5\nc: .5e1\nd: '1e3'\ne: 1e\n", "t.yaml") == \
        {"a": 1e-3, "b": -2e5, "c": 5.0, "d": "1e3", "e": "1e"}


def test_shipped_scenarios_still_validate(repo_root, capsys):
    for path in sorted((repo_root / "scenarios").rglob("*.yaml")):
        assert main(["scenario", "validate", str(path)]) == 0, capsys.readouterr().err


def test_yaml_merges_and_small_aliases_are_not_duplicates():
    data = parse_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, x: 3}\nlist: [*b, *b]\n", "t.yaml")
    assert data["use"] == {"x": 3, "y": 2} and data["list"] == [{"x": 1, "y": 2}] * 2


def test_repeated_keys_name_the_path_inside_lists():
    with pytest.raises(ConfigError) as caught:
        parse_yaml("links:\n  - {up: 1, up: 2}\n", "topo.yaml")
    assert str(caught.value).startswith("topo.yaml:links[0].up: duplicate key")


def test_a_key_with_a_line_break_stays_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("{mnist: 2}", '{"mn\\nist": 2}'))
    assert main(["scenario", "validate", str(path)]) == 2
    assert "unknown domain 'mn\\nist'" in _one_line(capsys)


def test_non_finite_numbers_from_json_snapshots_are_refused_too(tmp_path):
    """config.json (resume, node processes) is JSON, which can spell Infinity and NaN."""
    raw = json.loads('{"name": "t", "domains": {"mnist": 2}, "training": {"lr": Infinity}}')
    with pytest.raises(ConfigError) as caught:
        parse_scenario(raw, tmp_path / "config.json")
    assert str(caught.value).startswith(f"{tmp_path / 'config.json'}:training.lr: Input should be a finite number")
    raw = json.loads('{"name": "t", "domains": {"mnist": 2}, "transport": {"timeout_s": NaN}}')
    with pytest.raises(ConfigError, match="transport.timeout_s: Input should be a finite number"):
        parse_scenario(raw, tmp_path / "config.json")


def test_the_seed_range_suits_every_consumer():
    torch.Generator().manual_seed(SEED_MAX)
    with torch.random.fork_rng(devices=[]):  # build_initial_blocks seeds the global generator this way
        torch.manual_seed(SEED_MAX)
    np.random.default_rng(SEED_MAX)
    check_random_state(SEED_MAX)  # KMeans' random_state, the narrowest consumer
    with pytest.raises(ValueError):
        check_random_state(SEED_MAX + 1)


def test_exit_codes_follow_the_table():
    assert ConfigError("f", "k", "p").exit_code == 2
    assert DataError("missing").exit_code == 2
    assert P2PGanError("bad input").exit_code == 2
    assert PeerError("c001", "gone").exit_code == 3
    assert ClusterError("a node process died").exit_code == 3
    assert str(PeerError("c\n001", "went\naway")) == "peer c\\n001: went\\naway"


def test_console_script_prints_no_traceback_for_deep_nesting(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: t\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "p2pgan", "scenario", "validate", str(path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"p2pgan: error: {path}:line 2: nested deeper than {MAX_DEPTH} levels"]


def test_validate_reads_the_topology_contents(tmp_path, capsys):
    from p2pgan.cli import main

    topology = tmp_path / "t.yaml"
    topology.write_text("name: broken\nprofiles: {device1: {clock_hz: -5}}\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\ndomains: {{mnist: 2}}\ntopology: {topology}\n")
    assert main(["scenario", "validate", str(scenario)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.yaml" in err[0]
