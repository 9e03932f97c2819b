"""Whole runs over HTTP: in-process, one process per node, and `node serve` with a peer table.

Each is bit-identical to the memory transport under the same seed; a killed peer or Ctrl-C ends
the run promptly with one line naming the cause, and every child process is gone afterwards.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from p2pgan.cli import main
from p2pgan.config import load_scenario
from p2pgan.errors import ConfigError
from p2pgan.run.processes import load_peer_table, run_processes
from p2pgan.run.session import run_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
# Two clients: the server still interleaves several peers (each node start-up in --processes costs a torch import).
SMALL = ["training.rounds=2", "training.max_batches_per_epoch=2", "domains={mnist: 1, fashion-mnist: 1}"]
TINY = ["training.max_batches_per_epoch=2", "domains={mnist: 1, fashion-mnist: 1}", "transport.timeout_s=5"]


def scenario(out: Path, *overrides: str):
    return load_scenario(QUICK, [*overrides, f"output.dir={out}"])


def rounds(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("wall_s")
    return records


def steps(folder: Path) -> dict[tuple, dict]:
    lines = (folder / "steps.jsonl").read_text().splitlines()
    return {(r["node"], r["round"], r["step"]): r for r in map(json.loads, lines)}


def assert_same_results(reference: Path, other: Path) -> None:
    assert rounds(other) == rounds(reference)
    assert steps(other) == steps(reference) and len(steps(reference)) > 0
    weights = sorted(p.name for p in (reference / "weights").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (other / "weights").glob("*.safetensors"))
    for name in weights:
        assert_same_weights(reference / "weights" / name, other / "weights" / name)
    ref_summary = json.loads((reference / "summary.json").read_text())
    summary = json.loads((other / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"] == ref_summary["final"]


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    """Same tensors bit for bit, same metadata, same file bytes."""
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        assert a[key].contiguous().view(-1).view(torch.uint8).equal(b[key].contiguous().view(-1).view(torch.uint8)), key
    with safe_open(str(a_path), "pt") as fa, safe_open(str(b_path), "pt") as fb:
        assert fa.metadata() == fb.metadata()
    assert a_path.read_bytes() == b_path.read_bytes()


def test_quick_over_http_and_processes_is_bit_identical_to_memory(tmp_path):
    memory = run_scenario(scenario(tmp_path / "memory", *SMALL))
    http = run_scenario(scenario(tmp_path / "http", *SMALL, "transport.kind=http"))
    out = io.StringIO()
    procs = run_processes(scenario(tmp_path / "procs", *SMALL, "transport.kind=http", "transport.processes=true"),
                          out=out)
    assert (memory.status, http.status, procs.status) == ("completed",) * 3, out.getvalue()
    assert_same_results(tmp_path / "memory", tmp_path / "http")
    assert_same_results(tmp_path / "memory", tmp_path / "procs")
    # Simulated latency too: the server process prices the plan it ran, equal to the recorded trace.
    for name in ("latency.json", "latency_iterations.csv", "latency_nodes.csv"):
        assert (tmp_path / "procs" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes(), name
    # The merged per-step losses are even in the memory run's order.
    assert (tmp_path / "procs" / "steps.jsonl").read_bytes() == (tmp_path / "memory" / "steps.jsonl").read_bytes()
    assert "round 2/2 done" in out.getvalue()
    table = json.loads((tmp_path / "procs" / "nodes" / "nodes.json").read_text())
    assert set(table) == {"server", "c000", "c001"}
    assert_gone(info["pid"] for info in table.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_on_the_gpu_over_http_is_bit_identical_to_memory_and_close_to_the_cohort(tmp_path):
    """``execution.device: cuda``: the nodes compute on the GPU; the memory transport passes device
    tensors, http moves them to the host only at the wire, and the numbers are the same bits. The
    cohort on the GPU gives the same losses up to float summation order."""
    on_gpu = [*SMALL, "execution.device=cuda"]
    memory = run_scenario(scenario(tmp_path / "memory", *on_gpu))
    http = run_scenario(scenario(tmp_path / "http", *on_gpu, "transport.kind=http"))
    cohort = run_scenario(scenario(tmp_path / "cohort", *on_gpu, "execution.engine=cohort"))
    assert (memory.status, http.status, cohort.status) == ("completed",) * 3
    assert_same_results(tmp_path / "memory", tmp_path / "http")
    by_nodes, by_cohort = steps(tmp_path / "memory"), steps(tmp_path / "cohort")
    assert by_nodes.keys() == by_cohort.keys()
    for key, record in by_nodes.items():
        for name in ("d_real", "d_fake", "d_loss", "g_loss"):
            assert abs(record[name] - by_cohort[key][name]) <= 1e-4, (key, name)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def stop_leftover_processes():
    """Whatever a test started is stopped afterwards, even when it failed half-way."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.terminate()  # a coordinator then aborts its children and waits for them
            try:
                proc.communicate(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def cli(*args: str, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "p2pgan", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)
    _STARTED.append(proc)
    return proc


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent reaps it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def assert_gone(pids, timeout: float = 5.0) -> None:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "child processes left behind"


def start_multiprocess(out: Path, *overrides: str) -> subprocess.Popen:
    """The run, once its first round is recorded."""
    proc = cli("scenario", "run", str(QUICK), "--transport", "http", "--processes", "--no-live", "--out", str(out),
               *sets(*TINY, *overrides))
    wait_for(lambda: (out / "rounds.jsonl").exists() and (out / "rounds.jsonl").read_text().strip(), 120, proc)
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"run did not end within {timeout} s:\n{stdout}\n{stderr}")
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("victim", ["c001", "server"])
def test_killed_peer_ends_the_run_with_one_line_naming_it(tmp_path, victim):
    out = tmp_path / "run"
    launched = time.monotonic()
    proc = start_multiprocess(out, "training.rounds=40")
    # Stopping the processes takes longer on a loaded machine, as starting them did: the slack
    # beyond the deadline (transport.timeout_s=5) is at least 5 s, or as long as the start took.
    slack = max(5.0, time.monotonic() - launched)
    table = json.loads((out / "nodes" / "nodes.json").read_text())
    rounds_before = len((out / "rounds.jsonl").read_text().splitlines())
    os.kill(table[victim]["pid"], signal.SIGKILL)
    started = time.monotonic()
    code, stdout, stderr = finish(proc, timeout=5 + slack + 15)
    assert time.monotonic() - started < 5 + slack
    assert code == 3, (stdout, stderr)
    # No round after the one in flight when the peer died (40 would follow if the run went on).
    assert len((out / "rounds.jsonl").read_text().splitlines()) <= rounds_before + 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"peer {victim}:" in lines[0] and "SIGKILL" in lines[0], stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and victim in summary["detail"]
    # Everything written before the kill is still there.
    assert len((out / "rounds.jsonl").read_text().splitlines()) >= rounds_before >= 1
    assert len((out / "steps.jsonl").read_text().splitlines()) >= 2 * 2 * rounds_before
    assert json.loads((out / "config.json").read_text())["name"] == "quick"
    assert_gone(info["pid"] for info in table.values())


