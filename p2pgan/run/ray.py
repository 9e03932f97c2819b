"""A run on Ray (``execution: {engine: ray}``): the server and shards of clients as Ray actors.

``run_ray(scenario)`` is the driver. It

1. prepares the run here with no client example (``for_node=SERVER_ID``, as a coordinator does)
   and opens the results folder: this process writes it, exactly as a memory run does;
2. connects to Ray (``ray.address``, else ``$RAY_ADDRESS``, else ``local``: a private Ray on this
   machine, started for the run by a keeper process and ended with it, even if this process is
   killed, see run/ray_keeper.py; a Ray already initialised in this process is used as it is and
   left running);
3. creates one actor for the server and ``ray.shards`` actors for the clients (contiguous runs of
   client ids), each with ``num_cpus_per_shard`` / ``num_gpus_per_shard`` and spread over the
   cluster's nodes; each prepares through :func:`~p2pgan.run.prepare.prepare_run` keeping only its
   own clients' examples, then runs the existing node classes (``run_nodes``) in its event loop
   over :class:`transports.ray.RayTransport`;
4. pulls every actor's events (clients' losses, the server's round ends and log lines) back onto
   its own bus: steps are written per step in client-id order, rounds go through the round
   closer and its extensions (latency priced from the program, ``sees_all_nodes=False``), so the
   live view and plain progress see what they see in a memory run;
5. writes the checkpoints (run/checkpoint.py): at each due round end every actor sends its nodes'
   states here, the driver writes them with its own run side (results writer, extensions) and
   completes the round's marker; a resume (``resume=``) reads the checkpoint here and hands each
   actor its nodes' states, so actors never need the results folder's disk;
6. on an actor that dies, an actor that fails, an unreachable cluster or Ctrl-C: records one line
   naming the actor, tells every other actor to abort, keeps what was written, writes the summary
   (``failed`` / ``interrupted``) and kills every actor it created;
7. except, under ``faults.policy: continue``, for a shard that dies or fails: its clients are gone
   (the server actor drops them at once, and learns it itself from a message it cannot deliver),
   no later step or checkpoint waits for them, and a resume hosts them nowhere. The server actor
   dying always fails the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import signal
import socket
import statistics
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions
import torch

from p2pgan.bus import EventBus
from p2pgan.config.schema import Scenario
from p2pgan.data import clear_cache
from p2pgan.engine.participation import ParticipationView
from p2pgan.engine.state import NodeState
from p2pgan.errors import ClusterError, P2PGanError, PeerError
from p2pgan.ids import SERVER_ID, natural_key
from p2pgan.protocol.events import (ClientLosses, ComputeEvent, LogEvent, NodeStopped, ParticipationChanged,
                                    RoundAggregated, RunFinished)
from p2pgan.report.write import write_report
from p2pgan.run.checkpoint import Checkpointable, CheckpointMarkers, ResumePoint, RoundCheckpointer, RunSide
from p2pgan.run.closer import RoundCloser
from p2pgan.run.cohort import run_shard_cohort, shard_client_mode
from p2pgan.run.nodes import run_nodes
from p2pgan.run.prepare import prepare_run
from p2pgan.run.processes import load_snapshot, scenario_snapshot
from p2pgan.run.ray_keeper import KeeperError, PrivateRay
from p2pgan.run.results import ResultsWriter
from p2pgan.run.session import (RunOutcome, _checkpoint_summary, _extensions, preparation_progress,
                                run_started_event)
from p2pgan.runtime import keep_freed_memory
from p2pgan.strategies.catalogue import strategy_for
from transports.catalogue import create_transport
from transports.ray import from_arrays, to_arrays

Observer = Callable[[object], None]

STARTUP_TIMEOUT_S = 180.0
"""How long an actor may take to be placed, load its clients' data and build its nodes."""
GRACE_S = 15.0
"""After an abort: how long actors get to stop their nodes before they are killed."""
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
"""A private Ray's object store: messages are small and short-lived."""
LOCAL_MIN_CPUS = 2
NAMESPACE = "p2pgan"
POLL_S = 1.0
"""How long an actor holds an event request open when it has nothing to report."""
REPLY_STATE_BYTES = 64 * 2**20
"""At most this much checkpoint state in one reply to the driver (a shard's states go in parts,
so no reply outgrows a small object store)."""


# -- where it runs ------------------------------------------------------------------------------


def ray_address(scenario: Scenario, environ: Mapping[str, str] | None = None) -> str:
    """``ray.address`` of the scenario, else ``$RAY_ADDRESS``, else ``local``."""
    environ = os.environ if environ is None else environ
    return scenario.ray.address or environ.get("RAY_ADDRESS") or "local"


