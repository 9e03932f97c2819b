"""`p2pgan scenario run scenarios/quick.yaml` end to end: results folder, determinism, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from p2pgan.cli import main

SMALL = ["--set", "training.rounds=2", "--set", "training.max_batches_per_epoch=3"]


def run_quick(repo_root, out, *extra):
    return main(["scenario", "run", str(repo_root / "scenarios" / "quick.yaml"), "--no-live",
                 "--out", str(out), *SMALL, *extra])


def read_rounds(folder):
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def test_quick_run_writes_results_and_is_deterministic(repo_root, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_quick(repo_root, first) == 0
    assert run_quick(repo_root, second) == 0

    for name in ("config.json", "plan.json", "rounds.jsonl", "steps.jsonl", "summary.json", "weights/clusters.json"):
        assert (first / name).is_file(), name
    assert list((first / "weights").glob("cluster-*.safetensors"))
    assert {p.stem for p in (first / "samples").glob("*.png")} == {"mnist", "fashion-mnist"}
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2

    rounds_a, rounds_b = read_rounds(first), read_rounds(second)
    assert [r["round"] for r in rounds_a] == [1, 2]
    assert [r["client_losses"] for r in rounds_a] == [r["client_losses"] for r in rounds_b]
    assert (first / "steps.jsonl").read_text() == (second / "steps.jsonl").read_text()
    for weights in (first / "weights").glob("*.safetensors"):
        assert weights.read_bytes() == (second / "weights" / weights.name).read_bytes()


def test_different_seed_gives_different_losses(repo_root, tmp_path):
    assert run_quick(repo_root, tmp_path / "a", "--set", "training.rounds=1") == 0
    assert run_quick(repo_root, tmp_path / "b", "--set", "training.rounds=1", "--set", "seed=8") == 0
    assert read_rounds(tmp_path / "a")[0]["client_losses"] != read_rounds(tmp_path / "b")[0]["client_losses"]


def test_ctrl_c_stops_cleanly_and_keeps_results(repo_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgan", "scenario", "run", str(repo_root / "scenarios" / "quick.yaml"),
         "--no-live", "--out", str(out), "--set", "training.rounds=50", "--set", "training.max_batches_per_epoch=2",
         "--set", "domains={mnist: 1, fashion-mnist: 1}"],  # two clients: what is tested is the stop
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rounds = out / "rounds.jsonl"
            if rounds.is_file() and rounds.read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["rounds_completed"] >= 1
    assert len(read_rounds(out)) == summary["rounds_completed"]
