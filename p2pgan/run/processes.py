"""Every node of a run in its own process, wired over the HTTP transport.

``run_processes(scenario)`` is the coordinator behind ``p2pgan scenario run FILE --transport http
--processes``. It starts one ``p2pgan node serve --control stdio`` child per node, talks to each
over a private pipe (JSON lines: the coordinator writes commands to the child's stdin, the child
reports events on its stdout; its stderr goes to ``<results>/nodes/<id>.log``) and:

1. sends every child the scenario and the run's secret (generated here with ``secrets``; it only
   ever travels over these pipes: never the command line, the environment or a file);
2. waits until each child has bound its aiohttp server (port 0 = a free port) and reported its URL;
3. sends everyone the peer table: from then on the nodes talk to each other directly;
4. merges the clients' per-step losses into ``<results>/steps.jsonl`` (buffered per step and written
   in client-id order, the order of a memory run), while the server process writes the rest of the
   results folder exactly as a single-process run does;
5. completes each round's checkpoint: every child writes its own node's files under
   ``<results>/checkpoints/round-<r>/`` and reports them; once all have (and so every step line of the
   round is written), the coordinator writes the round's marker (run/checkpoint.py). A resume
   (``resume=``) tells every child the round to continue after; each loads its own state;
6. on a child crash, a child reporting a failure, Ctrl-C or SIGTERM: tells every other child to abort
   (the server then flushes the results folder with the reason), waits a grace period, then
   terminates and finally kills whatever is left, and reports one line naming the node. Under
   ``faults.policy: continue`` a *client* process that dies or fails does not end the run: the
   server drops that peer after its deadline, and the coordinator stops waiting for its step
   lines and checkpoint files (a checkpoint completes without a client that is gone).

Children run in their own session, so a terminal Ctrl-C reaches only the coordinator, and a child
whose coordinator disappears (its stdin closes, or it is re-parented) aborts on its own.

``serve_controlled`` is that child; ``serve_standalone`` runs one node of a multi-host run from a
scenario file, a peer table and a secret file (``p2pgan node serve``, see docs/multihost.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from p2pgan.config.schema import Scenario
from p2pgan.ids import SERVER_ID
from p2pgan.errors import ConfigError, P2PGanError, PeerError
from p2pgan.run.checkpoint import CheckpointMarkers, Completed, ResumePoint, RoundCheckpointer

STARTUP_TIMEOUT_S = 180.0
"""How long a child may take to load its data and bind its server."""
GRACE_S = 15.0
"""After an abort: how long children get to flush and exit before SIGTERM, then SIGKILL."""
CONTROL_LINE_LIMIT = 64 * 2**20


# -- coordinator --------------------------------------------------------------------------------


@dataclass
class _Child:
    node_id: str
    proc: asyncio.subprocess.Process
    log_path: Path
    url: str | None = None
    pid: int | None = None
    finished: dict[str, Any] | None = None
    exit_code: int | None = None
    reader: asyncio.Task | None = None


@dataclass
class _Failure:
    status: str  # "failed" | "interrupted"
    peer: str | None
    problem: str

    @property
    def error(self) -> P2PGanError | None:
        if self.status != "failed":
            return None
        return PeerError(self.peer, self.problem) if self.peer else P2PGanError(self.problem)

    @property
    def detail(self) -> str:
        return f"peer {self.peer}: {self.problem}" if self.peer else self.problem


def scenario_snapshot(scenario: Scenario) -> tuple[dict[str, Any], str]:
    """The validated scenario as plain JSON, and its source path (rebuilt by :func:`load_snapshot`)."""
    from p2pgan.run.results import jsonable

    raw = jsonable(scenario)
    source = raw.pop("source", None)
    return raw, str(source or scenario.name)


def load_snapshot(raw: Mapping[str, Any], source: str) -> Scenario:
    from p2pgan.config.loader import parse_scenario

    return parse_scenario(dict(raw), Path(source))


class Coordinator:
    """Starts, wires, watches and stops one process per node."""

    def __init__(self, prepared, *, out: TextIO | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 grace_s: float = GRACE_S, python: str = sys.executable,
                 env: Mapping[str, str] | None = None, resume: ResumePoint | None = None) -> None:
        self.prepared = prepared
        self.resume = resume
        self.scenario: Scenario = prepared.scenario
        self.results_dir = Path(self.scenario.results_dir)
        self.node_ids = [SERVER_ID, *prepared.plan.client_ids]
        self.children: dict[str, _Child] = {}
        self._out = out if out is not None else sys.stdout
        self._startup_timeout_s = startup_timeout_s
        self._grace_s = grace_s
        self._python = python
        self._env = dict(os.environ if env is None else env)
        self._env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle children must not spin on shared cores
        self._secret = secrets.token_bytes(32)
        self._failure: _Failure | None = None
        self._changed: asyncio.Event | None = None
        self._started = time.perf_counter()
        self._pending_steps: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        self._steps_file: TextIO | None = None
        self.timings: dict[str, float] = {}
        # Every node process writes its own checkpoint files and reports them; the marker that
        # completes a round is ours, once every node (and so every step line) has reached it.
        self.markers = CheckpointMarkers(self.results_dir, self.node_ids, prepared.plan.schedule.rounds,
                                         "processes")
        self._continues = prepared.faults.policy == "continue"
        self._gone: set[str] = set()
        """Client processes that died or failed under ``faults.policy: continue``."""
        self._checkpointed: set[int] = set()

    # -- main flow ----------------------------------------------------------------------------

    async def run(self):
        from p2pgan.run.session import RunOutcome

        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = []
        for sig, why in ((signal.SIGINT, "stopped by Ctrl-C"), (signal.SIGTERM, "stopped by SIGTERM")):
            try:
                loop.add_signal_handler(sig, self._fail, None, why, "interrupted")
                handled.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                pass
        schedule = self.prepared.plan.schedule
        self._print(f"run {self.scenario.name}: {len(self.node_ids) - 1} clients, strategy {self.scenario.strategy.name}, "
                    f"transport http, {len(self.node_ids)} processes on {self.scenario.transport.host}, seed "
                    f"{self.scenario.seed}, {schedule.rounds} rounds x {schedule.local_epochs} epochs x "
                    f"{schedule.steps_per_epoch} steps -> {self.results_dir}"
                    + (f" (resumed after round {self.resume.round})" if self.resume is not None else ""))
        try:
            try:
                await self._spawn_all()
            except OSError as exc:
                self._fail(None, f"cannot start the node processes ({exc.strerror or exc})")
            await self._wait_for(lambda: all(c.url for c in self.children.values()), self._startup_timeout_s,
                                 "did not bind its server in time")
            if self._failure is None:
                self.timings["startup_s"] = time.perf_counter() - self._started
                peers = {node: child.url for node, child in self.children.items()}
                self._write_node_table()
                for child in self.children.values():
                    self._send(child, {"cmd": "start", "peers": peers})
                self.timings["run_started"] = time.perf_counter()
                self._print(f"nodes up in {self.timings['startup_s']:.1f}s: "
                            + ", ".join(f"{n}={u}" for n, u in list(peers.items())[:4])
                            + (" ..." if len(peers) > 4 else ""))
                await self._wait_for(lambda: all(c.exit_code is not None for c in self.children.values()), None, "")
        finally:
            await self._shutdown()
            for sig in handled:
                loop.remove_signal_handler(sig)
            self._flush_steps(everything=True)
            if self._steps_file is not None:
                self._steps_file.close()
        wall = time.perf_counter() - self._started
        failure = self._failure
        status = failure.status if failure else "completed"
        summary = self._final_summary(status, failure.detail if failure else "", wall)
        self._print(f"run {status} in {wall:.1f}s" + (f": {failure.detail}" if failure else ""))
        return RunOutcome(status, summary, self.prepared, failure.error if failure else None)

    async def _spawn_all(self) -> None:
        nodes_dir = self.results_dir / "nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        raw, source = scenario_snapshot(self.scenario)
        import torch

        transport = self.scenario.transport
        # Children reuse the measured model costs instead of profiling the model again (seconds each).
        costs = [dataclasses.asdict(block) for block in self.prepared.setup.costs.blocks]
        for index, node_id in enumerate(self.node_ids):
            if self._failure is not None:
                return
            log_path = nodes_dir / f"{node_id}.log"
            with log_path.open("ab" if self.resume is not None else "wb") as log:  # a resume keeps the story
                proc = await asyncio.create_subprocess_exec(
                    self._python, "-m", "p2pgan", "node", "serve", "--node", node_id, "--control", "stdio",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    env=self._env, start_new_session=True, limit=CONTROL_LINE_LIMIT)
            child = _Child(node_id, proc, log_path, pid=proc.pid)
            self.children[node_id] = child
            child.reader = asyncio.create_task(self._read(child), name=f"read-{node_id}")
            self._send(child, {
                "cmd": "config", "scenario": raw, "source": source, "secret": self._secret.hex(),
                "threads": torch.get_num_threads(), "host": transport.host, "costs": costs,
                "port": transport.port + index if transport.port else 0,
                "startup_timeout_s": self._startup_timeout_s,
                "resume_round": self.resume.round if self.resume is not None else None,
            })

    async def _wait_for(self, done: Callable[[], bool], timeout: float | None, problem: str) -> None:
        assert self._changed is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done() and self._failure is None:
            self._changed.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                late = [c.node_id for c in self.children.values() if not c.url]
                self._fail(late[0] if late else "?", f"{problem} ({timeout:g} s)")
                return
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _shutdown(self) -> None:
        alive = lambda: [c for c in self.children.values() if c.exit_code is None]  # noqa: E731
        if alive() and self._failure is None:
            self._fail(None, "the coordinator stopped", "failed")
        await self._wait_quietly(lambda: not alive(), self._grace_s)
        for signum, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not alive():
                break
            for child in alive():
                try:
                    child.proc.send_signal(signum)
                except ProcessLookupError:
                    pass
            await self._wait_quietly(lambda: not alive(), wait_s)
        readers = [c.reader for c in self.children.values() if c.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=5.0)
        for child in self.children.values():
            if child.proc.stdin is not None and not child.proc.stdin.is_closing():
                child.proc.stdin.close()

    async def _wait_quietly(self, done: Callable[[], bool], timeout: float) -> None:
        assert self._changed is not None
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    # -- children -----------------------------------------------------------------------------

    async def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        try:
            while True:
                try:
                    line = await child.proc.stdout.readline()
                except ValueError:  # an over-long line: not from our protocol
                    continue
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self._on_event(child, event)
        finally:
            child.exit_code = await child.proc.wait()
            self._on_exit(child)
            if self._changed is not None:
                self._changed.set()

    def _on_event(self, child: _Child, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "listening":
            child.url = str(event.get("url"))
        elif kind == "losses":
            self._add_step(event.get("record", {}))
        elif kind == "round":
            self._print_round(event)
        elif kind == "checkpoint":
            self._on_checkpoint(child, event)
        elif kind == "finished":
            child.finished = event
            if event.get("status") != "completed":
                peer = event.get("peer") or child.node_id
                problem = str(event.get("problem") or event.get("detail") or "failed")
                if not self._lose(child, f"it {event.get('status')}: peer {peer}: {problem}"):
                    self._fail(str(peer), problem)
        if self._changed is not None:
            self._changed.set()

    def _on_exit(self, child: _Child) -> None:
        code = child.exit_code
        finished = child.finished
        if finished is not None and finished.get("status") == "completed" and code == 0:
            return
        if code is not None and code < 0:
            try:
                how = f"died ({signal.Signals(-code).name})"
            except ValueError:
                how = f"died (signal {-code})"
        else:
            how = f"exited with code {code}"
        where = f"; log: {child.log_path}"
        if self._lose(child, f"node process {how}{where}"):
            return
        if finished is None:
            self._fail(child.node_id, f"node process {how} before finishing{where}")
        else:
            self._fail(child.node_id, f"node process {how}{where}")

    def _lose(self, child: _Child, why: str) -> bool:
        """Under ``faults.policy: continue`` a client's process ending early is not the run's end:
        it is gone (the server drops it as a dead peer). True when so."""
        if not self._continues or child.node_id == SERVER_ID or self._failure is not None:
            return False
        if child.node_id not in self._gone:
            self._gone.add(child.node_id)
            self._print(f"client {child.node_id} gone ({why}); the run goes on without it (faults.policy: continue)")
            for round_ in sorted(self._checkpointed - set(self.markers.complete)):
                self.markers.report(round_, [child.node_id], {})
            self._flush_steps()
        return True

    def _fail(self, peer: str | None, problem: str, status: str = "failed") -> None:
        """Record the first failure and tell every running child to abort."""
        if self._failure is not None:
            return
        self._failure = _Failure(status, peer, problem)
        for child in self.children.values():
            if child.exit_code is not None:
                continue
            if child.url is None:
                # Still loading (not reading its control pipe yet): nothing to flush, stop it now.
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            else:
                self._send(child, {"cmd": "abort", "status": status, "peer": peer, "problem": problem})
        if self._changed is not None:
            self._changed.set()

    def _send(self, child: _Child, command: dict[str, Any]) -> None:
        stdin = child.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        try:
            stdin.write((json.dumps(command) + "\n").encode("utf-8"))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass

    # -- results ------------------------------------------------------------------------------

    def _on_checkpoint(self, child: _Child, event: dict[str, Any]) -> None:
        round_, files = event.get("round"), event.get("files")
        if not isinstance(round_, int) or not isinstance(files, dict):
            return
        self._flush_steps()
        self._checkpointed.add(round_)
        self.markers.report(round_, [child.node_id, *sorted(self._gone)], {str(k): str(v) for k, v in files.items()})

    def _add_step(self, record: dict[str, Any]) -> None:
        try:
            key = (int(record["round"]), int(record["step"]))
            node = str(record["node"])
        except (KeyError, TypeError, ValueError):
            return
        self._pending_steps.setdefault(key, {})[node] = record
        self._flush_steps()

    def _flush_steps(self, everything: bool = False) -> None:
        """Write each step's losses once every client taking part reported it, in client-id order."""
        faults = self.prepared.faults
        for key in sorted(self._pending_steps):
            records = self._pending_steps[key]
            if not everything and not (faults.present(*key) - self._gone) <= set(records):
                continue
            if self._steps_file is None:
                self._steps_file = (self.results_dir / "steps.jsonl").open("a", encoding="utf-8")
            for node in sorted(records):
                self._steps_file.write(json.dumps(records[node]) + "\n")
            del self._pending_steps[key]
        if self._steps_file is not None:
            self._steps_file.flush()

    def _write_node_table(self) -> None:
        table = {node: {"url": c.url, "pid": c.pid, "log": str(c.log_path)} for node, c in self.children.items()}
        path = self.results_dir / "nodes" / "nodes.json"
        path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")

    def _final_summary(self, status: str, detail: str, wall: float) -> dict[str, Any]:
        path = self.results_dir / "summary.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                summary = {}
        except (OSError, ValueError):
            summary = {}
        checkpoints = summary.get("checkpoints")
        if isinstance(checkpoints, dict) and self.markers.complete:  # only we know which rounds completed
            checkpoints["last_complete_round"] = self.markers.complete[-1]
        if summary and summary.get("status") == status and (status == "completed" or summary.get("detail") == detail):
            # The server's summary alone does not make a run complete: its node processes can finish
            # after a killed coordinator, whose steps.jsonl then lacks lines. Ours is the verdict.
            summary["coordinator"] = {"status": status}
            self._write_summary(path, summary)
            return summary
        if not summary:  # the server process never got to write it
            rounds = 0
            try:
                rounds = sum(1 for line in (self.results_dir / "rounds.jsonl").open(encoding="utf-8") if line.strip())
            except OSError:
                pass
            summary = {"scenario": self.scenario.name, "wall_s": round(wall, 3), "rounds_completed": rounds,
                       "rounds_planned": self.prepared.plan.schedule.rounds}
        summary.update(status=status, detail=detail, coordinator={"status": status})
        self._write_summary(path, summary)
        return summary

    @staticmethod
    def _write_summary(path: Path, summary: dict[str, Any]) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    # -- console ------------------------------------------------------------------------------

    def _print_round(self, event: dict[str, Any]) -> None:
        losses = event.get("losses") or {}
        shown = " ".join(f"{cid}:D={v.get('d_loss', 0):.3f}/G={v.get('g_loss', 0):.3f}"
                         for cid, v in list(losses.items())[:4] if isinstance(v, dict))
        more = " ..." if len(losses) > 4 else ""
        self._print(f"round {event.get('round')}/{self.prepared.plan.schedule.rounds} done in "
                    f"{time.perf_counter() - self._started:.1f}s {shown}{more}")

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def run_processes(scenario: Scenario, *, out: TextIO | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                  grace_s: float = GRACE_S, prepared=None, resume: ResumePoint | None = None):
    """Run ``scenario`` with every node in its own process over HTTP on this host -> RunOutcome.
    ``resume``: continue from that checkpoint (every node process loads its own state)."""
    from p2pgan.run.prepare import prepare_run

    if scenario.transport.kind != "http":
        raise ConfigError(str(scenario.source), "transport.processes", "needs transport.kind: http")
    # The coordinator writes results and prices the run; it holds no client example.
    prepared = prepared or prepare_run(scenario, for_node=SERVER_ID)
    coordinator = Coordinator(prepared, out=out, startup_timeout_s=startup_timeout_s, grace_s=grace_s, resume=resume)
    return asyncio.run(coordinator.run())