def shard_clients(client_ids: Sequence[str], shards: int) -> list[list[str]]:
    """``shards`` contiguous runs of client ids, sizes differing by at most one."""
    ids = sorted(client_ids, key=natural_key)
    shards = max(1, min(shards, len(ids)))
    base, extra = divmod(len(ids), shards)
    out, start = [], 0
    for index in range(shards):
        size = base + (1 if index < extra else 0)
        out.append(ids[start:start + size])
        start += size
    return out


class RayConnection:
    """Ray for one run: started for it (``local``), joined (a cluster), or already initialised.

    ``local`` is a private Ray in a keeper process (run/ray_keeper.py), so that it ends with this
    process even when this process is killed outright.
    """

    def __init__(self, address: str, cpus_needed: float, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.address = address
        self._cpus_needed = cpus_needed
        self._startup_timeout_s = startup_timeout_s
        self._private: PrivateRay | None = None
        self.owned = False

    def connect(self) -> None:
        if ray.is_initialized():
            self.address = "existing"
            return
        target = self.address
        if self.address == "local":
            self._private = PrivateRay(max(LOCAL_MIN_CPUS, math.ceil(self._cpus_needed)), LOCAL_OBJECT_STORE_BYTES)
            try:
                target = self._private.start(self._startup_timeout_s)
            except KeeperError as exc:
                self._private = None
                raise ClusterError(f"ray: cannot start a local Ray: {exc}") from None
            _join_local_auth()
        elif self.address.startswith("ray://"):
            self._probe(self.address)
        try:
            ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, RuntimeError, a missing ray[client] ...
            ray.shutdown()  # a failed ray:// connection leaves the client mode on: a later init would fail
            self._stop_private()
            raise ClusterError(f"ray: cannot reach the cluster at {self.address}: {_first_line(exc)}") from None
        self.owned = True

    def _probe(self, address: str) -> None:
        """Ray's client retries an unreachable ``ray://`` address for half a minute whatever the
        run's start-up timeout: a refused or silent port is told at once instead."""
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, self._startup_timeout_s)).close()
        except OSError as exc:
            raise ClusterError(f"ray: cannot reach the cluster at {address}: {exc.strerror or exc}") from None

    def check_resources(self, cpus: float, gpus: float) -> None:
        total = ray.cluster_resources()
        for kind, needed, how in (("CPU", cpus, "num_cpus_server + shards x num_cpus_per_shard"),
                                  ("GPU", gpus, "server + shards x num_gpus_per_shard")):
            have = float(total.get(kind, 0.0))
            if needed > have + 1e-9:
                raise ClusterError(f"ray: the run needs {needed:g} {kind}s ({how}) but the cluster at "
                                   f"{self.address} has {have:g}")

    def close(self) -> None:
        if self.owned and ray.is_initialized():
            ray.shutdown()
        self.owned = False
        self._stop_private()

    def _stop_private(self) -> None:
        if self._private is not None:
            self._private.stop()
            self._private = None


def _join_local_auth() -> None:
    """Use the token authentication of the keeper's Ray (on by default for a Ray started on this
    machine), as ``ray.init()`` does when it finds a local Ray by itself; given an address it
    never does. Ray's own helper, where this Ray version has one (older ones have no tokens)."""
    try:
        from ray._private.authentication.authentication_token_setup import \
            maybe_enable_token_auth_if_token_available
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


# -- one actor: a host of nodes -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeCheckpoint:
    """One node's state at the end of a due checkpoint round, on its way to the driver."""

    round: int
    node: str
    arrays: dict[str, Any]
    """:func:`transports.ray.to_arrays` of its :class:`NodeState` tensors."""

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(a, "nbytes", 0)) for a in self.arrays.values())


@dataclass(frozen=True)
class ResumeStates:
    """What an actor of a resumed run continues from: the checkpoint's round and its nodes' states
    (read by the driver, which holds the results folder: actors may run on other machines)."""

    round: int
    states: dict[str, dict[str, Any]]


