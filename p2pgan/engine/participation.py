"""Who takes part when, as the server lives it: the run's fault plan plus the peers it dropped.

Every node derives the same :class:`~p2pgan.plan.faults.FaultPlan` from the scenario, so clients
know without being told when they sit out an iteration, skip a federation or rejoin. What no plan
can know is a peer that died or fell silent (``faults.policy: continue``): the server drops it for
the rest of the run (:meth:`Participation.drop`), which makes later ``present`` / ``at_federation``
answers leave it out, and publishes :class:`~p2pgan.protocol.events.ParticipationChanged` so the
results, the latency pricing and the live view learn it too. On Ray the driver knows when a
shard of clients died and has the server drop them all at once (:meth:`Participation.drop_gone`).

A client back after missing a federation loads its cluster's weights: the server remembers, for
every client, the members of the cluster it was last aggregated in, and gives a returning client
the current cluster holding most of them (:meth:`Participation.rejoin_model`).

The server's part of a checkpoint (only with faults in force) is two tensors under ``faults/``:
``dropped`` ([clients, 2]: the (round, step) a peer was dropped at, or -1) and ``members``
([clients, clients]: row i flags the clients of i's last cluster; all zero: never aggregated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from p2pgan.bus import EventBus
from p2pgan.engine.state import NodeState
from p2pgan.errors import P2PGanError
from p2pgan.federation.base import weighted_average
from p2pgan.ids import natural_sorted
from p2pgan.plan.faults import FaultPlan
from p2pgan.protocol.events import LogEvent, ParticipationChanged
from p2pgan.protocol.federation import BlockState, FederationResult


class Participation:
    """The server's live view of a :class:`FaultPlan`: presence per iteration, dropped peers,
    the clusters clients were last aggregated in. Publishes every change of the present set."""

    def __init__(self, faults: FaultPlan, bus: EventBus | None = None) -> None:
        self.plan = faults
        self._prepared = faults
        self._bus = bus
        self._clients = tuple(faults.client_ids)
        self._shown: frozenset[str] = frozenset(self._clients)
        self._dropped: dict[str, tuple[int, int, str]] = {}
        self._members: dict[str, frozenset[str]] = {}
        self.now: frozenset[str] = frozenset(self._clients)
        """Who takes part at the current point of the run (an iteration, or a round's end)."""
        self.position: tuple[int, int] | None = None
        """Where the server is: ``(round, step)`` of its current iteration, ``(round, -1)`` at a
        round's federation; ``None`` before its first."""

    @property
    def active(self) -> bool:
        return self.plan.active

    @property
    def continues(self) -> bool:
        """``policy: continue``: a dead or silent peer is dropped instead of ending the run."""
        return self.plan.policy == "continue"

    @property
    def dropped(self) -> dict[str, tuple[int, int, str]]:
        """Peers dropped under ``policy: continue``: (round, step, why)."""
        return dict(self._dropped)

    # -- presence ---------------------------------------------------------------------------

    def enter(self, round_: int, step: int) -> frozenset[str]:
        """Iteration ``(round_, step)`` starts: who takes part (the change, if any, published)."""
        self.position = (round_, step)
        self.now = self.plan.present(round_, step)
        if self.now != self._shown:
            self._publish(round_, step, self._reason(round_, step))
        return self.now

    def at_federation(self, round_: int) -> frozenset[str]:
        self.position = (round_, -1)
        self.now = self.plan.at_federation(round_)
        return self.now

    def rejoining(self, round_: int) -> frozenset[str]:
        return self.plan.rejoining(round_)

    def drop(self, client: str, round_: int, step: int, problem: str) -> None:
        """``client`` is dead or silent (``policy: continue``): out from ``(round_, step)`` on, for good."""
        if client in self._dropped:
            return
        self._drop_all([client], round_, step, problem, f"{client}: {problem}",
                       f"peer {client} dropped ({problem});")

    def drop_gone(self, clients: Sequence[str], problem: str, first_round: int = 1) -> tuple[int, int] | None:
        """``clients`` are gone together (a Ray shard that died, under ``policy: continue``): out
        for good from the server's current iteration, or from the next round when it is at a
        round's federation (``first_round``'s first step before it started). One change published
        and one warning line; returns the point they are out from (``None``: all were out already).
        """
        gone = [c for c in natural_sorted(clients) if c in self._clients and c not in self._dropped]
        if not gone:
            return None
        if self.position is None:
            round_, step = first_round, 0
        else:
            round_, step = self.position if self.position[1] >= 0 else (self.position[0] + 1, 0)
        self._drop_all(gone, round_, step, problem, problem,
                       f"{problem}; client{'s' if len(gone) > 1 else ''} {', '.join(gone)} dropped,")
        return round_, step

    def _drop_all(self, gone: Sequence[str], round_: int, step: int, problem: str, why_all: str,
                  line: str) -> None:
        plan = self.plan
        for client in gone:
            plan = plan.with_dropped(client, round_, step, "peer")
        left = natural_sorted(plan.present(round_, step))
        if not left:  # refused whole: the run ends with this error, its state as it was
            raise P2PGanError(f"faults.policy continue: every client is gone ({why_all})")
        self.plan = plan
        self._dropped.update({client: (round_, step, problem) for client in gone})
        self.now = self.now - set(gone)
        self._publish(round_, step, f"{', '.join(gone)} dropped: {problem}", present=frozenset(left))
        if self._bus is not None:
            self._bus.publish(LogEvent(f"round {round_} step {step}: {line} the run goes on with {len(left)} "
                                       f"client{'s' if len(left) != 1 else ''}", "warning"))

    def _publish(self, round_: int, step: int, reason: str, present: frozenset[str] | None = None) -> None:
        shown = self.now if present is None else present
        self._shown = shown
        if self._bus is not None:
            self._bus.publish(ParticipationChanged(round_, step, tuple(natural_sorted(shown)),
                                                   tuple(c for c in self._clients if c not in shown), reason))

    def _reason(self, round_: int, step: int) -> str:
        gone = natural_sorted(self._shown - self.now)
        back = natural_sorted(self.now - self._shown)
        parts = [f"{c} out ({self._why(c, round_, step)})" for c in gone] + [f"{c} back" for c in back]
        return "; ".join(parts)

    def _why(self, client: str, round_: int, step: int) -> str:
        for absence in self.plan.absences:
            if absence.client == client and absence.covers(round_, step):
                return absence.reason
        if client in self.plan.randomly_dropped(round_):
            return "random dropout"
        if client in self.plan.deadline_steps:
            return "missed the round deadline"
        return "fault"

    # -- rejoining clients --------------------------------------------------------------------

    def remember(self, result: FederationResult) -> None:
        """After a federation: each aggregated client's cluster members (for its later return)."""
        members: dict[int, set[str]] = {}
        for cid, cluster in result.clusters.items():
            members.setdefault(int(cluster), set()).add(cid)
        for cid, cluster in result.clusters.items():
            self._members[cid] = frozenset(members[int(cluster)])

    def rejoin_model(self, client: str, result: FederationResult,
                     sizes: Mapping[str, int]) -> dict[str, BlockState]:
        """What a client back after missing federations loads: the model of the cluster that now
        holds most of the members of its last cluster (lowest cluster id on ties); a client never
        aggregated, or whose cluster-mates are all gone, gets what a new client would: the mean
        of every cluster's model weighted by the clusters' example counts (one cluster: its model)."""
        clusters: dict[int, list[str]] = {}
        for cid, cluster in result.clusters.items():
            clusters.setdefault(int(cluster), []).append(cid)
        mates = self._members.get(client, frozenset()) - {client}
        overlap = {label: len(mates.intersection(ids)) for label, ids in clusters.items()}
        best = min(overlap, key=lambda label: (-overlap[label], label)) if overlap else None
        if best is not None and overlap[best] > 0:
            return result.cluster_models[best]
        if len(result.cluster_models) == 1:
            return next(iter(result.cluster_models.values()))
        labels = sorted(result.cluster_models)
        counts = [sum(sizes[c] for c in clusters.get(label, ())) for label in labels]
        total = sum(counts)
        weights = [n / total for n in counts]
        blocks = result.cluster_models[labels[0]]
        return {block: weighted_average([result.cluster_models[label][block] for label in labels], weights)
                for block in blocks}

    # -- checkpoint ---------------------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """The server's fault state for a checkpoint (nothing without faults: the files stay as they were)."""
        if not self.active:
            return {}
        index = {c: i for i, c in enumerate(self._clients)}
        dropped = torch.full((len(self._clients), 2), -1, dtype=torch.int64)
        for cid, (round_, step, _) in self._dropped.items():
            dropped[index[cid]] = torch.tensor([round_, step])
        members = torch.zeros((len(self._clients), len(self._clients)), dtype=torch.uint8)
        for cid, mates in self._members.items():
            for mate in mates:
                members[index[cid], index[mate]] = 1
        return {"faults/dropped": dropped, "faults/members": members}

    def load_state(self, state: NodeState) -> None:
        """Continue from a checkpoint; re-publishes each dropped peer's change, in the order they
        were dropped, so every listener (results, latency) knows them again."""
        if not self.active:
            return
        dropped, members = state.tensors.get("faults/dropped"), state.tensors.get("faults/members")
        n = len(self._clients)
        if dropped is None or members is None or tuple(dropped.shape) != (n, 2) or tuple(members.shape) != (n, n):
            raise P2PGanError(f"checkpoint of node {state.node_id} does not match this run (fault state); "
                              "was the scenario changed since?")
        self._members = {cid: frozenset(self._clients[j] for j in range(n) if int(members[i, j]))
                         for i, cid in enumerate(self._clients) if int(members[i].sum())}
        lost = sorted((int(dropped[i, 0]), int(dropped[i, 1]), cid) for i, cid in enumerate(self._clients)
                      if int(dropped[i, 0]) >= 0)
        for round_, step, cid in lost:
            self.now = self.plan.present(round_, step)
            self.drop(cid, round_, step, "gone before the resume")


class ParticipationView:
    """A bus observer's copy of the plan as lived: the prepared plan, plus every peer a node
    dropped (a ``ParticipationChanged`` whose ``present`` lacks a client the plan had there)."""

    def __init__(self, faults: FaultPlan) -> None:
        self.plan = faults

    def __call__(self, event: object) -> None:
        # Iteration steps only: at a round's end the late are absent by plan, not dropped.
        if isinstance(event, ParticipationChanged) and 0 <= event.step < self.plan.steps_per_round:
            shown = set(event.present)
            for cid in natural_sorted(self.plan.present(event.round, event.step) - shown):
                self.plan = self.plan.with_dropped(cid, event.round, event.step, "peer")


__all__ = ["Participation", "ParticipationView"]
