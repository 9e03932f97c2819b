"""Faults over HTTP: the same scripted dropout gives the same results in memory and over loopback
HTTP, and under ``faults.policy: continue`` a ``--processes`` run whose client process is SIGKILLed
completes with the rest (``policy: fail``, the default, ends such a run with exit 3 naming the peer:
tests/test_http_runs.py::test_killed_peer_ends_the_run_with_one_line_naming_it).
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from p2pgan.config import load_scenario
from p2pgan.model.costs import profile_model
from p2pgan.run.prepare import prepare_run
from p2pgan.run.session import run_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
SMALL = ["training.rounds=2", "training.max_batches_per_epoch=2", "training.batch_size=8", "model.width=0.125",
         "domains={mnist: 2, fashion-mnist: 2}",
         "faults={dropout: [{clients: c001, at_round: 1, at_step: 1, rejoin_round: 2},"
         " {clients: c003, at_round: 2, at_step: 1}]}"]


def lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in path.read_text().splitlines()]


def test_http_equals_memory_under_the_same_faults(tmp_path):
    runs = {}
    costs = None
    for kind in ("memory", "http"):
        sc = load_scenario(QUICK, [*SMALL, f"transport.kind={kind}", f"output.dir={tmp_path / kind}"])
        costs = costs or profile_model(sc.model_spec)
        runs[kind] = run_scenario(sc, prepared=prepare_run(sc, costs))
        assert runs[kind].status == "completed", runs[kind].summary.get("detail")
    memory, http = tmp_path / "memory", tmp_path / "http"
    rounds = lines(memory / "rounds.jsonl")
    assert [r["participants"]["federated"] for r in rounds] == [["c000", "c002", "c003"], ["c000", "c001", "c002"]]
    assert lines(http / "rounds.jsonl") == rounds
    assert (http / "steps.jsonl").read_bytes() == (memory / "steps.jsonl").read_bytes()
    for name in ("latency.json", "latency_iterations.csv", "latency_nodes.csv"):
        assert (http / name).read_bytes() == (memory / name).read_bytes(), name
    weights = sorted(p.name for p in (memory / "weights").glob("*.safetensors"))
    assert weights
    for name in weights:
        assert (http / "weights" / name).read_bytes() == (memory / "weights" / name).read_bytes(), name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_continue_over_processes_survives_a_sigkilled_client(tmp_path):
    out = tmp_path / "run"
    settings = ["training.rounds=5", "training.max_batches_per_epoch=2", "training.batch_size=8", "model.width=0.125",
                "domains={mnist: 1, fashion-mnist: 1}", "transport.timeout_s=20",
                "faults={policy: continue, peer_deadline_s: 2}"]
    proc = subprocess.Popen([sys.executable, "-m", "p2pgan", "scenario", "run", str(QUICK), "--transport", "http",
                             "--processes", "--no-live", "--out", str(out),
                             *[arg for s in settings for arg in ("--set", s)]],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not ((out / "rounds.jsonl").is_file() and (out / "rounds.jsonl").read_text().strip()):
            assert proc.poll() is None, f"exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "round 1 was not recorded in time"
            time.sleep(0.02)
        table = json.loads((out / "nodes" / "nodes.json").read_text())
        os.kill(table["c001"]["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (stdout, stderr)
    assert "client c001 gone" in stdout and "SIGKILL" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 5
    rounds = lines(out / "rounds.jsonl")
    assert len(rounds) == 5 and rounds[0]["participants"]["federated"] == ["c000", "c001"]
    gone = [r["round"] for r in rounds if "c001" not in r["participants"]["federated"]]
    assert gone and gone == list(range(gone[0], 6))  # gone from some round on, for good
    for record in rounds[gone[0] - 1:]:
        assert record["participants"]["present"] == ["c000"] and "c001" in record["participants"]["dropped"]
        assert sorted(record["client_losses"]) == ["c000"]
    assert not [r for r in lines(out / "steps.jsonl") if r["node"] == "c001" and r["round"] > gone[0]]
    assert "peer c001 dropped" in (out / "log.txt").read_text()
    deadline = time.monotonic() + 5
    while any(_alive(info["pid"]) for info in table.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [n for n, info in table.items() if _alive(info["pid"])], "node processes left behind"


def test_faults_need_the_node_engine(tmp_path, capsys):
    engine = "cohort"  # Ray takes faults (tests/test_ray_faults.py)
    from p2pgan.cli import main

    scenario = tmp_path / "s.yaml"
    scenario.write_text(QUICK.read_text() + f"execution: {{engine: {engine}}}\n"
                        "faults: {dropout: [{clients: c001, at_round: 2}]}\n")
    code = main(["scenario", "validate", str(scenario)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"s.yaml:faults: execution.engine {engine}" in err[0], err


def test_continue_needs_a_peer_deadline_below_the_transport_timeout(tmp_path, capsys):
    from p2pgan.cli import main

    scenario = tmp_path / "s.yaml"
    scenario.write_text(QUICK.read_text() + "transport: {kind: http, timeout_s: 20}\n"
                        "faults: {policy: continue, peer_deadline_s: 30}\n")
    code = main(["scenario", "validate", str(scenario)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(r"s\.yaml:faults\.peer_deadline_s: must be below transport\.timeout_s \(20(\.0)? s\) "
                     r"under policy continue", err[0]), err