def process_memory_mb(field_name: str = "VmHWM") -> float | None:
    """This process's ``VmHWM`` (peak resident set) or ``VmRSS`` from /proc/self/status, in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        pass
    return None


class ActorMeter:
    """What one actor costs, measured inside it: its peak memory and its CPU seconds per iteration.

    ``mark`` is told the events that end a node's part of a step (a client's losses, the server's
    computes); the last one of a step is when the actor finished its part of it, so the CPU time
    between two such marks is the actor's work for one iteration.
    """

    def __init__(self) -> None:
        self.base_mb = process_memory_mb("VmRSS")
        self._cpu_at: dict[tuple[int, int], float] = {}

    def mark(self, round_: int, step: int) -> None:
        if step >= 0:
            self._cpu_at[(round_, step)] = time.process_time()

    def report(self) -> dict[str, Any]:
        marks = sorted(self._cpu_at.items())
        # Within a round only: between two rounds lies the federation.
        per_iteration = [b - a for ((r0, _), a), ((r1, _), b) in zip(marks, marks[1:]) if r0 == r1]
        median = statistics.median(per_iteration) if per_iteration else None
        return {"base_mb": _rounded(self.base_mb), "peak_mb": _rounded(process_memory_mb("VmHWM")),
                "cpu_s_per_iteration": _rounded(median, 4), "iterations_timed": len(per_iteration)}


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class NodeHost:
    """The body of every actor of a Ray run: the server, or a shard of clients.

    Created with ``ray.remote(NodeHost)``; its methods are async, so Ray runs them on one event
    loop in the actor, the same loop that runs the nodes and receives their messages.
    """

    def __init__(self, name: str, node_ids: Sequence[str], threads: int) -> None:
        self.name = name
        self.node_ids = list(node_ids)
        self._cpus = max(1, threads)
        """The CPUs Ray gave this actor: its torch threads, or a cohort shard's client threads."""
        self._first_round = 1
        self._resume_states: dict[str, NodeState] | None = None
        torch.set_num_threads(self._cpus)
        keep_freed_memory()  # as in every process the command line starts (p2pgan/runtime.py)
        self._meter = ActorMeter()
        self._prepared = None
        self._transport = None
        self._events: deque[object] = deque()
        self._done: dict[str, Any] | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._nodes: _KeptNodes | None = None
        self._gone_at_start: tuple[list[str], str] | None = None
        self._cohort = False
        """A shard that runs its clients together (``ray.clients``, :func:`shard_client_mode`)."""

    async def prepare(self, raw: dict[str, Any], source: str, costs, resume: ResumeStates | None = None
                      ) -> dict[str, Any]:
        """Load this actor's clients' data and the plan (and, resuming, its nodes' saved states);
        report where it runs."""
        scenario = load_snapshot(raw, source)
        clients = [n for n in self.node_ids if n != SERVER_ID]
        self._prepared = prepare_run(scenario, costs, for_nodes=clients)
        self._cohort = bool(clients) and shard_client_mode(scenario, strategy_for(scenario)) == "cohort"
        if resume is not None:
            self._first_round = resume.round + 1
            self._resume_states = {node: NodeState(node, from_arrays(resume.states[node])) for node in self.node_ids}
        clear_cache()  # the domains were loaded whole; keep only this shard's clients' examples
        if self._cohort:
            # The cohort's CPU policy: each kernel on one intra-op thread, a client thread per CPU.
            torch.set_num_threads(1)
        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "clients_as": "cohort" if self._cohort else "nodes", "client_threads": self._cpus if self._cohort else 1,
                "examples": sum(len(d.labels) for d in self._prepared.client_data.values())}

    async def connect(self, routes: Mapping[str, Any], names: Mapping[str, str]) -> None:
        """Open this actor's endpoints (so peers can deliver from now on)."""
        scenario = self._prepared.scenario
        if SERVER_ID in self.node_ids and self._prepared.faults.policy == "continue":
            routes = _shard_routes(routes, names, self._drop)
        self._transport = create_transport("ray", routes=routes, actor_names=names,
                                           receive_timeout_s=scenario.transport.timeout_s,
                                           message_specs=strategy_for(scenario).program.message_specs())
        await self._transport.open(self.node_ids)

    async def start(self, gone: Sequence[str] = (), why: str = "") -> None:
        """Run the nodes; ``gone`` (the server's host, resuming): clients already gone, dropped before
        the first iteration."""
        self._wake = asyncio.Event()
        self._gone_at_start = (list(gone), why) if gone else None
        self._nodes = _KeptNodes(strategy_for(self._prepared.scenario), self._created)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def drop_peers(self, clients: Sequence[str], problem: str) -> None:
        """The server's host, ``faults.policy: continue``: ``clients`` are gone (their shard died);
        the server drops them at once."""
        if self._nodes is not None:
            await self._nodes.created.wait()
            self._drop(clients, problem)

    def _drop(self, clients: Sequence[str], problem: str) -> None:
        server = self._nodes.nodes.get(SERVER_ID) if self._nodes is not None else None
        if server is None:
            return
        try:
            server.participation.drop_gone(clients, problem, self._first_round)
        except P2PGanError as exc:  # nobody left: the server's next receive ends its run with this
            self._transport.fail_all(exc)

    async def deliver(self, parcels) -> None:
        self._transport.receive(parcels)

    async def next_events(self) -> tuple[list[object], dict[str, Any] | None]:
        """What happened since the last call, and how the run ended here once it has."""
        if not self._events and self._done is None:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
        events, state_bytes = [], 0
        while self._events:
            event = self._events[0]
            if isinstance(event, NodeCheckpoint):
                if events and state_bytes + event.nbytes > REPLY_STATE_BYTES:
                    break
                state_bytes += event.nbytes
            events.append(self._events.popleft())
        return events, self._done if not self._events else None

    async def abort(self, peer: str, problem: str) -> None:
        if self._transport is not None:
            self._transport.fail_all(PeerError(peer, problem))

    def _forward(self, event: object) -> None:
        # A client's step ends with its losses, the server's with its last compute. (Not every
        # compute: the process's CPU clock sums over Ray's many threads, at a cost per read.)
        if isinstance(event, ClientLosses) or (isinstance(event, ComputeEvent) and event.node == SERVER_ID):
            self._meter.mark(event.round, event.step)
        # Clients' losses, round ends and log lines; the server's computes feed the wall clock.
        # Transfers and clients' computes stay here: latency is priced from the program.
        if isinstance(event, (ClientLosses, RoundAggregated, LogEvent, ParticipationChanged, NodeStopped)) or (
                isinstance(event, ComputeEvent) and event.node == SERVER_ID):
            self._events.append(event)
            if self._wake is not None:
                self._wake.set()

    def _checkpoint(self, round_: int, state: NodeState) -> None:
        """A node's state after a round's federation: for a round that is due it goes to the driver,
        which writes the checkpoint once every node's has come."""
        spec, rounds = self._prepared.scenario.checkpoint, self._prepared.plan.schedule.rounds
        if round_ % spec.every or round_ >= rounds:
            return
        # Sent at once: each node's state is its own copy, and the driver waits for all anyway.
        self._events.append(NodeCheckpoint(round_, state.node_id, to_arrays(state.tensors, copy=False)))
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        bus = EventBus()
        bus.subscribe(self._forward)
        done: dict[str, Any] = {"status": "completed", "peer": None, "problem": "", "exit_code": 0}
        try:
            checkpoint = self._checkpoint if self._prepared.scenario.checkpoint.enabled else None
            if self._cohort:
                await run_shard_cohort(self._prepared, self._transport, bus, strategy_for(self._prepared.scenario),
                                       self.node_ids, self._cpus, self._first_round, self._resume_states, checkpoint)
            else:
                await run_nodes(self._prepared, self._transport, bus, self.node_ids, strategy=self._nodes,
                                first_round=self._first_round, states=self._resume_states, checkpoint=checkpoint)
        except P2PGanError as exc:
            peer = exc.peer if isinstance(exc, PeerError) else None
            problem = str(exc).removeprefix(f"peer {peer}: ") if peer else str(exc)
            done.update(status="failed", peer=peer, problem=problem, exit_code=exc.exit_code)
        except asyncio.CancelledError:
            done.update(status="interrupted", problem="cancelled", exit_code=130)
        except Exception as exc:  # a bug: the traceback goes to the actor's log, one line to the driver
            traceback.print_exc()
            done.update(status="failed", problem=f"internal error: {type(exc).__name__}: {exc}", exit_code=1)
        done["meter"] = self._meter.report()
        self._done = done
        self._wake.set()

    def _created(self, node: Any) -> None:
        if node.node_id == SERVER_ID and self._gone_at_start is not None:
            self._drop(*self._gone_at_start)


