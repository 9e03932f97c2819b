"""Validation at the edge, continued (issue 11, items 3 and 5): what only the data, the topology
or an output flag can settle, a run's config.json run again, and crashes recorded as failures.

Each class in several forms: topology contents (booleans, text and huge counts, out-of-range
seeds, bad ``topology.<key>`` overrides with no topology file), partitions the data cannot give,
a batch larger than a client's data (reported the same way by ``validate`` and ``run``), output
flags that are files, under files, hold a NUL byte or are too long (``whatif --out``, ``cuts
--json``, ``privacy --out``, ``compare --out``, ``results compare --out``, ``run --out``), GA and
thread counts out of range, peer tables and leakage tables that are not UTF-8 or repeat a key.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from p2pgan.cli import main
from p2pgan.commands.scenario import scenario_overrides
from p2pgan.config import load_scenario
from p2pgan.engine.client import BatchSampler
from p2pgan.errors import ConfigError
from p2pgan.plan.checks import batch_note, client_sizes, clients_below_batch
from p2pgan.run.processes import load_peer_table
from p2pgan.run.results import jsonable

TINY = """\
name: t
seed: 1
domains: {mnist: 2}
model: {width: 0.125, z_dim: 8}
training: {rounds: 1, batch_size: 8, max_batches_per_epoch: 1}
cuts: [0, 0, 0, 0]
metrics: {enabled: false}
"""


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _scenario(tmp_path: Path, text: str = TINY, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- a run's config.json is a scenario again --------------------------------------------------------

def _shipped(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "scenarios").rglob("*.yaml"))


def test_a_resolved_config_loads_as_the_same_scenario_from_anywhere(repo_root, tmp_path, capsys):
    """config.json is ``jsonable(scenario)``: read back from another folder, every path must
    still point where it did (data, datasets, topology, output, caches)."""
    topo = tmp_path / "in" / "topo.yaml"
    topo.parent.mkdir()
    shutil.copy(repo_root / "topologies" / "paper-edge.yaml", topo)
    (tmp_path / "in" / "data").mkdir()
    text = (TINY.replace("cuts: [0, 0, 0, 0]", "cuts: {search: exact}")
            .replace("metrics: {enabled: false}", "metrics: {enabled: false, cache_dir: cache}"))
    extra = _scenario(tmp_path / "in", text + "topology: topo.yaml\ndata: {root: data}\noutput: {dir: out}\n"
                      + "strategy: {name: huscf, kld_alpha: 0.5}\n")
    for path in [*_shipped(repo_root), extra]:
        scenario = load_scenario(path, ["topology.server.clock_hz=21e9"])
        config = tmp_path / "elsewhere" / path.stem / "config.json"
        config.parent.mkdir(parents=True)
        config.write_text(json.dumps(jsonable(scenario)), encoding="utf-8")
        again = load_scenario(config)
        assert again.source == config
        assert dataclasses.replace(again, source=None) == dataclasses.replace(scenario, source=None), path
        assert main(["scenario", "validate", str(config)]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_a_run_config_runs_again_with_the_same_results(tmp_path, capsys):
    def record(folder: Path) -> tuple[list, dict[str, bytes]]:
        rounds = [json.loads(line)["client_losses"] for line in (folder / "rounds.jsonl").read_text().splitlines()]
        return rounds, {p.name: p.read_bytes() for p in sorted((folder / "weights").iterdir())}

    path = _scenario(tmp_path, TINY + "checkpoint: {enabled: false}\n")
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["scenario", "run", str(path), "--out", str(first), "--no-live"]) == 0
    expected = record(first)
    assert main(["scenario", "run", str(first / "config.json"), "--out", str(second), "--no-live"]) == 0
    assert record(second) == expected
    assert json.loads((second / "config.json").read_text())["source"] == str(first / "config.json")
    # Into its own folder: refused as any non-empty folder is, then --force clears and repeats it.
    assert main(["scenario", "run", str(second / "config.json"), "--no-live"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["scenario", "run", str(second / "config.json"), "--no-live", "--force"]) == 0
    assert record(second) == expected


def test_source_is_a_record_but_must_be_a_path(tmp_path, capsys):
    assert main(["scenario", "validate", str(_scenario(tmp_path, TINY + "source: /some/where.yaml\n"))]) == 0
    capsys.readouterr()
    for value in ("5", "[a]", "{a: 1}"):
        path = _scenario(tmp_path, TINY + f"source: {value}\n")
        assert main(["scenario", "validate", str(path)]) == 2
        assert f"{path}:source: expected the path of the scenario file" in _one_line(capsys)


def test_strategy_keys_set_on_a_config_join_its_options(tmp_path):
    path = _scenario(tmp_path, TINY + "strategy: {name: huscf, options: {kld_alpha: 0.5}}\n")
    scenario = load_scenario(path, ["strategy.clusters=2"])
    assert scenario.strategy.options == {"kld_alpha": 0.5, "clusters": 2}
    with pytest.raises(ConfigError, match="strategy"):
        load_scenario(_scenario(tmp_path, TINY + "strategy: {name: huscf, options: [1]}\n"))


# -- what the data settles: partitions and batch sizes ----------------------------------------------

def test_the_sampler_fills_a_batch_larger_than_its_data():
    """Why a batch larger than a client's data is reported, not refused: the sampler slices an
    endless stream of fresh permutations, so the batch is full and every example recurs."""
    sampler = BatchSampler(3, 8, torch.Generator().manual_seed(0))
    batch = sampler.next_indices()
    assert batch.numel() == 8 and set(batch.tolist()) == {0, 1, 2}


def test_batch_larger_than_a_client_is_one_note_from_validate_and_run(tmp_path, capsys):
    # non-iid on the offline copies, seed 1: c002 and one other client hold 555 examples, four hold 833
    path = _scenario(tmp_path, TINY.replace("domains: {mnist: 2}", "domains: {mnist: 3, fashion-mnist: 3}")
                     + "partition: {kind: non-iid}\n")
    assert main(["scenario", "validate", str(path), "--set", "batch_size=600"]) == 0
    captured = capsys.readouterr()
    note = captured.err.strip()
    assert note == (f"p2pgan: note: {path}:training.batch_size: 600 is more than client c002 holds "
                    "(555 examples after partitioning; 2 of 6 clients hold less than a batch): their batches "
                    "repeat examples, drawn from successive shuffles of their data (lower training.batch_size, "
                    "or use more data per client)"), note
    assert "555..833 examples per client" in captured.out
    # run says the same before it claims the folder (here refused: it holds another file)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["scenario", "run", str(path), "--set", "batch_size=600", "--out", str(busy), "--no-live"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == note and "is not empty" in lines[1] and len(lines) == 2
    # a batch every client fills, and the one pooled client of the centralized strategy: no note
    for extra in (["--set", "batch_size=555"], ["--set", "batch_size=600", "--set", "strategy.name=centralized"]):
        assert main(["scenario", "validate", str(path), *extra]) == 0
        assert capsys.readouterr().err == ""


def test_batch_note_names_the_smallest_client():
    assert clients_below_batch(10, {"c000": 12, "c001": 4, "c002": 9, "c003": 4}) == {"c001": 4, "c003": 4, "c002": 9}
    assert client_sizes([], pooled=True) == {}

    class Scenario:  # only what the note reads
        source = "s.yaml"
        training = argparse.Namespace(batch_size=8)

    assert batch_note(Scenario(), {"c000": 8}) is None
    assert batch_note(Scenario(), {"c000": 8, "c001": 1}).startswith(
        "s.yaml:training.batch_size: 8 is more than client c001 holds (1 example after partitioning)")


@pytest.mark.parametrize("domains, partition, words", [
    ("{mnist: 6000}", "iid", "per-client cap 5000 // 6000 clients is 0"),
    ("{mnist: 2000}", "highly-non-iid", "rounds to 0 examples"),
])
def test_partitions_the_data_cannot_give_fail_at_validate_and_before_run_claims(tmp_path, capsys, domains,
                                                                                  partition, words):
    path = _scenario(tmp_path, TINY.replace("{mnist: 2}", domains) + f"partition: {{kind: {partition}}}\n")
    assert main(["scenario", "validate", str(path)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"p2pgan: error: {path}:partition: ") and words in line, line
    out = tmp_path / "never"
    assert main(["scenario", "run", str(path), "--out", str(out), "--no-live"]) == 2
    assert _one_line(capsys) == line and not out.exists()


# -- topology contents -------------------------------------------------------------------------------

TOPOLOGY_CASES = {
    "cores-yes": ("cores: 1, link: device1", "cores: yes, link: device1", "profiles.device1.cores", "valid integer"),
    "cores-text": ("cores: 1, link: device1", "cores: '3', link: device1", "profiles.device1.cores", "valid integer"),
    "cores-fraction": ("cores: 1, link: device1", "cores: 2.0, link: device1", "profiles.device1.cores",
                       "valid integer"),
    "cores-huge": ("cores: 1, link: device1", f"cores: {10**400}, link: device1", "profiles.device1.cores",
                   "less than or equal to 1000000"),
    "server-cores-zero": ("  cores: 1\nlinks", "  cores: 0\nlinks", "server.cores", "greater than or equal to 1"),
    "seed-negative": ("mode: round-robin", "mode: round-robin\n  seed: -1", "assignment.seed", "greater than or equal"),
    "seed-huge": ("mode: round-robin", f"mode: round-robin\n  seed: {2**40}", "assignment.seed", "less than or equal"),
    "seed-yes": ("mode: round-robin", "mode: round-robin\n  seed: on", "assignment.seed", "valid integer"),
}


@pytest.mark.parametrize("case", sorted(TOPOLOGY_CASES))
def test_topology_counts_are_strict_whole_numbers(repo_root, tmp_path, capsys, case):
    old, new, key, words = TOPOLOGY_CASES[case]
    text = (repo_root / "topologies" / "paper-edge.yaml").read_text()
    assert old in text
    topology = tmp_path / "topo.yaml"
    topology.write_text(text.replace(old, new, 1))
    path = _scenario(tmp_path, TINY + f"topology: {topology}\n")
    assert main(["scenario", "validate", str(path)]) == 2
    line = _one_line(capsys)
    assert f"{topology}:{key}: " in line and words in line, line


@pytest.mark.parametrize("override, key, words", [
    ("topology.server.cores=yes", "topology.server.cores", "valid integer"),
    ("server.cores=many", "topology.server.cores", "valid integer"),
    ("links.device1.up_bps=nan Mbit/s", "topology.links.device1.up_bps", "expected 50e6"),
    ("topology.links.*.up_bps=-5", "topology.links.device1.up_bps", "greater than 0"),
    ("topology.server=3", "topology.server", "valid dictionary"),
])
def test_topology_overrides_are_checked_without_a_topology_file(tmp_path, capsys, override, key, words):
    """The run prices on the packaged topology then; validate must read it with the overrides, and
    run must refuse before it creates its folder."""
    path = _scenario(tmp_path)
    assert main(["scenario", "validate", str(path), "--set", override]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"p2pgan: error: {path}:{key}: ") and words in line, line
    out = tmp_path / "never"
    assert main(["scenario", "run", str(path), "--set", override, "--out", str(out), "--no-live"]) == 2
    assert _one_line(capsys) == line and not out.exists()


def test_node_serve_checks_the_scenario_like_run_before_it_listens(tmp_path, capsys):
    peers = tmp_path / "peers.yaml"
    peers.write_text("server: http://127.0.0.1:1\nc000: http://127.0.0.1:2\nc001: http://127.0.0.1:3\n")
    assert main(["node", "serve", "--scenario", str(_scenario(tmp_path)), "--node", "server", "--peers", str(peers),
                 "--set", "topology.server.cores=yes", "--wait-s", "1"]) == 2
    assert ":topology.server.cores: Input should be a valid integer, got True" in _one_line(capsys)


def test_the_cohort_engine_refusals_come_at_validate(tmp_path, capsys):
    path = _scenario(tmp_path, TINY + "execution: {engine: cohort}\n")
    assert main(["scenario", "validate", str(path), "--set", "strategy.name=md-gan"]) == 2
    assert f"{path}:execution.engine: the cohort engine runs the split engine's own nodes" in _one_line(capsys)
    if not torch.cuda.is_available():
        out = tmp_path / "never"
        assert main(["scenario", "run", str(path), "--set", "execution.device=cuda", "--out", str(out),
                     "--no-live"]) == 2
        assert f"{path}:execution.device: cuda asked for" in _one_line(capsys) and not out.exists()


def test_cuda_is_refused_in_one_line_where_ray_computes_on_the_cpu(tmp_path, capsys):
    path = _scenario(tmp_path, TINY)
    assert main(["scenario", "validate", str(path), "--set", "execution.engine=ray",
                 "--set", "execution.device=cuda"]) == 2
    line = _one_line(capsys)
    assert f"{path}:execution.device: cuda runs the nodes or the cohort engine" in line and "engine ray" in line, line
    assert main(["scenario", "validate", str(path), "--set", "execution.device=auto"]) == 0  # the CPU here


@pytest.mark.parametrize("engine", ["nodes", "cohort"])
def test_cuda_without_a_gpu_is_refused_at_validate_and_before_a_run_claims_its_folder(engine, tmp_path, capsys,
                                                                                     monkeypatch):
    """Both engines run on a GPU; where none is usable, validate and run say so in one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _scenario(tmp_path, TINY)
    overrides = ["--set", f"execution.engine={engine}", "--set", "execution.device=cuda"]
    assert main(["scenario", "validate", str(path), *overrides]) == 2
    assert f"{path}:execution.device: cuda asked for, but this machine has no usable CUDA device" in _one_line(capsys)
    out = tmp_path / "never"
    assert main(["scenario", "run", str(path), *overrides, "--out", str(out), "--no-live"]) == 2
    assert f"{path}:execution.device: cuda asked for" in _one_line(capsys) and not out.exists()


