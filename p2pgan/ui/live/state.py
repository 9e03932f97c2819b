"""What the live dashboard knows about a run: updated by events, read through snapshots.

:class:`DashboardState` is fed every event of a run (synchronously, from the event-loop thread) and
does O(1) bookkeeping per event: no rendering, no I/O, no allocation that grows with the run
beyond bounded histories. Events at round granularity (``RoundClosed``, ``RunStarted``) may do
work proportional to the number of clients. :meth:`DashboardState.snapshot` copies everything the
renderer needs into an immutable :class:`Snapshot`; the renderer only ever sees snapshots.

Forward-compatible seams (duck-typed, so the live view needs no change when they appear):

* **simulated time** -- any event with numeric attributes ``simulated_s`` and ``wall_s`` moves the
  simulated clock (see :class:`SimulatedClockEvent`); ``round``/``step`` are read if present;
* **generation scores** -- ``RoundClosed.details["metrics"][domain]["gen_score"]``;
* **collapsed fakes** -- a ``ClientLosses``-like event carrying ``fake_std`` (the spread of the
  generated batch) below :data:`FAKE_STD_MIN` flags "G collapse".

Before ``RunStarted`` the state collects the run's preparation steps (``PreparationStep``: data,
partition, model costs, cuts, the metrics judges); after the last round, the final evaluation
(``FinalEvaluation``) turns the status to "evaluating" and then carries the final metrics.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from p2pgan.protocol.events import ClientLosses
from p2pgan.protocol.events import RoundClosed
from p2pgan.protocol.events import (
    ComputeEvent,
    FinalEvaluation,
    LogEvent,
    NodeInfo,
    NodeStateEvent,
    ParticipationChanged,
    PreparationStep,
    RoundFinished,
    RunFinished,
    RunStarted,
    TransferEvent,
)

# -- training-health thresholds ----------------------------------------------------------------
D_WIN_LOSS = 0.05
"""A client's D loss under this ..."""
D_WIN_STEPS = 5
"""... for this many consecutive iterations means D wins completely."""
G_COLLAPSE_LOSS = 5.0
"""A client's G loss above this ..."""
G_COLLAPSE_STEPS = 5
"""... for this many consecutive iterations while D wins means G has collapsed."""
FAKE_STD_MIN = 0.02
"""Spread of a generated batch (if an event reports ``fake_std``) under this means G collapsed."""

HEALTH_OK = "ok"
HEALTH_D_WINS = "D wins"
HEALTH_G_COLLAPSE = "G collapse"
_SEVERITY = {HEALTH_OK: 0, HEALTH_D_WINS: 1, HEALTH_G_COLLAPSE: 2}

HISTORY_POINTS = 40
"""Per-domain loss points kept for the sparklines (one point per iteration)."""
ROUND_HISTORY = 12
"""Rounds of cluster / generation-score history kept."""
LOG_LINES = 6
STEP_EWMA = 0.3
"""Smoothing of the seconds-per-iteration estimate behind the ETAs."""

LOSS_KEYS = ("d_real", "d_fake", "d_loss", "g_loss")


@runtime_checkable
class SimulatedClockEvent(Protocol):
    """What the latency engine publishes to move the dashboard's simulated clock.

    Any event object with these attributes will do (a dataclass such as
    ``SimulatedTime(round, step, simulated_s, wall_s)``): ``simulated_s`` is the simulated seconds
    elapsed since the run started, ``wall_s`` the wall seconds the same work took.
    """

    simulated_s: float
    wall_s: float


def is_sim_clock_event(event: object) -> bool:
    return isinstance(getattr(event, "simulated_s", None), (int, float)) and isinstance(
        getattr(event, "wall_s", None), (int, float))


# -- snapshot types (immutable; what the renderer sees) -----------------------------------------


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    role: str
    domain: str | None
    profile: str | None
    cut: tuple[int, ...] | None
    state: str
    sent: int
    received: int
    flops: float
    health: str
    dropped: bool = False
    """Not taking part at the moment (faults: dropped out, missed a deadline, dead)."""


@dataclass(frozen=True)
class PrepRow:
    """One preparation step: ``state`` "started" | "done" | "failed"; ``seconds`` so far while it runs."""

    name: str
    state: str
    detail: str
    seconds: float


@dataclass(frozen=True)
class FinalRow:
    """One domain's final metrics (``None`` where the evaluation did not measure it)."""

    domain: str
    gen_score: float | None
    fid: float | None
    accuracy: float | None
    f1: float | None