class _KeptNodes:
    """The strategy as :func:`run_nodes` uses it, keeping the nodes it creates: the server's host
    reaches its server's participation (to drop a dead shard's clients)."""

    def __init__(self, strategy, created: Callable[[Any], None]) -> None:
        self._strategy = strategy
        self._created = created
        self.nodes: dict[str, Any] = {}
        self.created = asyncio.Event()

    def create_node(self, prepared, node_id: str, endpoint, bus: EventBus):
        node = self._strategy.create_node(prepared, node_id, endpoint, bus)
        self.nodes[node_id] = node
        self._created(node)
        self.created.set()
        return node


class _ShardRoute:
    """The server's route to one shard under ``faults.policy: continue``, in place of the shard's
    actor handle: a call the actor can no longer take (it died) drops the shard's clients instead
    of failing the server's transport (the parcels are lost with the shard)."""

    def __init__(self, handle: Any, clients: list[str], label: str, gone: Callable[[list[str], str], None]) -> None:
        self._handle = handle
        self._clients = clients
        self._label = label
        self._gone = gone
        self.deliver = self  # the transport calls ``route.deliver.remote(parcels)``, as on a handle

    def remote(self, parcels):
        return self._answer(self._handle.deliver.remote(parcels))

    async def _answer(self, answer) -> None:
        try:
            await answer
        except ray.exceptions.RayActorError:
            self._gone(self._clients, f"{self._label} died")