PREVIOUS_NODES_WAIT_S = 30.0
"""How long a resume waits for the node processes of a killed coordinator to notice and stop."""


def wait_for_previous_nodes(results_dir: Path, timeout_s: float = PREVIOUS_NODES_WAIT_S) -> None:
    """Wait until no node process of the folder's previous run (``nodes/nodes.json``) is alive.

    Node processes run in their own session, so a SIGKILLed coordinator leaves them running
    until they see their control pipe close; a resume must not start while one still writes.
    """
    try:
        table = json.loads((Path(results_dir) / "nodes" / "nodes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(table, dict):
        return
    pids = {node: entry.get("pid") for node, entry in table.items() if isinstance(entry, dict)}
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {node: pid for node, pid in pids.items() if isinstance(pid, int) and is_node_process(pid)}
        if not alive:
            return
        if time.monotonic() >= deadline:
            node, pid = next(iter(alive.items()))
            raise P2PGanError(f"{results_dir}: node process {pid} ({node}) of the previous run is still running "
                              f"after {timeout_s:g} s; stop it (kill {pid}) and resume again")
        time.sleep(0.1)


def is_node_process(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) a ``p2pgan node serve`` process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return True  # no /proc: trust the signal check
    if status and status[0] == "Z":  # a zombie writes nothing
        return False
    return b"node" in cmdline and b"serve" in cmdline


# -- child (one node per process) -----------------------------------------------------------------


class ControlChannel:
    """The child's side of the coordinator pipe: JSON lines in on stdin, out on the original stdout."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        # Keep the real stdout for the protocol; anything else printed goes to stderr (the log).
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self.transport = None
        self._watcher: asyncio.Task | None = None
        self.startup_timeout_s = STARTUP_TIMEOUT_S

    def attach(self, transport) -> None:
        self.transport = transport

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._out.write(json.dumps(event) + "\n")
            self._out.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def read_config(self) -> dict[str, Any]:
        """The first line on stdin, read unbuffered (the rest is read by the event loop later)."""
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = os.read(0, 1)
            if not chunk:
                raise P2PGanError(f"node {self.node_id}: the coordinator closed the control pipe before sending the scenario")
            data += chunk
        message = json.loads(data)
        if not isinstance(message, dict) or message.get("cmd") != "config":
            raise P2PGanError(f"node {self.node_id}: expected a config command first")
        return message

    async def rendezvous(self, local_urls: dict[str, str]) -> dict[str, str]:
        """Report our URL, wait for the peer table, then keep listening for abort commands."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CONTROL_LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0, closefd=False))
        self.send({"event": "listening", "node": self.node_id, "url": local_urls[self.node_id], "pid": os.getpid()})
        try:
            line = await asyncio.wait_for(reader.readline(), self.startup_timeout_s)
        except asyncio.TimeoutError:
            raise PeerError("coordinator", f"no peer table within {self.startup_timeout_s:g} s") from None
        command = json.loads(line) if line.strip() else {"cmd": "abort", "status": "failed", "peer": "coordinator",
                                                         "problem": "the coordinator went away"}
        if command.get("cmd") == "abort":
            self._abort(command, during_start=True)
        if command.get("cmd") != "start" or not isinstance(command.get("peers"), dict):
            raise PeerError("coordinator", f"unexpected control command {command.get('cmd')!r}")
        self._watcher = loop.create_task(self._watch(reader), name="control")
        return {str(k): str(v) for k, v in command["peers"].items()}

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                self._abort({"status": "failed", "peer": "coordinator", "problem": "the coordinator went away"})
                return
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if isinstance(command, dict) and command.get("cmd") == "abort":
                self._abort(command)

    def _abort(self, command: dict[str, Any], during_start: bool = False) -> None:
        if command.get("status") == "interrupted":
            if during_start:
                raise KeyboardInterrupt
            # The same path as Ctrl-C in a single-process run: asyncio cancels, results are flushed.
            os.kill(os.getpid(), signal.SIGINT)
            return
        error = PeerError(str(command.get("peer") or "coordinator"), str(command.get("problem") or "run aborted"))
        if during_start:
            raise error
        if self.transport is not None:
            self.transport.fail_all(error)

    def checkpoint_written(self, round_: int, nodes: Sequence[str], files: Mapping[str, str]) -> None:
        """This node's checkpoint files for ``round_`` are on disk: the coordinator completes the round."""
        self.send({"event": "checkpoint", "node": self.node_id, "round": round_, "files": dict(files)})

    def forward(self, event: object) -> None:
        """Event-bus observer: client losses and round ends go to the coordinator."""
        from p2pgan.protocol.events import ClientLosses
        from p2pgan.protocol.events import RoundAggregated

        if isinstance(event, ClientLosses):
            self.send({"event": "losses", "record": dataclasses.asdict(event)})
        elif isinstance(event, RoundAggregated):
            self.send({"event": "round", "round": event.round, "losses": event.losses})


def _sigterm_as_interrupt() -> None:
    """SIGTERM takes the Ctrl-C path (results flushed, status "interrupted")."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


ORPHAN_POLL_S = 0.25


def _stop_when_orphaned() -> None:
    """A node whose coordinator died (SIGKILL: no abort comes) stops as if interrupted, also
    after training, while it would still evaluate and write results nobody completes: a resume
    waits for the previous run's nodes, and they should not keep the cores busy meanwhile."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def serve_controlled(node_id: str) -> int:
    """Body of ``p2pgan node serve --control stdio`` (started by :func:`run_processes`)."""
    channel = ControlChannel(node_id)
    _sigterm_as_interrupt()
    _stop_when_orphaned()
    status, peer, problem, code = "completed", None, "", 0
    try:
        config = channel.read_config()
        import torch

        torch.set_num_threads(int(config.get("threads") or torch.get_num_threads()))
        channel.startup_timeout_s = float(config.get("startup_timeout_s") or STARTUP_TIMEOUT_S)
        scenario = load_snapshot(config["scenario"], config["source"])
        secret = bytes.fromhex(config["secret"])
        listen = (str(config.get("host") or scenario.transport.host), int(config.get("port") or 0))
        costs = _costs_from(scenario, config.get("costs"))
        resume_round = config.get("resume_round")
        resume = ResumePoint(scenario.results_dir, int(resume_round)) if isinstance(resume_round, int) else None
        outcome_status, error = _run_node(scenario, node_id, secret, {}, listen, channel.rendezvous,
                                          [channel.forward], channel.attach, costs=costs, resume=resume,
                                          checkpoint_written=channel.checkpoint_written)
        status = outcome_status
        if error is not None:
            peer, problem = _split_error(error, node_id)
            code = getattr(error, "exit_code", 1)
        elif status == "interrupted":
            problem, code = "stopped by Ctrl-C", 130
    except KeyboardInterrupt:
        status, problem, code = "interrupted", "stopped by Ctrl-C", 130
    except P2PGanError as exc:
        status, code = "failed", exc.exit_code
        peer, problem = _split_error(exc, node_id)
    except Exception as exc:  # a bug: keep the traceback in the node's log, report one line
        traceback.print_exc()
        status, code, peer, problem = "failed", 1, node_id, f"internal error: {exc.__class__.__name__}: {exc}"
    channel.send({"event": "finished", "node": node_id, "status": status, "peer": peer, "problem": problem,
                  "exit_code": code})
    return code


def _costs_from(scenario: Scenario, blocks: object):
    """The coordinator's measured :class:`ModelCosts`, rebuilt from plain JSON (None: profile here)."""
    from p2pgan.model.costs import BlockCost, ModelCosts

    if not isinstance(blocks, list) or not blocks:
        return None
    return ModelCosts(scenario.model_spec, tuple(BlockCost(**block) for block in blocks))


def _split_error(error: BaseException, node_id: str) -> tuple[str, str]:
    if isinstance(error, PeerError):
        return error.peer, str(error).removeprefix(f"peer {error.peer}: ")
    return node_id, str(error)


def _run_node(scenario: Scenario, node_id: str, secret: bytes, peers: Mapping[str, str], listen: tuple[str, int],
              rendezvous, observers: Sequence[Callable[[object], None]],
              on_transport: Callable[[Any], None] | None = None,
              steps_file: Path | None = None, costs=None, prepared=None, resume: ResumePoint | None = None,
              checkpoint_written: Completed | None = None) -> tuple[str, BaseException | None]:
    """Run one node of ``scenario`` here. Returns (status, error).

    ``on_transport`` gets the node's :class:`HttpTransport` before it opens (for aborts and pings).
    ``resume``: start after that checkpoint with this node's saved state; ``checkpoint_written``:
    where this node reports the checkpoint files it wrote (none: it writes none).
    """
    from p2pgan.run.prepare import prepare_run
    from p2pgan.run.nodes import run_nodes
    from p2pgan.strategies.catalogue import strategy_for
    from p2pgan.bus import EventBus
    from p2pgan.run.session import run_scenario
    from transports.http import HttpTransport

    prepared = prepared or prepare_run(scenario, costs, for_node=node_id)
    all_nodes = [SERVER_ID, *prepared.plan.client_ids]
    if node_id not in all_nodes:
        raise ConfigError(str(scenario.source), "--node",
                          f"unknown node {node_id!r} (this scenario has {', '.join(all_nodes[:6])}"
                          f"{', ...' if len(all_nodes) > 6 else ''})")
    spec = scenario.transport
    transport = HttpTransport(receive_timeout_s=spec.timeout_s, host=listen[0], port=listen[1], retries=spec.retries,
                              max_message_mb=spec.max_message_mb, secret=secret,
                              peers={n: u for n, u in peers.items() if n != node_id},
                              listen={node_id: listen}, rendezvous=rendezvous, nodes=all_nodes,
                              message_specs=strategy_for(scenario).program.message_specs())
    if on_transport is not None:
        on_transport(transport)
    if node_id == SERVER_ID:
        outcome = run_scenario(scenario, observers, transport=transport, prepared=prepared, node_ids=[SERVER_ID],
                               resume=resume, checkpoint_written=checkpoint_written)
        return outcome.status, outcome.error
    checkpointer = None
    if scenario.checkpoint.enabled and checkpoint_written is not None:
        checkpointer = RoundCheckpointer(scenario.results_dir, scenario.checkpoint.every,
                                         prepared.plan.schedule.rounds, [node_id], None, checkpoint_written)
    states = resume.node_states([node_id]) if resume is not None else None
    first_round = resume.first_round if resume is not None else 1
    bus = EventBus()
    for observer in observers:
        bus.subscribe(observer)
    handle = None
    if steps_file is not None:
        steps_file.parent.mkdir(parents=True, exist_ok=True)
        handle = steps_file.open("w", encoding="utf-8")
        bus.subscribe(_StepsWriter(handle))
    status, error = "completed", None
    try:
        asyncio.run(run_nodes(prepared, transport, bus, [node_id], first_round=first_round, states=states,
                              checkpoint=checkpointer))
    except KeyboardInterrupt:
        status = "interrupted"
    except P2PGanError as exc:
        status, error = "failed", exc
    finally:
        if checkpointer is not None and status != "completed":
            checkpointer.flush()  # the last round this node completed (Ctrl-C, SIGTERM, a failed peer)
        if handle is not None:
            handle.close()
    return status, error


class _StepsWriter:
    def __init__(self, handle: TextIO) -> None:
        self._handle = handle

    def __call__(self, event: object) -> None:
        from p2pgan.protocol.events import ClientLosses

        if isinstance(event, ClientLosses):
            self._handle.write(json.dumps(dataclasses.asdict(event)) + "\n")
            self._handle.flush()


# -- standalone node (several hosts) --------------------------------------------------------------


def load_peer_table(path: Path, node_ids: Sequence[str]) -> dict[str, str]:
    """``{node: "http://host:port"}`` from a YAML/JSON file listing every node of the run."""
    from p2pgan.config.yamlfile import parse_yaml, read_text_file
    from transports.http import parse_url

    source = str(path)
    raw = parse_yaml(read_text_file(Path(path), "peer table"), source)  # strict: UTF-8, no repeated node
    if isinstance(raw, dict) and set(raw) == {"peers"}:
        raw = raw["peers"]
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "expected a mapping of node id -> http://host:port")
    table = {}
    for node, url in raw.items():
        node, url = str(node), str(url)
        if "://" not in url:
            url = "http://" + url
        try:
            parse_url(url)
        except ValueError as exc:
            raise ConfigError(source, node, str(exc)) from None
        table[node] = url.rstrip("/")
    missing = [n for n in node_ids if n not in table]
    if missing:
        raise ConfigError(source, "", f"no address for node(s) {', '.join(missing)} (every node of the run needs one)")
    unknown = [n for n in table if n not in node_ids]
    if unknown:
        raise ConfigError(source, unknown[0], f"not a node of this run (nodes: {', '.join(node_ids)})")
    return table


def read_secret(secret_file: Path | None) -> bytes:
    """The run secret from ``--secret-file``, ``$P2PGAN_SECRET_FILE`` or ``$P2PGAN_SECRET`` (hex)."""
    from transports.wire import parse_secret

    path = secret_file or (Path(os.environ["P2PGAN_SECRET_FILE"]) if os.environ.get("P2PGAN_SECRET_FILE") else None)
    if path is not None:
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot read the secret file ({exc.strerror or exc})") from None
        if mode & 0o077:
            raise ConfigError(str(path), "", f"secret file is accessible by other users (mode {mode & 0o777:o}); "
                                             f"run: chmod 600 {path}")
        where = str(path)
    elif os.environ.get("P2PGAN_SECRET"):
        text, where = os.environ["P2PGAN_SECRET"], "$P2PGAN_SECRET"
    else:
        raise P2PGanError("no run secret: pass --secret-file FILE or set P2PGAN_SECRET_FILE "
                          "(create one with `p2pgan node secret FILE` and copy it to every host)")
    try:
        return parse_secret(text)
    except ValueError as exc:
        raise ConfigError(where, "", str(exc)) from None


def write_secret(path: Path) -> None:
    """Create a new 0600 file holding a random 32-byte run secret (hex)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise P2PGanError(f"{path}: already exists (refusing to overwrite a secret)") from None
    except OSError as exc:
        raise P2PGanError(f"{path}: cannot create ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def serve_standalone(scenario: Scenario, node_id: str, peers_file: Path, listen: tuple[str, int] | None,
                     secret_file: Path | None, wait_s: float, out: TextIO | None = None,
                     server_progress: Callable[[TextIO], Callable[[object], None]] | None = None) -> int:
    """``p2pgan node serve --scenario FILE --node ID --peers FILE``: one node of a multi-host run."""
    from p2pgan.run.prepare import prepare_run
    from transports.http import parse_url

    out = out or sys.stdout
    secret = read_secret(secret_file)
    prepared = prepare_run(scenario, for_node=node_id)
    node_ids = [SERVER_ID, *prepared.plan.client_ids]
    if node_id not in node_ids:
        raise ConfigError(str(scenario.source), "--node", f"unknown node {node_id!r} (nodes: {', '.join(node_ids)})")
    peers = load_peer_table(peers_file, node_ids)
    listen = listen or parse_url(peers[node_id])
    talks_to = [n for n in node_ids if n != node_id] if node_id == SERVER_ID else [SERVER_ID]

    async def rendezvous(local_urls: dict[str, str]) -> dict[str, str]:
        transport = holder["transport"]
        print(f"node {node_id} listening on {local_urls[node_id]}; waiting for {', '.join(talks_to[:6])}"
              f"{' ...' if len(talks_to) > 6 else ''} (up to {wait_s:g} s)", file=out, flush=True)
        # The server waits until every client answers; clients wait until the server is ready,
        # so nobody's receive deadline starts while a peer is still being launched.
        await transport.wait_until_ready(node_id, talks_to, wait_s, need_ready=node_id != SERVER_ID)
        transport.mark_ready(node_id)
        print(f"node {node_id}: all peers up, training", file=out, flush=True)
        return peers

    holder: dict[str, Any] = {}
    if node_id == SERVER_ID:
        observers: list[Callable[[object], None]] = [server_progress(out)] if server_progress else []
    else:
        observers = [_ClientProgress(node_id, out)]
    steps_file = None if node_id == SERVER_ID else Path(scenario.results_dir) / "nodes" / f"{node_id}.steps.jsonl"
    try:
        status, error = _run_node(scenario, node_id, secret, peers, listen, rendezvous, observers,
                                  lambda transport: holder.update(transport=transport), steps_file, prepared=prepared)
    except KeyboardInterrupt:
        status, error = "interrupted", None
    if status == "completed":
        print(f"node {node_id}: run completed" + (f"; results: {scenario.results_dir}" if node_id == SERVER_ID else ""),
              file=out, flush=True)
        return 0
    if error is not None:
        raise error
    print(f"node {node_id}: run {status}", file=sys.stderr, flush=True)
    return 130


class _ClientProgress:
    def __init__(self, node_id: str, out: TextIO) -> None:
        self._node = node_id
        self._out = out
        self._started = time.perf_counter()

    def __call__(self, event: object) -> None:
        from p2pgan.protocol.events import ClientLosses

        if isinstance(event, ClientLosses) and event.step == 0:
            print(f"node {self._node}: round {event.round} started ({time.perf_counter() - self._started:.1f}s) "
                  f"D={event.d_loss:.3f} G={event.g_loss:.3f}", file=self._out, flush=True)
