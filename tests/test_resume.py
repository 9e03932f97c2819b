"""Checkpoints and ``p2pgan scenario resume``: a run SIGKILLed after round 2 of 4 and resumed ends
exactly as an uninterrupted run with the same seed: the same weights bytes, ``rounds.jsonl``,
``steps.jsonl``, ``metrics.csv``/``metrics.jsonl`` and latency files (wall-clock fields aside), in
memory mode and with a process per node over HTTP. The uninterrupted reference is one memory run:
memory, http and ``--processes`` runs are bit-identical (tests/test_http_runs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pgan.cli import main
from p2pgan.config import load_scenario
from p2pgan.protocol.events import ClientLosses
from p2pgan.run.checkpoint import (MARKER, ResumePoint, checkpoints_dir, complete_rounds, read_node_state,
                                   rewind_results, write_atomic)
from p2pgan.run.processes import is_node_process
from p2pgan.run.session import run_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
ROUNDS = 4
SETTINGS = [f"training.rounds={ROUNDS}", "training.max_batches_per_epoch=2", "domains={mnist: 1, fashion-mnist: 1}",
            "metrics.enabled=true", "metrics.every=3", "metrics.score_samples=50", "metrics.utility=false",
            "metrics.classifier_epochs=1"]
PROCESSES = ["transport.kind=http", "transport.processes=true", "transport.timeout_s=30"]
WALL_CLOCK = ("wall_s",)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, judges_dir) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    (folder / "judges").symlink_to(judges_dir)  # the session's judges (tests/conftest.py): ~10 s once
    return folder


def settings(workdir: Path, *extra: str) -> list[str]:
    return [*SETTINGS, f"metrics.cache_dir={workdir / 'judges'}", *extra]


@pytest.fixture(scope="module")
def reference(workdir: Path) -> Path:
    """The uninterrupted run (in this process: the judges it trains are cached for the others)."""
    out = workdir / "reference"
    outcome = run_scenario(load_scenario(QUICK, [*settings(workdir), f"output.dir={out}"]))
    assert outcome.status == "completed"
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pgan", *args]


def run_and_kill_after_round_2(workdir: Path, out: Path, *extra: str) -> None:
    """Start ``p2pgan scenario run`` and SIGKILL it once round 2 is recorded and checkpointed."""
    sets = [arg for key in settings(workdir, *extra) for arg in ("--set", key)]
    proc = subprocess.Popen(cli("scenario", "run", str(QUICK), "--no-live", "--threads", "1", "--out", str(out), *sets),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 150
    try:
        while not (_recorded_rounds(out) >= 2 and (checkpoints_dir(out) / "round-2" / MARKER).is_file()):
            assert proc.poll() is None, f"the run ended before round 2: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "round 2 was not checkpointed in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= _recorded_rounds(out) < ROUNDS


def resume(out: Path, capsys) -> str:
    """``p2pgan scenario resume OUT``, in this process (a Python start-up fewer; the killed run was
    another process, so nothing of it is in memory here); what it printed."""
    code = main(["scenario", "resume", str(out), "--no-live", "--threads", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    return printed.out


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _recorded_rounds(out: Path) -> int:
    path = out / "rounds.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        for key in WALL_CLOCK:
            record.pop(key, None)
    return records


def assert_same_results(reference: Path, other: Path) -> None:
    for name in ("rounds.jsonl", "steps.jsonl", "metrics.jsonl"):
        assert _records(other / name) == _records(reference / name), name
    assert [r["round"] for r in _records(other / "rounds.jsonl")] == list(range(1, ROUNDS + 1))
    assert len(_records(other / "steps.jsonl")) == ROUNDS * 2 * 2  # rounds x steps x clients
    for name in ("metrics.csv", "latency.json", "latency_iterations.csv", "latency_nodes.csv"):
        assert (other / name).read_bytes() == (reference / name).read_bytes(), name
    weights = sorted(p.name for p in (reference / "weights").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (other / "weights").glob("*.safetensors"))
    for name in weights:
        assert (other / "weights" / name).read_bytes() == (reference / "weights" / name).read_bytes(), name
    summary, ref_summary = (json.loads((folder / "summary.json").read_text()) for folder in (other, reference))
    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS
    assert summary["final"] == ref_summary["final"] and summary["metrics"] == ref_summary["metrics"]


def assert_checkpoints_intact(out: Path, killed: bool = False) -> list[int]:
    """Every complete checkpoint verifies and loads, and holds no temporary file; nor does any
    folder after a clean exit (a SIGKILL may leave one in a round still being written)."""
    if not killed:
        assert not list(out.rglob("*.tmp"))
    rounds = complete_rounds(out)
    assert rounds
    for round_ in rounds:
        point = ResumePoint(out, round_)
        assert not list(point.folder.glob("*.tmp"))
        point.verify()
        for node in point.marker()["nodes"]:
            state = read_node_state(point.folder, node)
            assert any(name.startswith("blocks/") for name in state.tensors)
            assert any(name.startswith("optim/") and name.endswith("/exp_avg_sq") for name in state.tensors)
        assert point.run_state()["round"] == round_
    return rounds


def resumed_after(out: Path) -> int:
    return json.loads((out / "summary.json").read_text())["checkpoints"]["resumed_after_round"]


def test_memory_run_killed_after_round_2_and_resumed_equals_uninterrupted(reference, workdir, capsys):
    out = workdir / "memory"
    run_and_kill_after_round_2(workdir, out)
    assert not (out / "summary.json").exists()  # killed: nothing was flushed on the way out
    checkpointed = assert_checkpoints_intact(out, killed=True)
    assert 2 in checkpointed and max(checkpointed) < ROUNDS
    assert f"after round {max(checkpointed)} of {ROUNDS}" in resume(out, capsys)
    assert resumed_after(out) == max(checkpointed)
    assert_same_results(reference, out)
    assert_checkpoints_intact(out)


def test_processes_run_killed_after_round_2_and_resumed_equals_uninterrupted(reference, workdir, capsys):
    out = workdir / "processes"
    run_and_kill_after_round_2(workdir, out, *PROCESSES)
    nodes = json.loads((out / "nodes" / "nodes.json").read_text())
    # The node processes run in their own session: they outlive the coordinator until they see its
    # pipe close. The resume waits for them before it cuts the results back and starts anew.
    resume(out, capsys)
    assert 2 <= resumed_after(out) < ROUNDS
    assert_same_results(reference, out)
    assert_checkpoints_intact(out)
    assert not [entry["pid"] for entry in nodes.values() if is_node_process(entry["pid"])]  # the killed run's


def test_sigterm_over_http_checkpoints_the_last_completed_round_and_resume_goes_on(reference, workdir):
    """An in-process http run with ``checkpoint.every: 10``: no round is due in 4, yet SIGTERM (sent
    while round 4 trains, taken as Ctrl-C as the CLI does) leaves a checkpoint of the last round
    every node completed, equal to the uninterrupted memory run's; resumed, it ends the same."""
    out = workdir / "sigterm"
    sent = []

    def sigterm_in_round_4(event: object) -> None:
        if isinstance(event, ClientLosses) and event.round == 4 and not sent:
            sent.append(event)
            os.kill(os.getpid(), signal.SIGTERM)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        outcome = run_scenario(load_scenario(QUICK, [*settings(workdir, "checkpoint.every=10", "transport.kind=http"),
                                                   f"output.dir={out}"]),
                               [sigterm_in_round_4])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent and outcome.status == "interrupted"
    assert assert_checkpoints_intact(out) == [3]
    flushed, due = ResumePoint(out, 3), ResumePoint(reference, 3)
    assert flushed.marker()["nodes"] == due.marker()["nodes"]
    for node in due.marker()["nodes"]:
        name = f"{node}.safetensors"
        assert (flushed.folder / name).read_bytes() == (due.folder / name).read_bytes(), node
    run_side, reference_side = (_without_wall_clock(p.run_state()["participants"]) for p in (flushed, due))
    assert run_side == reference_side and run_side["metrics"]["history"]["mnist"].keys() == {"3"}
    assert _per_node(flushed.journal("latency")) == _per_node(due.journal("latency"))
    assert main(["scenario", "resume", str(out), "--no-live"]) == 0
    assert resumed_after(out) == 3
    assert_same_results(reference, out)