def _shard_routes(routes: Mapping[str, Any], names: Mapping[str, str],
                  gone: Callable[[list[str], str], None]) -> dict[str, Any]:
    """``routes`` with every client's actor handle behind one :class:`_ShardRoute` per actor."""
    by_actor: dict[int, tuple[Any, list[str]]] = {}
    for node, handle in routes.items():
        if node != SERVER_ID:
            by_actor.setdefault(id(handle), (handle, []))[1].append(node)
    wrapped = {key: _ShardRoute(handle, clients, names.get(clients[0], "ray actor"), gone)
               for key, (handle, clients) in by_actor.items()}
    return {node: handle if node == SERVER_ID else wrapped[id(handle)] for node, handle in routes.items()}


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class _Actor:
    name: str
    node_ids: list[str]
    handle: Any = None
    placed: dict[str, Any] = field(default_factory=dict)
    done: dict[str, Any] | None = None
    gone: bool = False
    lost: str | None = None
    """Under ``faults.policy: continue``: how this shard was lost (``died (...)``, ``failed: ...``)."""

    @property
    def label(self) -> str:
        clients = [n for n in self.node_ids if n != SERVER_ID]
        if not clients:
            return f"ray actor {self.name}"
        span = clients[0] if len(clients) == 1 else f"{clients[0]}..{clients[-1]}"
        return f"ray actor {self.name} (clients {span})"


@dataclass
class _Failure:
    status: str  # "failed" | "interrupted"
    error: P2PGanError | None
    detail: str