# -- output flags ---------------------------------------------------------------------------------------

def _output_forms(tmp_path: Path) -> list[tuple[str, Path, str]]:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    return [("file", blocker, "is a file"), ("under-file", blocker / "x", "is a file, not a folder"),
            ("nul", tmp_path / "a\0b", "NUL byte"), ("too-long", tmp_path / ("d" * 300), "unusable path")]


@pytest.mark.parametrize("command, flag, source", [
    (["whatif", "{s}", "--vary", "batch_size=8,16"], "--out", "whatif"),
    (["compare", "{s}", "--strategies", "huscf"], "--out", "compare"),
    (["privacy", "{s}", "--samples", "8"], "--out", "privacy"),
    (["cuts", "{s}"], "--json", "cuts"),
])
def test_output_flags_are_checked_before_any_work(tmp_path, capsys, command, flag, source):
    path = _scenario(tmp_path)
    forms = _output_forms(tmp_path)
    if flag == "--json":  # a file path: a folder is the wrong shape, a file is overwritten
        (tmp_path / "folder").mkdir()
        forms = [("folder", tmp_path / "folder", "is a folder"), *forms[1:]]
    for form, out, words in forms:
        argv = [part.replace("{s}", str(path)) for part in command] + [flag, str(out)]
        assert main(argv) == 2, form
        line = _one_line(capsys)
        assert line.startswith(f"p2pgan: error: {source}:{flag}: ") and words in line, (form, line)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where nothing can be created")
