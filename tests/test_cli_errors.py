"""Bad input: one line naming the file and key, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2pgan.cli import main

GOOD = """\
name: t
seed: 1
domains: {mnist: 2}
training: {rounds: 1, batch_size: 8}
cuts: [0, 0, 0, 0]
"""

CASES = {
    "malformed-yaml": ("name: t\ndomains: {mnist: 2\n", None, "malformed YAML"),
    "not-a-mapping": ("- 1\n- 2\n", None, "expected a mapping"),
    "unknown-key": (GOOD + "bogus: 1\n", None, ":bogus: unknown key"),
    "unknown-nested-key": (GOOD.replace("batch_size: 8", "batch_size: 8, lrr: 1"), None, ":training.lrr: unknown key"),
    "wrong-type": (GOOD.replace("rounds: 1", "rounds: many"), None, ":training.rounds:"),
    "zero-rounds": (GOOD.replace("rounds: 1", "rounds: 0"), None, ":training.rounds:"),
    "negative-lr": (GOOD.replace("batch_size: 8", "batch_size: 8, lr: -1"), None, ":training.lr:"),
    "impossible-cut": (GOOD.replace("[0, 0, 0, 0]", "[0, 2, 0, 0]"), None, "impossible cut"),
    "short-cut": (GOOD.replace("[0, 0, 0, 0]", "[0, 0, 0]"), None, ":cuts.fixed"),
    "per-client-count": (GOOD.replace("cuts: [0, 0, 0, 0]", "cuts: {per_client: [[0,0,0,0]]}"), None, ":cuts.per_client:"),
    "unknown-domain": (GOOD.replace("mnist: 2", "cifar: 2"), None, "unknown domain 'cifar'"),
    "zero-clients": (GOOD.replace("mnist: 2", "mnist: 0"), None, ":domains:"),
    "dirichlet-no-alpha": (GOOD + "partition: {kind: dirichlet}\n", None, ":partition.alpha:"),
    "bad-partition": (GOOD + "partition: {kind: weird}\n", None, ":partition.kind:"),
    "bad-strategy": (GOOD + "strategy: {name: nope}\n", None, ":strategy.name:"),
    "missing-topology": (GOOD + "topology: nowhere.yaml\n", None, ":topology: topology file not found"),
    "search-without-topology": (GOOD.replace("cuts: [0, 0, 0, 0]", "cuts: {search: exact}"), None, ":cuts.search:"),
    "missing-name": (GOOD.replace("name: t\n", ""), None, ":name: required key is missing"),
    "bad-override": (GOOD, ["--set", "training.rounds"], "override must look like key.path=value"),
    "override-unknown": (GOOD, ["--set", "training.nope=3"], ":training.nope: unknown key"),
    "override-type": (GOOD, ["--set", "training.batch_size=[1]"], ":training.batch_size:"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_scenario_exits_2_with_one_line(case, tmp_path, capsys):
    text, extra, expected = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = main(["scenario", "validate", str(path), *(extra or [])])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert expected in lines[0]


def test_missing_file(tmp_path, capsys):
    assert main(["scenario", "run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.yaml" in err and "cannot read scenario file" in err and len(err.splitlines()) == 1


def test_no_traceback_from_the_console_script(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "bogus: [\n")
    proc = subprocess.run([sys.executable, "-m", "p2pgan", "scenario", "run", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_validate_ok(repo_root, capsys):
    assert main(["scenario", "validate", str(repo_root / "scenarios" / "quick.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for domain in ("mnist", "fashion-mnist", "kmnist", "glyphs"):
        assert domain in out


def test_a_failed_run_suggests_resume_only_when_a_checkpoint_exists(tmp_path):
    """After a failure in round 1 there is nothing to resume from: the hint says to start again."""
    from p2pgan.commands.scenario import _next_step
    from p2pgan.run.checkpoint import MARKER, checkpoints_dir

    assert "--force" in _next_step(tmp_path) and "resume" not in _next_step(tmp_path)
    folder = checkpoints_dir(tmp_path) / "round-1"
    folder.mkdir(parents=True)
    assert "--force" in _next_step(tmp_path)  # a round that never finished writing its checkpoint
    (folder / MARKER).write_text("{}")
    assert _next_step(tmp_path) == f"continue with `p2pgan scenario resume {tmp_path}`"