def _per_node(journal: list[list]) -> dict[str, list]:
    """Each node's traced operations in its order (nodes interleave differently over http; the
    tracer's canonical order depends on each node's order only)."""
    nodes: dict[str, list] = {}
    for entries in journal:
        for entry in entries:
            nodes.setdefault(entry[1] if entry[0] == "compute" else entry[2], []).append(entry)
    return nodes


def _without_wall_clock(value):
    if isinstance(value, dict):
        return {k: _without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_without_wall_clock(v) for v in value]
    return value


@pytest.mark.parametrize("strategy", ["md-gan", "fedprox"])
def test_other_node_kinds_resume_exactly(strategy, tmp_path):
    """MD-GAN's node pair (G on the server, its own random stream there) and FedProx's client (its
    proximal anchor is the loaded round start) continue bit for bit from a round-1 checkpoint."""
    keys = ["training.rounds=3", "training.max_batches_per_epoch=2", "domains={mnist: 1, fashion-mnist: 1}",
            "metrics.enabled=false", f"strategy.name={strategy}", *(["strategy.mu=0.1"] if strategy == "fedprox" else [])]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_scenario(load_scenario(QUICK, [*keys, f"output.dir={whole}"])).status == "completed"
    shutil.copytree(whole, resumed)
    rewind_results(resumed, 1)
    outcome = run_scenario(load_scenario(QUICK, [*keys, f"output.dir={resumed}"]), resume=ResumePoint(resumed, 1))
    assert outcome.status == "completed"
    for name in ("rounds.jsonl", "steps.jsonl"):
        assert _records(resumed / name) == _records(whole / name), name
    for name in ("latency.json", *(f"weights/{p.name}" for p in (whole / "weights").glob("*.safetensors"))):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name


def test_resume_without_checkpoints_is_one_line_exit_2(reference, tmp_path, capsys):
    out = tmp_path / "no-checkpoints"
    out.mkdir()
    shutil.copy(reference / "config.json", out / "config.json")
    assert main(["scenario", "resume", str(out), "--no-live"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to resume from" in err and "Traceback" not in err
    assert main(["scenario", "resume", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_resume_of_a_completed_run_is_refused(reference, capsys):
    assert main(["scenario", "resume", str(reference)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "completed" in err


def test_config_json_of_a_run_loads_as_the_same_scenario(reference):
    from p2pgan.run.results import jsonable, load_run_config

    scenario = load_run_config(reference)
    assert json.loads(json.dumps(jsonable(scenario))) == json.loads((reference / "config.json").read_text())


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "node.safetensors"
    write_atomic(target, b"old contents")

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_atomic(target, b"new contents that never fully land")
    assert target.read_bytes() == b"old contents"  # the reader still sees the whole old file
