"""Typed run events: what nodes and the run publish on the bus (:mod:`p2pgan.bus`).

Nodes and the run loop publish events; observers (the operation tracer for the latency engine,
the results writer, the live view, progress printing) subscribe. Publishing never blocks: an
observer must only record, never await or compute heavily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from p2pgan.protocol.federation import FederationResult


@dataclass(frozen=True)
class ComputeEvent:
    """A node ran some blocks forward or backward.

    ``consumed`` lists the ids of the messages whose contents this compute used and that were
    received since the node's previous compute: the causal edges from transfers to compute.
    """

    node: str
    round: int
    step: int
    phase: str
    direction: str  # "fwd" | "bwd"
    blocks: tuple[str, ...]
    batch: int
    flops: float
    consumed: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransferEvent:
    """A message left ``src`` for ``dst`` (payload bytes; sent after the sender's last compute)."""

    msg_id: str
    src: str
    dst: str
    kind: str
    round: int
    step: int
    phase: str
    nbytes: int


@dataclass(frozen=True)
class NodeStateEvent:
    node: str
    state: str  # "computing" | "sending" | "waiting" | "idle" | "done"


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    role: str  # "client" | "server"
    domain: str | None = None
    cut: tuple[int, ...] | None = None
    profile: str | None = None
    num_examples: int = 0


@dataclass(frozen=True)
class RunStarted:
    scenario: str
    strategy: str
    transport: str
    seed: int
    results_dir: str
    rounds: int
    local_epochs: int
    steps_per_epoch: int
    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True)
class StepFinished:
    """One synchronous iteration finished; losses per client id."""

    round: int
    epoch: int
    step: int
    d_loss: dict[str, float]
    d_real: dict[str, float]
    d_fake: dict[str, float]
    g_loss: dict[str, float]


@dataclass(frozen=True)
class RoundFinished:
    round: int
    summary: dict[str, Any] = field(default_factory=dict)
    """Aggregation outcome: clusters, weights, metrics, simulated time... (JSON-serialisable)."""


@dataclass(frozen=True)
class SimulatedTime:
    """Simulated seconds of the run so far next to its wall time (published once per round)."""

    round: int
    simulated_s: float
    wall_s: float


@dataclass(frozen=True)
class LogEvent:
    message: str
    level: str = "info"


@dataclass(frozen=True)
class NodeStopped:
    """A client's node ended early and alone under ``faults.policy: continue``: the server dropped
    it (dead or silent) and goes on without it. Published where the client ran, after every state
    it produced (its checkpoints are on the bus before this)."""

    node: str
    problem: str


@dataclass(frozen=True)
class RunFinished:
    status: str  # "completed" | "interrupted" | "failed"
    wall_s: float
    detail: str = ""


@dataclass(frozen=True)
class ClientLosses:
    """Published after every iteration on the client's own bus."""

    node: str
    round: int
    step: int
    d_real: float
    d_fake: float
    d_loss: float
    g_loss: float


@dataclass(frozen=True)
class RoundAggregated:
    """Published by the server after each round's federation."""

    round: int
    result: "FederationResult"
    losses: dict[str, dict[str, float]]


@dataclass(frozen=True)
class RoundClosed:
    """One round, closed: the server's aggregation plus every extension's section for it.

    Published by the run's round closer once each extension (metrics, latency) has answered;
    the results writer and the live views consume this, never the raw aggregation.
    ``details`` is a new mapping (the aggregation's facts with the sections merged in); nothing
    that was published before is mutated.
    """

    round: int
    result: "FederationResult"
    losses: dict[str, dict[str, float]]
    details: dict[str, Any]
    sections: dict[str, dict[str, Any]]
    simulated_s: float | None = None
    """Simulated seconds of the run after this round (the latency extension's estimate)."""
    wall_s: float | None = None


@dataclass(frozen=True)
class ParticipationChanged:
    """Who takes part from this point of a round on (faults: dropout, rejoin, a deadline missed,
    a dead peer dropped under ``faults.policy: continue``). Published when the set changes."""

    round: int
    step: int
    present: tuple[str, ...]
    dropped: tuple[str, ...]
    reason: str = ""
    """Why the last change happened, one line (e.g. ``c003 dropped out (scripted)``)."""


@dataclass(frozen=True)
class PreparationStep:
    """A preparation step before round 1 (data loading, the judge's training, the cut search).

    ``state`` is "started", "done" or "failed"; ``detail`` a short line shown by the live view.
    """

    name: str
    state: str  # "started" | "done" | "failed"
    detail: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class FinalEvaluation:
    """The full evaluation of the last round after training (metrics: generation score, FID,
    classification utility). ``state`` is "started", "done" or "failed"; when done, ``domains``
    holds ``final_metrics.json``'s per-domain numbers and ``ari`` its adjusted Rand index."""

    state: str  # "started" | "done" | "failed"
    round: int
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    ari: float | None = None
    seconds: float | None = None
    detail: str = ""