def test_ctrl_c_stops_every_process_and_keeps_results(tmp_path):
    out = tmp_path / "run"
    proc = start_multiprocess(out, "training.rounds=40", "domains={mnist: 1}")  # coordinator, server, a client
    table = json.loads((out / "nodes" / "nodes.json").read_text())
    proc.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(proc, timeout=20)
    assert code == 130, (stdout, stderr)
    assert "interrupted" in stderr and len(stderr.strip().splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] >= 1
    assert_gone(info["pid"] for info in table.values())


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_node_serve_with_peer_table_and_secret_file(tmp_path):
    """`p2pgan node serve` per node, as on several hosts (here all on loopback)."""
    overrides = ["training.rounds=2", "training.max_batches_per_epoch=2", "domains={mnist: 1}"]
    reference = run_scenario(scenario(tmp_path / "memory", *overrides))
    assert reference.status == "completed"

    secret = tmp_path / "run.key"
    assert main(["node", "secret", str(secret)]) == 0  # in this process: a Python start-up fewer
    assert secret.stat().st_mode & 0o777 == 0o600
    server_port, client_port = free_ports(2)
    peers = tmp_path / "peers.yaml"
    peers.write_text(f"server: http://127.0.0.1:{server_port}\nc000: 127.0.0.1:{client_port}\n")
    out = tmp_path / "multihost"
    common = ["--scenario", str(QUICK), "--peers", str(peers), "--secret-file", str(secret), "--wait-s", "60",
              *sets(*overrides, f"output.dir={out}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PGAN_SECRET")}
    client = cli("node", "serve", "--node", "c000", *common, env=env)  # clients may start first
    server = cli("node", "serve", "--node", "server", *common, env=env)
    try:
        s_code, s_out, s_err = finish(server, 120)
        c_code, c_out, c_err = finish(client, 30)
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
    assert (s_code, c_code) == (0, 0), (s_out, s_err, c_out, c_err)
    assert "all peers up" in c_out and "results:" in s_out
    assert rounds(out) == rounds(tmp_path / "memory")
    assert_same_weights(out / "weights" / "cluster-0.safetensors", tmp_path / "memory" / "weights" / "cluster-0.safetensors")
    client_steps = [json.loads(line) for line in (out / "nodes" / "c000.steps.jsonl").read_text().splitlines()]
    assert client_steps == list(steps(tmp_path / "memory").values())


def test_node_serve_refuses_a_secret_file_others_can_read(tmp_path, capsys):
    secret = tmp_path / "run.key"
    secret.write_text("ab" * 32)
    secret.chmod(0o644)
    peers = tmp_path / "peers.yaml"
    peers.write_text("server: http://127.0.0.1:1\n")
    code = main(["node", "serve", "--scenario", str(QUICK), "--node", "server", "--peers", str(peers),
                 "--secret-file", str(secret)])  # refused before it serves: in this process
    stderr = capsys.readouterr().err
    assert code == 2 and "chmod 600" in stderr and len(stderr.strip().splitlines()) == 1


def test_peer_table_must_name_every_node(tmp_path):
    peers = tmp_path / "peers.yaml"
    peers.write_text("server: http://10.0.0.1:8700\nc000: 10.0.0.2:8700\n")
    assert load_peer_table(peers, ["server", "c000"]) == {"server": "http://10.0.0.1:8700", "c000": "http://10.0.0.2:8700"}
    with pytest.raises(ConfigError, match="no address for node.s. c001"):
        load_peer_table(peers, ["server", "c000", "c001"])
    with pytest.raises(ConfigError, match="not a node of this run"):
        load_peer_table(peers, ["server"])
    peers.write_text("server: ftp://x:1\nc000: h:2\n")
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        load_peer_table(peers, ["server", "c000"])