@dataclass(frozen=True)
class DomainRow:
    domain: str
    clients: int
    latest: dict[str, float]
    """Mean over the domain's clients of the latest complete iteration (keys of ``LOSS_KEYS``)."""
    d_history: tuple[float, ...]
    g_history: tuple[float, ...]
    health: str
    unhealthy: tuple[str, ...]
    """Clients of this domain whose health is not ok."""
    membership: tuple[tuple[int, int], ...]
    """(cluster id, clients of this domain in it), largest first."""
    cluster_history: tuple[tuple[int, int], ...]
    """(round, majority cluster) for the last rounds."""
    gen_scores: tuple[tuple[int, float], ...]
    """(round, generation score) for the last rounds."""


@dataclass(frozen=True)
class Snapshot:
    started: bool
    scenario: str = ""
    strategy: str = ""
    transport: str = ""
    seed: int = 0
    results_dir: str = ""
    rounds: int = 0
    local_epochs: int = 0
    steps_per_epoch: int = 0
    steps_done: int = 0
    """Iterations finished by the front-running client, over the whole run."""
    rounds_done: int = 0
    elapsed_s: float = 0.0
    step_s: float | None = None
    """Smoothed wall seconds per iteration."""
    since_step_s: float = 0.0
    """Wall seconds since the last iteration finished (while running), for ETAs that count down."""
    simulated_s: float | None = None
    sim_wall_s: float | None = None
    num_clusters: int = 0
    ari: float | None = None
    """Adjusted Rand index of the clusters against the true domains, when metrics report it."""
    nodes: tuple[NodeRow, ...] = ()
    domains: tuple[DomainRow, ...] = ()
    logs: tuple[tuple[str, str], ...] = ()
    status: str = "waiting"
    detail: str = ""
    bytes_total: int = 0
    observer_errors: int = 0
    title: str = ""
    """The scenario's name before ``RunStarted`` tells it (what the preparation view shows)."""
    preparation: tuple[PrepRow, ...] = ()
    prepare_s: float | None = None
    """Wall seconds from the first preparation step to ``RunStarted``."""
    dropped: int = 0
    """Clients not taking part at the moment."""
    final_state: str | None = None
    """The final evaluation: ``None`` (not begun or none), "started", "done", "failed"."""
    final_round: int = 0
    final_rows: tuple[FinalRow, ...] = ()
    final_ari: float | None = None
    final_s: float = 0.0
    """Seconds the final evaluation took (so far, while it runs)."""
    final_detail: str = ""

    @property
    def preparing(self) -> bool:
        return not self.started and bool(self.preparation)

    @property
    def steps_per_round(self) -> int:
        return self.local_epochs * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    @property
    def clients(self) -> tuple[NodeRow, ...]:
        return tuple(n for n in self.nodes if n.role == "client")


# -- mutable bookkeeping -------------------------------------------------------------------------


@dataclass
class _Node:
    info: NodeInfo
    state: str = "idle"
    sent: int = 0
    received: int = 0
    flops: float = 0.0
    d_low: int = 0
    g_high: int = 0
    fake_collapsed: bool = False

    @property
    def health(self) -> str:
        if self.fake_collapsed or (self.d_low >= D_WIN_STEPS and self.g_high >= G_COLLAPSE_STEPS):
            return HEALTH_G_COLLAPSE
        if self.d_low >= D_WIN_STEPS:
            return HEALTH_D_WINS
        return HEALTH_OK


@dataclass
class _Prep:
    name: str
    started: float
    state: str = "started"
    detail: str = ""
    seconds: float | None = None


@dataclass
class _Domain:
    name: str
    members: int = 0
    key: int = -1
    sums: list[float] = field(default_factory=lambda: [0.0] * len(LOSS_KEYS))
    count: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    d_history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    g_history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    membership: tuple[tuple[int, int], ...] = ()
    cluster_history: deque = field(default_factory=lambda: deque(maxlen=ROUND_HISTORY))
    gen_scores: deque = field(default_factory=lambda: deque(maxlen=ROUND_HISTORY))
    unhealthy: Counter = field(default_factory=Counter)
    """Clients of this domain in each bad health state (the ``ok`` entry is unused bookkeeping)."""

    @property
    def health(self) -> str:
        if self.unhealthy[HEALTH_G_COLLAPSE] > 0:
            return HEALTH_G_COLLAPSE
        if self.unhealthy[HEALTH_D_WINS] > 0:
            return HEALTH_D_WINS
        return HEALTH_OK

    def add(self, key: int, values: tuple[float, ...]) -> None:
        if key != self.key:
            self.flush()
            self.key = key
        for i, v in enumerate(values):
            self.sums[i] += v
        self.count += 1
        if self.count >= self.members:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        self.latest = {k: s / self.count for k, s in zip(LOSS_KEYS, self.sums)}
        self.d_history.append(self.latest["d_loss"])
        self.g_history.append(self.latest["g_loss"])
        self.sums = [0.0] * len(LOSS_KEYS)
        self.count = 0