class RayDriver:
    """Runs one prepared scenario on Ray and writes its results folder."""

    def __init__(self, prepared, observers: Sequence[Observer] = (), *, address: str | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, grace_s: float = GRACE_S,
                 resume: ResumePoint | None = None) -> None:
        self.prepared = prepared
        self.resume = resume
        self.scenario: Scenario = prepared.scenario
        spec = self.scenario.ray
        self.client_ids = list(prepared.plan.client_ids)
        token = f"{self.scenario.name}-{secrets.token_hex(3)}"
        self._continues = prepared.faults.policy == "continue"
        # Clients gone under faults.policy continue (their shard died or failed): no step waits for
        # them, checkpoints record them without a state, and a resumed run hosts them nowhere.
        self._gone: set[str] = set()
        self._unknown_to_server: list[str] = []
        if resume is not None and self._continues:
            dropped, stateless = _gone_in_checkpoint(resume, prepared.faults.client_ids)
            self._gone = dropped | stateless
            self._unknown_to_server = sorted(stateless - dropped, key=natural_key)
        shards = shard_clients(self.client_ids, spec.shards)
        self.actors = [_Actor("server", [SERVER_ID])] + [
            _Actor(f"shard-{i}", [c for c in ids if c not in self._gone]) for i, ids in enumerate(shards)
            if any(c not in self._gone for c in ids)]
        self._names = {a.name: f"{token}-{a.name}" for a in self.actors}
        self._ray = RayConnection(address or ray_address(self.scenario), self._cpus_needed(), startup_timeout_s)
        self._observers = list(observers)
        self._startup_timeout_s = startup_timeout_s
        self._grace_s = grace_s
        self._failure: _Failure | None = None
        self._pending_steps: dict[tuple[int, int], dict[str, ClientLosses]] = {}
        self._order = {cid: i for i, cid in enumerate(sorted(self.client_ids, key=natural_key))}
        self._checkpointer: RoundCheckpointer | None = None
        self._view = ParticipationView(prepared.faults)
        """Who takes part when, as the server's ``ParticipationChanged`` events tell it."""
        self._aggregated = resume.round if resume is not None else 0
        self._state_round: dict[str, int] = {}
        """Each node's newest round whose state reached this driver (checkpoints)."""

    def run(self) -> RunOutcome:
        scenario, prepared, resume = self.scenario, self.prepared, self.resume
        strategy = strategy_for(scenario)
        self.bus = bus = EventBus()
        writer = ResultsWriter(prepared, scenario.results_dir)
        bus.subscribe(writer)
        checkpointing = scenario.checkpoint.enabled
        extensions = _extensions(prepared, bus, writer, strategy.program, sees_all_nodes=False,
                                 checkpointed=checkpointing, fresh=resume is None,
                                 progress=preparation_progress(self._observers))
        # Checkpoints as in one process: this driver holds the run side, the actors send their
        # nodes' states at each due round end, and the marker completes a round once all are written.
        all_nodes = [SERVER_ID, *self.client_ids]
        rounds = prepared.plan.schedule.rounds
        run_side = RunSide(scenario.results_dir, [p for p in (writer, *extensions) if isinstance(p, Checkpointable)])
        markers = CheckpointMarkers(scenario.results_dir, all_nodes, rounds, "ray")
        if checkpointing:
            self._checkpointer = RoundCheckpointer(scenario.results_dir, scenario.checkpoint.every, rounds, all_nodes,
                                                   run_side, markers.report)
            bus.subscribe(self._checkpointer.observe)  # after the writer: a round is captured once recorded
        for observer in self._observers:
            bus.subscribe(observer)
        closer = RoundCloser(bus, extensions)
        bus.subscribe(closer)
        bus.publish(run_started_event(prepared))
        if resume is not None:
            run_side.restore(resume)
            bus.publish(LogEvent(f"resumed after round {resume.round} of {rounds} from {resume.folder}"))
        started = time.perf_counter()
        internal: BaseException | None = None
        try:
            asyncio.run(self._main())
        except KeyboardInterrupt:
            self._fail(None, "stopped by Ctrl-C", "interrupted")
        except Exception as exc:  # a bug: recorded as a failure, then raised
            internal = exc
            self._fail(None, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._kill_all()
            self._ray.close()
            self._flush_steps(everything=True)
            wall = time.perf_counter() - started
            failure = self._failure
            status = failure.status if failure else "completed"
            detail = failure.detail if failure else ""
            writer.extra_summary.update(closer.finish(status))
            writer.extra_summary["ray"] = self._placement()
            if self._checkpointer is not None:
                if status != "completed":
                    self._checkpointer.flush()  # a due round every node reached, if not written yet
                writer.extra_summary["checkpoints"] = _checkpoint_summary(self._checkpointer, markers, resume)
            if failure is not None:
                bus.publish(LogEvent(f"run {status}: {detail}", "error" if failure.error else "warning"))
            finished = RunFinished(status, wall, detail)
            bus.publish(finished)
            summary = writer.finish(finished)
            try:
                write_report(scenario.results_dir)
            except Exception as exc:  # the report reads what the run wrote; it never fails a run
                bus.publish(LogEvent(f"report not written: {type(exc).__name__}: {exc}", "warning"))
        if internal is not None:
            raise internal
        return RunOutcome(status, summary, prepared, failure.error if failure else None)

    # -- main flow ------------------------------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        handled = []
        for sig, why in ((signal.SIGINT, "stopped by Ctrl-C"), (signal.SIGTERM, "stopped by SIGTERM")):
            try:
                loop.add_signal_handler(sig, self._interrupt, why)
                handled.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                pass
        self._stop = asyncio.Event()
        try:
            self._ray.connect()
            spec = self.scenario.ray
            self._ray.check_resources(self._cpus_needed(), spec.num_gpus_per_shard * len(self.actors))
            await self._start_actors()
            if self._failure is None:
                self.bus.publish(LogEvent("ray: " + ", ".join(
                    f"{a.name}@{str(a.placed.get('node', '?'))[:8]}" for a in self.actors)))
                pumps = [asyncio.create_task(self._pump(a), name=f"pump-{a.name}") for a in self.actors]
                await self._until_done_or_failed()
                if self._failure is not None:
                    await self._abort_all()
                    await asyncio.wait(pumps, timeout=self._grace_s)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except P2PGanError as exc:
            self._fail(None, str(exc), error=exc)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _start_actors(self) -> None:
        spec = self.scenario.ray
        raw, source = scenario_snapshot(self.scenario)
        costs = self.prepared.setup.costs
        remote = ray.remote(NodeHost)
        for actor in self.actors:
            cpus = spec.server_cpus if actor.name == "server" else spec.num_cpus_per_shard
            actor.handle = remote.options(name=self._names[actor.name], num_cpus=cpus,
                                          num_gpus=spec.num_gpus_per_shard, scheduling_strategy="SPREAD",
                                          max_restarts=0, max_concurrency=1000).remote(
                actor.name, actor.node_ids, max(1, int(cpus)))
        resumes = {a.name: self._resume_states(a) for a in self.actors} if self.resume is not None else {}
        await self._each("prepare", lambda a: a.handle.prepare.remote(raw, source, costs, resumes.get(a.name)),
                         self._startup_timeout_s, "was not placed and prepared")
        if self._failure is not None:
            return
        routes = {node: actor.handle for actor in self.actors for node in actor.node_ids}
        names = {node: actor.label for actor in self.actors for node in actor.node_ids}
        await self._each("connect", lambda a: a.handle.connect.remote(routes, names), self._startup_timeout_s,
                         "did not open its endpoints")
        if self._failure is None:
            gone = (self._unknown_to_server, "gone before the resume (no state in the checkpoint)")
            await self._each("start", lambda a: a.handle.start.remote(*(gone if a.name == "server" else ())),
                             self._startup_timeout_s, "did not start")

    def _cpus_needed(self) -> float:
        spec = self.scenario.ray
        return spec.server_cpus + spec.num_cpus_per_shard * (len(self.actors) - 1)

    def _resume_states(self, actor: _Actor):
        """The actor's nodes' saved states, read here and put in the object store for it."""
        assert self.resume is not None
        states = {node: to_arrays(state.tensors, copy=False) for node, state in
                  self.resume.node_states(actor.node_ids).items()}
        return ray.put(ResumeStates(self.resume.round, states))

    async def _each(self, step: str, call: Callable[[_Actor], Any], timeout: float, late: str) -> None:
        """One call on every actor, together; the first that fails (or is late) fails the run."""
        refs = {actor.name: call(actor) for actor in self.actors}
        stop = asyncio.ensure_future(self._stop.wait())
        waits = {asyncio.ensure_future(self._await(ref)): name for name, ref in refs.items()}
        try:
            pending = set(waits)
            deadline = time.monotonic() + timeout
            while pending and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    actor = next(a for a in self.actors if a.name == waits[next(iter(pending))])
                    self._fail(actor, f"{late} within {timeout:g} s")
                    return
                done, pending = await asyncio.wait(pending | {stop}, timeout=left,
                                                   return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stop)
                for task in done:
                    if task is stop:
                        continue
                    actor = next(a for a in self.actors if a.name == waits[task])
                    ok, value = task.result()
                    if not ok:
                        self._fail(actor, value)
                        return
                    if step == "prepare":
                        actor.placed = value
        finally:
            stop.cancel()
            for task in waits:
                task.cancel()

    @staticmethod
    async def _await(ref) -> tuple[bool, Any]:
        try:
            return True, await ref
        except ray.exceptions.RayActorError as exc:
            return False, f"died ({_first_line(exc)})"
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            return False, _first_line(cause)
        except ray.exceptions.RayError as exc:
            return False, _first_line(exc)

    async def _pump(self, actor: _Actor) -> None:
        while True:
            ok, value = await self._await(actor.handle.next_events.remote())
            if not ok:
                actor.gone = True
                if self._may_lose(actor):
                    await self._lose(actor, "died", value)
                else:
                    self._fail(actor, value)
                return
            events, done = value
            for event in events:
                self._on_event(event)
            if done is not None:
                actor.done = done
                if done["status"] == "failed" and self._may_lose(actor):
                    await self._lose(actor, "failed", str(done.get("problem") or "failed"))
                elif done["status"] != "completed":
                    self._fail_reported(actor, done)
                self._stop.set()
                return

    async def _until_done_or_failed(self) -> None:
        while self._failure is None and not all(a.done is not None or a.lost is not None for a in self.actors):
            self._stop.clear()
            await self._stop.wait()

    # -- faults.policy continue: a shard lost, its clients dropped ---------------------------------

    def _may_lose(self, actor: _Actor) -> bool:
        """A shard (never the server) that died or failed leaves the run under ``policy: continue``."""
        return self._continues and actor.name != "server" and self._failure is None

    async def _lose(self, actor: _Actor, how: str, problem: str) -> None:
        """The shard is gone: its clients leave every later step and checkpoint, and the server
        drops them at once (one ``ParticipationChanged``, one warning line naming the shard)."""
        actor.lost = problem if how == "died" else f"failed: {problem}"  # "died (...)": Ray's words
        clients = [n for n in actor.node_ids if n != SERVER_ID]
        self._gone.update(clients)
        if actor.handle is not None and how == "failed":  # its nodes stopped: nothing left to keep
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception:  # already gone
                pass
        self._checkpoint_gone(clients, self._aggregated)
        server = self.actors[0]
        if server.done is None and not server.gone:
            reason = f"{actor.label} died" if how == "died" else f"{actor.label} failed ({problem})"
            ok, value = await self._await(server.handle.drop_peers.remote(clients, reason))
            if not ok:
                server.gone = True
                self._fail(server, value)
        self._flush_steps()
        self._stop.set()

    def _checkpoint_gone(self, clients: Sequence[str], up_to: int) -> None:
        """A gone client's part of each checkpoint up to round ``up_to``: a state without tensors
        (it has nothing to continue from; a resume hosts it nowhere), so checkpoints complete."""
        if self._checkpointer is None:
            return
        first = self.resume.round if self.resume is not None else 0
        for client in clients:
            for round_ in range(max(first, self._state_round.get(client, 0)) + 1, up_to + 1):
                self._checkpointer(round_, NodeState(client, {}))

    async def _abort_all(self) -> None:
        assert self._failure is not None
        calls = [a.handle.abort.remote("driver", self._failure.detail) for a in self.actors
                 if a.done is None and not a.gone and a.handle is not None]
        if calls:
            await asyncio.wait([asyncio.ensure_future(self._await(c)) for c in calls], timeout=self._grace_s)

    def _kill_all(self) -> None:
        for actor in self.actors:
            if actor.handle is not None and ray.is_initialized():
                try:
                    ray.kill(actor.handle, no_restart=True)
                except Exception:  # already gone
                    pass

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        if isinstance(event, NodeCheckpoint):
            self._state_round[event.node] = max(event.round, self._state_round.get(event.node, 0))
            if self._checkpointer is not None:
                self._checkpointer(event.round, NodeState(event.node, from_arrays(event.arrays)))
        elif isinstance(event, ClientLosses):
            self._pending_steps.setdefault((event.round, event.step), {})[event.node] = event
            self._flush_steps()
        elif isinstance(event, ParticipationChanged):
            self._view(event)
            self.bus.publish(event)
            self._flush_steps()
        elif isinstance(event, NodeStopped):
            # A client the server dropped, in a shard that goes on: gone like a lost shard's
            # clients. Its shard sent every state it had before this, so the rest are empty.
            self._gone.add(event.node)
            self._checkpoint_gone([event.node], self._aggregated)
            self._flush_steps()
        else:
            if isinstance(event, RoundAggregated):
                self._aggregated = max(self._aggregated, event.round)
                self._checkpoint_gone(sorted(self._gone, key=natural_key), event.round)
            self.bus.publish(event)

    def _flush_steps(self, everything: bool = False) -> None:
        """Publish each step's losses once every client taking part reported it, in client-id
        order (a memory run's order), so ``steps.jsonl`` is the same file."""
        for key in sorted(self._pending_steps):
            records = self._pending_steps[key]
            if not everything and not (self._view.plan.present(*key) - self._gone) <= set(records):
                break
            for node in sorted(records, key=lambda n: self._order.get(n, len(self._order))):
                self.bus.publish(records[node])
            del self._pending_steps[key]

    # -- failures -----------------------------------------------------------------------------

    def _interrupt(self, why: str) -> None:
        self._fail(None, why, "interrupted")

    def _fail(self, actor: _Actor | None, problem: str, status: str = "failed",
              error: P2PGanError | None = None) -> None:
        if self._failure is not None:
            return
        detail = f"{actor.label}: {problem}" if actor is not None else problem
        if status == "failed" and error is None:
            error = ClusterError(detail)
        self._failure = _Failure(status, error if status == "failed" else None, detail)
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _fail_reported(self, actor: _Actor, done: Mapping[str, Any]) -> None:
        """An actor's nodes stopped with an error: blame the peer it names, else the actor."""
        if done["status"] == "interrupted":
            self._fail(actor, str(done.get("problem") or "interrupted"), "interrupted")
            return
        peer, problem = done.get("peer"), str(done.get("problem") or "failed")
        if peer and peer != "driver":
            error: P2PGanError = PeerError(str(peer), f"{problem} (reported by {actor.label})")
            self._fail(None, str(error), error=error)
        else:
            self._fail(actor, problem)

    def _placement(self) -> dict[str, Any]:
        placement = {"address": self._ray.address, "actors": {
            a.name: {"clients": [n for n in a.node_ids if n != SERVER_ID], **a.placed,
                     **({"meter": a.done["meter"]} if a.done and "meter" in a.done else {}),
                     **({"lost": a.lost} if a.lost else {})}
            for a in self.actors}}
        if self._gone:
            placement["clients_gone"] = sorted(self._gone, key=natural_key)
        return placement


def _gone_in_checkpoint(resume: ResumePoint, client_ids: Sequence[str]) -> tuple[set[str], set[str]]:
    """Clients a checkpoint has gone under ``faults.policy: continue``: those the server dropped
    (its ``faults/dropped``), and those without a state (their shard died before sending it)."""
    dropped_rows = resume.node_state(SERVER_ID).tensors.get("faults/dropped")
    dropped = ({cid for cid, (round_, _) in zip(client_ids, dropped_rows.tolist()) if round_ >= 0}
               if dropped_rows is not None else set())
    stateless = set()
    for cid in client_ids:
        sidecar = resume.folder / f"{cid}.json"
        try:
            tensors = json.loads(sidecar.read_text(encoding="utf-8"))["tensors"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise P2PGanError(f"{sidecar}: not a valid checkpoint file ({type(exc).__name__})") from None
        if not tensors:
            stateless.add(cid)
    return dropped, stateless


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def run_ray(scenario: Scenario, observers: Sequence[Observer] = (), *, address: str | None = None,
            startup_timeout_s: float = STARTUP_TIMEOUT_S, grace_s: float = GRACE_S,
            resume: ResumePoint | None = None) -> RunOutcome:
    """Run ``scenario`` with its server and shards of clients as Ray actors -> RunOutcome.

    ``address`` overrides ``ray.address`` / ``$RAY_ADDRESS``. Results are written here, as by a
    memory run; a failure is one line in the summary's ``detail`` and the outcome's error.
    ``resume``: continue from that checkpoint (the results files already cut back to it).
    """
    # The driver writes results and prices the run; it holds no client example.
    prepared = prepare_run(scenario, for_node=SERVER_ID, progress=preparation_progress(observers))
    driver = RayDriver(prepared, observers, address=address, startup_timeout_s=startup_timeout_s, grace_s=grace_s,
                       resume=resume)
    return driver.run()
