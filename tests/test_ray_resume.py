"""Checkpoints and ``p2pgan scenario resume`` for ``execution: {engine: ray}`` (p2pgan/run/ray.py).

A Ray run whose driver is SIGKILLed right after round 1's checkpoint, then resumed from the
command line, ends with the same weights, rounds, steps and latency files as an uninterrupted run,
and the private local Ray the killed driver had started (its keeper, GCS, raylet, agents, actors)
does not outlive it (p2pgan/run/ray_keeper.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from p2pgan.config.loader import load_scenario  # noqa: E402
from p2pgan.run.checkpoint import MARKER, checkpoints_dir, complete_rounds  # noqa: E402
from p2pgan.run.session import run_scenario  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "scenarios" / "quick.yaml"
ROUNDS = 2
SETTINGS = [f"training.rounds={ROUNDS}", "training.max_batches_per_epoch=2", "model.width=0.125",
            "domains={mnist: 1, fashion-mnist: 1}",
            "execution.engine=ray", "ray.address=local", "ray.shards=1", "ray.num_cpus_per_shard=0.5"]
LEFTOVER_WAIT_S = 60.0

# The driver, as `p2pgan scenario run` drives it, killing itself (SIGKILL: no handler, no cleanup)
# at its first event after round 1's checkpoint is complete; before that it lists its descendants
# (the private Ray it started: GCS, raylet, the actors' workers).
DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from p2pgan.config.loader import load_scenario
    from p2pgan.run.folder import claim_results_dir
    from p2pgan.run.ray import run_ray

    out, pids_file, *overrides = sys.argv[1:]
    out = Path(out)
    marker = out / "checkpoints" / "round-1" / "checkpoint.json"

    def descendants(root):
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        found, stack = [], [root]
        while stack:
            for child in children.get(stack.pop(), []):
                found.append(child)
                stack.append(child)
        return found

    def kill_after_round_1_checkpoint(event):
        if marker.is_file():
            Path(pids_file).write_text(json.dumps(descendants(os.getpid())))
            os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    scenario = load_scenario(Path(os.environ["QUICK"]), [*overrides, f"output.dir={out}"])
    with claim_results_dir(scenario.results_dir, force=False, resume=False, source="test"):
        run_ray(scenario, [kill_after_round_1_checkpoint])
""")


def _env() -> dict[str, str]:
    return dict(os.environ, QUICK=str(QUICK), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record.pop("wall_s", None)
        record.get("details", {}).pop("wall_s", None)
    return records


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run. A memory run, in this process with the actors' one thread: a Ray run
    writes these files byte for byte as a memory run does (tests/test_ray.py), and a third Ray
    start would double this test's time."""
    out = tmp_path_factory.mktemp("ray-reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_scenario(load_scenario(QUICK, [*SETTINGS, "execution.engine=nodes", f"output.dir={out}"]))
    finally:
        torch.set_num_threads(threads)
    assert outcome.status == "completed"
    return out


def test_a_sigkilled_ray_driver_leaves_no_ray_behind_and_resumes_to_the_same_results(tmp_path, reference):
    out, pids_file = tmp_path / "run", tmp_path / "pids.json"
    killed = subprocess.run([sys.executable, "-c", DRIVER, str(out), str(pids_file), *SETTINGS],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert complete_rounds(out) == [1]
    assert not (out / "summary.json").is_file() or json.loads((out / "summary.json").read_text())["status"] != "completed"

    # The private Ray the killed driver started ends with it: its keeper sees the pipe close.
    pids = json.loads(pids_file.read_text())
    assert len(pids) >= 5, pids  # at least the keeper, the GCS, the raylet and the two actors' workers
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in alive if _alive(pid)]

    resumed = subprocess.run([sys.executable, "-m", "p2pgan", "scenario", "resume", str(out), "--no-live"],
                             capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming quick after round 1 of 2" in resumed.stdout

    for name in ("rounds.jsonl", "steps.jsonl"):
        assert _records(out / name) == _records(reference / name), name
    assert [r["round"] for r in _records(out / "rounds.jsonl")] == [1, 2]
    weights = sorted(p.name for p in (reference / "weights").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (out / "weights").glob("*.safetensors"))
    for name in weights:
        assert (out / "weights" / name).read_bytes() == (reference / "weights" / name).read_bytes(), name
    for name in ("latency.json", "latency_iterations.csv", "latency_nodes.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS
    assert summary["checkpoints"]["resumed_after_round"] == 1
    assert (checkpoints_dir(out) / "round-1" / MARKER).is_file()