class DashboardState:
    """Everything the dashboard shows, kept up to date by :meth:`apply` (O(1) per event)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, title: str = "") -> None:
        self._clock = clock
        self._title = title
        self._prep: dict[str, _Prep] = {}
        self._latest_prep: _Prep | None = None
        self._prep_t0: float | None = None
        self._prepare_s: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._run: RunStarted | None = None
        self._t0 = self._clock()
        self._nodes: dict[str, _Node] = {}
        self._domains: dict[str, _Domain] = {}
        self._domain_of: dict[str, str] = {}
        self._steps_done = 0
        self._last_step_t: float | None = None
        self._step_s: float | None = None
        self._rounds_done = 0
        self._num_clusters = 0
        self._ari: float | None = None
        self._simulated_s: float | None = None
        self._sim_wall_s: float | None = None
        self._logs: deque[tuple[str, str]] = deque(maxlen=LOG_LINES)
        self._status = "waiting"
        self._detail = ""
        self._finished_wall: float | None = None
        self._bytes_total = 0
        self._dropped: frozenset[str] = frozenset()
        self._final: FinalEvaluation | None = None
        self._final_t0: float | None = None
        self._final_s = 0.0
        self.observer_errors = 0

    # -- updates -----------------------------------------------------------------------------

    def apply(self, event: object) -> None:
        """Record one event. Cheap and side-effect free apart from this object."""
        kind = type(event)
        if kind is NodeStateEvent:
            node = self._nodes.get(event.node)
            if node is not None:
                node.state = event.state
        elif kind is ComputeEvent:
            node = self._nodes.get(event.node)
            if node is not None:
                node.flops += event.flops
        elif kind is TransferEvent:
            self._transfer(event)
        elif kind is ClientLosses or (hasattr(event, "d_loss") and hasattr(event, "node") and hasattr(event, "step")):
            self._losses(event)
        elif kind is RoundClosed:
            self._aggregated(event)
            if is_sim_clock_event(event):
                self._simulated_s = float(event.simulated_s)
                self._sim_wall_s = float(event.wall_s)
        elif kind is LogEvent:
            # A multi-line record (the final metrics table) is one entry: its first line.
            self._logs.append((event.level, event.message.split("\n", 1)[0]))
        elif kind is ParticipationChanged:
            self._participation(event)
        elif kind is PreparationStep:
            self._preparation(event)
        elif kind is FinalEvaluation:
            self._final_evaluation(event)
        elif kind is RunStarted:
            self._started(event)
        elif kind is RunFinished:
            self._status, self._detail = event.status, event.detail
            self._finished_wall = self._clock() - self._t0
        elif kind is RoundFinished:
            sim = event.summary.get("simulated_s") if isinstance(event.summary, Mapping) else None
            if isinstance(sim, (int, float)):
                self._simulated_s = float(sim)
        elif is_sim_clock_event(event):
            self._simulated_s = float(event.simulated_s)
            self._sim_wall_s = float(event.wall_s)

    __call__ = apply

    def _preparation(self, event: PreparationStep) -> None:
        now = self._clock()
        if self._prep_t0 is None:
            self._prep_t0 = now
        if self._run is not None:  # a step after the start (none today): shown in the log
            if event.state != "started":
                self._logs.append(("info" if event.state == "done" else "error",
                                   f"{event.name}: {event.detail or event.state}"))
            return
        step = self._prep.get(event.name)
        if step is None or event.state == "started":
            step = self._prep[event.name] = _Prep(event.name, now)
        self._latest_prep = step
        step.state, step.detail = event.state, event.detail or step.detail
        if event.seconds is not None:
            step.seconds = event.seconds

    def _participation(self, event: ParticipationChanged) -> None:
        self._dropped = frozenset(event.dropped)
        present = len(event.present)
        what = event.reason or f"{len(event.dropped)} client{'s' if len(event.dropped) != 1 else ''} dropped"
        self._logs.append(("warning" if event.dropped else "info",
                           f"round {event.round} step {event.step}: {what} ({present} taking part)"))

    def _final_evaluation(self, event: FinalEvaluation) -> None:
        now = self._clock()
        if event.state == "started":
            self._final_t0 = now
            self._final_s = 0.0
        else:
            self._final_s = event.seconds if event.seconds is not None else (
                now - self._final_t0 if self._final_t0 is not None else 0.0)
            self._final_t0 = None
        self._final = event

    def _started(self, event: RunStarted) -> None:
        self._reset()
        if self._prep_t0 is not None:
            self._prepare_s = self._clock() - self._prep_t0
            slow = [f"{p.name} {p.seconds:.1f}s" for p in self._prep.values() if (p.seconds or 0) >= 0.1]
            self._logs.append(("info", f"prepared in {self._prepare_s:.1f}s" + (f" ({', '.join(slow)})" if slow else "")))
        self._run = event
        self._status = "running"
        for info in event.nodes:
            self._nodes[info.node_id] = _Node(info)
            if info.role == "client" and info.domain is not None:
                self._domain_of[info.node_id] = info.domain
                domain = self._domains.setdefault(info.domain, _Domain(info.domain))
                domain.members += 1

    def _transfer(self, event: TransferEvent) -> None:
        src, dst = self._nodes.get(event.src), self._nodes.get(event.dst)
        if src is not None:
            src.sent += event.nbytes
        if dst is not None:
            dst.received += event.nbytes
        self._bytes_total += event.nbytes

    def _losses(self, event: Any) -> None:
        run = self._run
        if run is None:
            return
        spr = run.local_epochs * run.steps_per_epoch
        key = (event.round - 1) * spr + event.step
        if key + 1 > self._steps_done:
            now = self._clock()
            if self._last_step_t is not None:
                dt = (now - self._last_step_t) / (key + 1 - self._steps_done)
                self._step_s = dt if self._step_s is None else (1 - STEP_EWMA) * self._step_s + STEP_EWMA * dt
            self._last_step_t = now
            self._steps_done = key + 1
        node = self._nodes.get(event.node)
        domain = self._domains.get(self._domain_of.get(event.node, ""))
        if node is not None:
            before = node.health
            node.d_low = node.d_low + 1 if event.d_loss < D_WIN_LOSS else 0
            node.g_high = node.g_high + 1 if event.d_loss < D_WIN_LOSS and event.g_loss > G_COLLAPSE_LOSS else 0
            fake_std = getattr(event, "fake_std", None)
            if fake_std is not None:
                node.fake_collapsed = fake_std < FAKE_STD_MIN
            after = node.health
            if after != before and domain is not None:
                self._health_changed(domain, before, after, event)
        if domain is not None:
            domain.add(key, (event.d_real, event.d_fake, event.d_loss, event.g_loss))

    def _health_changed(self, domain: _Domain, before: str, after: str, event: Any) -> None:
        """Keep per-domain counts of unhealthy clients; log when the domain's health changes."""
        was = domain.health
        domain.unhealthy[before] -= 1
        domain.unhealthy[after] += 1
        now = domain.health
        if now == was:
            return
        if _SEVERITY[now] > _SEVERITY[was]:
            self._logs.append(("warning", f"{domain.name}: {now} on {event.node} (round {event.round}, step "
                                          f"{event.step}: D={event.d_loss:.3g}, G={event.g_loss:.3g})"))
        else:
            self._logs.append(("info", f"{domain.name}: {now if now != HEALTH_OK else 'healthy again'} "
                                       f"(round {event.round}, step {event.step})"))

    def _aggregated(self, event: RoundClosed) -> None:
        self._rounds_done = max(self._rounds_done, event.round)
        clusters = event.result.clusters
        self._num_clusters = len(set(clusters.values()))
        per_domain: dict[str, Counter[int]] = {}
        for cid, cluster in clusters.items():
            per_domain.setdefault(self._domain_of.get(cid, "?"), Counter())[cluster] += 1
        for name, counter in per_domain.items():
            domain = self._domains.get(name)
            if domain is None:
                continue
            ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            domain.membership = tuple(ranked)
            domain.cluster_history.append((event.round, ranked[0][0]))
        details = event.details if isinstance(event.details, Mapping) else {}
        metrics = details.get("metrics")
        if isinstance(metrics, Mapping):
            for name, values in metrics.items():
                domain = self._domains.get(name)
                score = values.get("gen_score") if isinstance(values, Mapping) else None
                if domain is not None and isinstance(score, (int, float)):
                    domain.gen_scores.append((event.round, float(score)))
        ari = details.get("ari")
        if isinstance(ari, (int, float)):
            self._ari = float(ari)
        sim = details.get("simulated_s")
        if isinstance(sim, (int, float)):
            self._simulated_s = float(sim)
        rounds = self._run.rounds if self._run is not None else event.round
        self._logs.append(("round", f"round {event.round}/{rounds} aggregated: {self._num_clusters} "
                                    f"cluster{'s' if self._num_clusters != 1 else ''}"))

    # -- reading ------------------------------------------------------------------------------

    def _preparation_rows(self, now: float) -> tuple[PrepRow, ...]:
        return tuple(PrepRow(p.name, p.state, p.detail,
                             p.seconds if p.seconds is not None else (now - p.started if self._run is None else 0.0))
                     for p in self._prep.values())

    def snapshot(self) -> Snapshot:
        """An immutable copy of what the renderer needs (O(nodes + domains × history))."""
        run = self._run
        now = self._clock()
        if run is None:
            elapsed = now - self._prep_t0 if self._prep_t0 is not None else 0.0
            # A step that failed ends the preparation unless another one follows (the metrics
            # judges fail without stopping the run: metrics are then off).
            latest = self._latest_prep
            status = "failed" if latest is not None and latest.state == "failed" else (
                "preparing" if self._prep else "waiting")
            return Snapshot(started=False, logs=tuple(self._logs), observer_errors=self.observer_errors,
                            title=self._title, preparation=self._preparation_rows(now), elapsed_s=elapsed,
                            status=status)
        running = self._finished_wall is None
        elapsed = now - self._t0 if running else self._finished_wall
        since = now - self._last_step_t if running and self._last_step_t is not None else 0.0
        dropped = self._dropped
        nodes = tuple(NodeRow(n.info.node_id, n.info.role, n.info.domain, n.info.profile, n.info.cut, n.state,
                              n.sent, n.received, n.flops, n.health, n.info.node_id in dropped)
                      for n in self._nodes.values())
        unhealthy: dict[str, list[tuple[str, str]]] = {}
        for row in nodes:
            if row.health != HEALTH_OK and row.domain is not None:
                unhealthy.setdefault(row.domain, []).append((row.node_id, row.health))
        domains = []
        for d in self._domains.values():
            bad = unhealthy.get(d.name, [])
            domains.append(DomainRow(d.name, d.members, dict(d.latest), tuple(d.d_history), tuple(d.g_history),
                                     d.health, tuple(cid for cid, _ in bad), d.membership,
                                     tuple(d.cluster_history), tuple(d.gen_scores)))
        final = self._final
        status = self._status
        if running and final is not None and final.state == "started":
            status = "evaluating"
        elif running and run.rounds and self._steps_done >= run.rounds * run.local_epochs * run.steps_per_epoch \
                and self._rounds_done < run.rounds:
            # Every iteration is done; the last round's aggregation and metrics are still running.
            status = f"closing round {self._rounds_done + 1}"
        final_s = self._final_s + (now - self._final_t0 if self._final_t0 is not None else 0.0)
        final_rows = tuple(FinalRow(domain, _number(v.get("gen_score")), _number(v.get("fid")),
                                    _number(v.get("accuracy")), _number(v.get("f1")))
                           for domain, v in (final.domains.items() if final is not None else ()) if isinstance(v, Mapping))
        return Snapshot(
            started=True, scenario=run.scenario, strategy=run.strategy, transport=run.transport, seed=run.seed,
            results_dir=run.results_dir, rounds=run.rounds, local_epochs=run.local_epochs,
            steps_per_epoch=run.steps_per_epoch, steps_done=self._steps_done, rounds_done=self._rounds_done,
            elapsed_s=elapsed, step_s=self._step_s, since_step_s=since, simulated_s=self._simulated_s, sim_wall_s=self._sim_wall_s,
            num_clusters=self._num_clusters, ari=self._ari, nodes=nodes, domains=tuple(domains), logs=tuple(self._logs),
            status=status, detail=self._detail, bytes_total=self._bytes_total,
            observer_errors=self.observer_errors, title=self._title, preparation=self._preparation_rows(now),
            prepare_s=self._prepare_s, dropped=sum(1 for n in nodes if n.dropped and n.role == "client"),
            final_state=final.state if final is not None else None, final_round=final.round if final else 0,
            final_rows=final_rows, final_ari=final.ari if final is not None else None, final_s=final_s,
            final_detail=final.detail if final is not None else "",
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