def test_an_output_the_system_refuses_to_create_is_one_line(tmp_path, capsys):
    """Past the checks (root passes every permission test) the write itself fails: still one line."""
    path = _scenario(tmp_path)
    for argv, where in ((["whatif", str(path), "--vary", "batch_size=8,16", "--out", "/proc/p2pgan-x"], "whatif:--out"),
                        (["cuts", str(path), "--json", "/proc/p2pgan-x.json"], "cuts:--json"),
                        (["scenario", "run", str(path), "--out", "/proc/p2pgan-x", "--no-live"],
                         f"{path}:output.dir")):
        assert main(argv) == 2
        line = _one_line(capsys)
        assert line.startswith(f"p2pgan: error: {where}: cannot "), line


def test_results_compare_out_is_checked_before_reading(tmp_path, capsys):
    forms = _output_forms(tmp_path)
    (tmp_path / "shot.png").mkdir()
    forms[0] = ("png-folder", tmp_path / "shot.png", "is a folder")
    for form, out, words in forms:
        assert main(["results", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith("p2pgan: error: results compare:--out: ") and words in line, (form, line)


def test_run_out_is_a_path_not_yaml_and_is_checked_first(tmp_path, capsys):
    path = _scenario(tmp_path)
    odd = tmp_path / "a #b: [c"
    args = argparse.Namespace(file=path, overrides=[], transport=None, processes=False, out=odd)
    assert load_scenario(path, scenario_overrides(args)).results_dir == odd.resolve()
    assert main(["scenario", "run", str(path), "--out", str(tmp_path / "a\0b"), "--no-live"]) == 2
    assert f"{path}:output.dir: unusable path" in _one_line(capsys)


# -- counts given as flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, where", [
    (["whatif", "{s}", "--vary", "batch_size=8,16", "--plan", "ga", "--generations", "0"], "whatif:--generations"),
    (["whatif", "{s}", "--vary", "batch_size=8,16", "--plan", "ga", "--generations", "-1"], "whatif:--generations"),
    (["whatif", "{s}", "--vary", "batch_size=8,16", "--population", "1"], "whatif:--population"),
    (["cuts", "{s}", "--method", "ga", "--population", "-5"], "cuts:--population"),
    (["cuts", "{s}", "--method", "ga", "--population", "10000000"], "cuts:--population"),
    (["cuts", "{s}", "--method", "ga", "--generations", "0"], "cuts:--generations"),
    (["scenario", "run", "{s}", "--threads", "0", "--no-live"], "scenario run:--threads"),
    (["scenario", "run", "{s}", "--threads", "-2", "--no-live"], "scenario run:--threads"),
    (["scenario", "resume", "{d}", "--threads", "100000"], "scenario resume:--threads"),
    (["privacy", "{s}", "--threads", "0"], "privacy:--threads"),
])
def test_counts_out_of_range_name_the_flag(tmp_path, capsys, argv, where):
    path = _scenario(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    argv = [part.replace("{s}", str(path)).replace("{d}", str(run_dir)) for part in argv]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith(f"p2pgan: error: {where}: expected a whole number"), line
    assert not (tmp_path / "runs").exists()


# -- side files: peer tables and leakage tables ---------------------------------------------------------

@pytest.mark.parametrize("data, key, words", [
    (b"server: \xff\n", "line 1", "not UTF-8"),
    (b"server: http://127.0.0.1:1\nc000: http://127.0.0.1:2\nserver: http://127.0.0.1:3\n", "server", "duplicate key"),
    (b"server: " + b"[" * 500 + b"]" * 500 + b"\n", "line 1", "nested deeper"),
    (b"server: http://127.0.0.1:99999\nc000: http://127.0.0.1:2\n", "server", "Port out of range"),
    (b"- a\n", "", "expected a mapping"),
])
def test_peer_tables_are_read_strictly(tmp_path, data, key, words):
    peers = tmp_path / "peers.yaml"
    peers.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_peer_table(peers, ["server", "c000"])
    assert str(caught.value).startswith(f"{peers}:{key}" if key else f"{peers}: ") and words in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_a_leakage_table_that_is_not_utf8_is_one_line(tmp_path, capsys):
    leakage = tmp_path / "leak.json"
    leakage.write_bytes(b'{"0000": \xff}')
    assert main(["cuts", str(_scenario(tmp_path)), "--max-ssim", "0.5", "--leakage", str(leakage)]) == 2
    assert f"{leakage}:line 1: not UTF-8" in _one_line(capsys)


# -- crashes are failures --------------------------------------------------------------------------------

def test_an_internal_error_during_a_run_is_recorded_as_failed(tmp_path, capsys, monkeypatch):
    def broken(self):
        raise RuntimeError("sampler broke")

    monkeypatch.setattr(BatchSampler, "next_indices", broken)
    out = tmp_path / "run"
    assert main(["scenario", "run", str(_scenario(tmp_path)), "--out", str(out), "--no-live"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("p2pgan: internal error: RuntimeError: sampler broke "
                                            "(run with --debug for the traceback)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "sampler broke" in summary["detail"]


def test_a_clean_error_over_http_leaves_no_unretrieved_future(tmp_path, capfd):
    """A node that cannot listen ends the run with one line (exit 3), and nothing is left for the
    event loop to complain about afterwards ("Future exception was never retrieved")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["scenario", "run", str(_scenario(tmp_path)), "--transport", "http", "--no-live",
                     "--set", f"transport.port={port}", "--out", str(tmp_path / "run")])
        gc.collect()
    err = capfd.readouterr().err
    assert code == 3, err
    assert "never retrieved" not in err and "Traceback" not in err
    failures = [line for line in err.splitlines() if line.startswith("p2pgan:")]
    assert len(failures) == 1 and "cannot listen" in failures[0] and "Address already in use" in failures[0]
