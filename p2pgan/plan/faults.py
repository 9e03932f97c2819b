"""Who takes part when, and how slow and lossy each client is: a run's faults as a pure plan.

The scenario's ``faults:`` section (:class:`~p2pgan.config.schema.FaultsSpec`) resolved for the
run's clients and schedule. Every node derives the same :class:`FaultPlan` from the scenario (it
is public metadata, like the schedule): the engine asks it who is present at each iteration and
whose update a round's federation uses; the simulator asks it for slowdown factors and for the
number of times each message had to be sent again.

Randomness (random dropouts, lost copies) is a hash of ``(seed, what, round, ..., client)``:
the same question gets the same answer in every process, in any order, on any transport and
after a resume, without any generator state to carry.

Timeline of a client in round ``r`` (steps ``0 .. steps_per_round - 1``): a scripted dropout at
``(r, s)`` means it takes part in steps ``< s`` of ``r`` and in nothing after, until its
``rejoin_round`` (from that round's first step); a random dropout keeps it out of all of round
``r``; a client late for the round deadline stops at the step the deadline falls in (or, when
only its parameter upload would be late, after the last step) and misses that round's federation.
Presence never grows within a round: a client comes back only at a round's first step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pgan.config.schema import FaultsSpec, selected_clients
from p2pgan.errors import ConfigError
from p2pgan.ids import SERVER_ID, natural_sorted

POLICIES = ("fail", "continue")
_MEMO_SIZE = 4096


@dataclass(frozen=True)
class Absence:
    """``client`` misses every iteration from ``(from_round, from_step)`` until ``until_round``
    (exclusive; ``None``: the end of the run)."""

    client: str
    from_round: int
    from_step: int = 0
    until_round: int | None = None
    reason: str = "scripted"

    def covers(self, round_: int, step: int) -> bool:
        if (round_, step) < (self.from_round, self.from_step):
            return False
        return self.until_round is None or round_ < self.until_round


@dataclass(frozen=True)
class RandomDropout:
    """Each of ``clients`` misses a whole round with ``probability``, drawn per (round, client)."""

    index: int
    clients: frozenset[str]
    probability: float


def _uniform(seed: int, *key: object) -> float:
    """A number in (0, 1] that is a pure function of ``seed`` and ``key``."""
    text = "|".join(str(part) for part in (seed, *key)).encode("utf-8")
    word = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
    return (word + 1) / 2.0**64


@dataclass(frozen=True)
class FaultPlan:
    """The run's faults, resolved. Build with :meth:`from_spec` (or :meth:`none`)."""

    client_ids: tuple[str, ...]
    rounds: int
    steps_per_round: int
    seed: int = 0
    policy: str = "fail"
    peer_deadline_s: float = 30.0
    round_deadline_s: float | None = None
    absences: tuple[Absence, ...] = ()
    random_dropouts: tuple[RandomDropout, ...] = ()
    compute_factors: Mapping[str, float] = field(default_factory=dict)
    link_factors: Mapping[str, float] = field(default_factory=dict)
    loss_rates: Mapping[str, float] = field(default_factory=dict)
    deadline_steps: Mapping[str, int] = field(default_factory=dict)
    """Late clients -> how many steps of each round they finish before the round deadline
    (``steps_per_round``: all of them, only the parameter upload would be late)."""
    _memo: dict[tuple[Any, ...], frozenset[str]] = field(default_factory=dict, init=False, repr=False,
                                                         compare=False)
    """Answers already computed (pure, so any process may recompute them): every client asks
    who is present at every step, and a random dropout hashes every client each time."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown fault policy {self.policy!r} (expected one of: {', '.join(POLICIES)})")

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def none(cls, client_ids: Sequence[str], rounds: int = 1, steps_per_round: int = 1) -> "FaultPlan":
        """No faults: every client present everywhere, nothing slowed or lost (``policy: fail``)."""
        return cls(tuple(client_ids), rounds, steps_per_round)

    @classmethod
    def from_spec(cls, spec: FaultsSpec, domain_clients: Mapping[str, Sequence[str]], rounds: int,
                  steps_per_round: int, seed: int, source: str = "") -> "FaultPlan":
        """``spec`` resolved for the run's clients (``domain_clients``: each domain's client ids, in
        client order) and schedule. ``seed``: the scenario's, used unless ``spec.seed`` is set.
        Raises :class:`ConfigError` naming ``source:faults...`` for what the schedule refuses."""
        client_ids = tuple(natural_sorted(cid for ids in domain_clients.values() for cid in ids))

        def chosen(section: str, index: int, clients) -> tuple[str, ...]:
            found = selected_clients(clients, domain_clients)
            if isinstance(found, str):
                raise ConfigError(source, f"faults.{section}[{index}].clients",
                                  f"unknown client or domain {found!r} (expected \"*\", a domain "
                                  f"({', '.join(domain_clients)}) or a client id of this run)")
            return found

        absences: list[Absence] = []
        random: list[RandomDropout] = []
        for i, rule in enumerate(spec.dropout):
            clients = chosen("dropout", i, rule.clients)
            if rule.probability is not None:
                if rule.probability > 0:
                    random.append(RandomDropout(i, frozenset(clients), float(rule.probability)))
                continue
            assert rule.at_round is not None
            if rule.at_round > rounds:
                raise ConfigError(source, f"faults.dropout[{i}].at_round",
                                  f"round {rule.at_round} but the run has {rounds} rounds (expected 1..{rounds})")
            if rule.at_step >= steps_per_round:
                raise ConfigError(source, f"faults.dropout[{i}].at_step",
                                  f"step {rule.at_step} but a round of this run has {steps_per_round} steps "
                                  f"(expected 0..{steps_per_round - 1})")
            absences.extend(Absence(cid, rule.at_round, rule.at_step, rule.rejoin_round) for cid in clients)
        compute: dict[str, float] = {}
        link: dict[str, float] = {}
        for i, rule in enumerate(spec.stragglers):
            for cid in chosen("stragglers", i, rule.clients):
                compute[cid] = compute.get(cid, 1.0) * float(rule.compute)
                link[cid] = link.get(cid, 1.0) * float(rule.link)
        kept: dict[str, float] = {}
        for i, rule in enumerate(spec.lossy_links):
            for cid in chosen("lossy_links", i, rule.clients):
                kept[cid] = kept.get(cid, 1.0) * (1.0 - float(rule.loss_rate))  # independent losses
        return cls(client_ids, rounds, steps_per_round, seed=int(spec.seed if spec.seed is not None else seed),
                   policy=spec.policy, peer_deadline_s=float(spec.peer_deadline_s),
                   round_deadline_s=spec.round_deadline_s, absences=tuple(absences), random_dropouts=tuple(random),
                   compute_factors={c: f for c, f in compute.items() if f != 1.0},
                   link_factors={c: f for c, f in link.items() if f != 1.0},
                   loss_rates={c: 1.0 - k for c, k in kept.items() if k < 1.0})

    def with_deadline(self, own_round_s: Mapping[str, float], own_iteration_s: Mapping[str, float]) -> "FaultPlan":
        """This plan with the round deadline applied: a client whose own round (``own_round_s``:
        virtual seconds, its iterations and its parameter upload) ends after ``round_deadline_s``
        finishes only the steps that end before it (``own_iteration_s`` each) and misses every
        round's federation. Without a deadline, the plan itself."""
        deadline = self.round_deadline_s
        if deadline is None:
            return self
        late = {}
        for cid in self.client_ids:
            if own_round_s[cid] > deadline:
                per_step = own_iteration_s[cid]
                steps = self.steps_per_round if per_step <= 0 else math.floor(deadline / per_step)
                late[cid] = min(self.steps_per_round, steps)
        return dataclasses.replace(self, deadline_steps=late)

    def with_dropped(self, client: str, round_: int, step: int, reason: str = "peer") -> "FaultPlan":
        """This plan with ``client`` gone from ``(round_, step)`` on for good (a dead or silent
        peer dropped under ``policy: continue``)."""
        if client not in self.client_ids:
            raise KeyError(client)
        return dataclasses.replace(self, absences=(*self.absences, Absence(client, round_, step, None, reason)))

    # -- questions --------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Anything differs from a run without ``faults:`` (a fault scripted, drawn or possible,
        a deadline, or ``policy: continue``)."""
        return bool(self.absences or self.random_dropouts or self.compute_factors or self.link_factors
                    or self.loss_rates or self.deadline_steps or self.round_deadline_s is not None
                    or self.policy != "fail")

    def _remembered(self, key: tuple[Any, ...], compute) -> frozenset[str]:
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            found = self._memo[key] = compute()
        return found

    def randomly_dropped(self, round_: int) -> frozenset[str]:
        """Clients a random dropout keeps out of all of ``round_``."""
        if not self.random_dropouts:
            return frozenset()
        return self._remembered(("random", round_), lambda: frozenset(
            cid for rule in self.random_dropouts for cid in rule.clients
            if _uniform(self.seed, "dropout", rule.index, round_, cid) <= rule.probability))

    def _absent_by_dropout(self, round_: int, step: int, random: frozenset[str]) -> set[str]:
        out = set(random)
        out.update(a.client for a in self.absences if a.covers(round_, step))
        return out

    def present(self, round_: int, step: int) -> frozenset[str]:
        """Clients taking part in iteration ``(round_, step)``."""
        def compute() -> frozenset[str]:
            absent = self._absent_by_dropout(round_, step, self.randomly_dropped(round_))
            return frozenset(cid for cid in self.client_ids if cid not in absent
                             and step < self.deadline_steps.get(cid, self.steps_per_round + 1))

        return self._remembered(("present", round_, step), compute)

    def at_federation(self, round_: int) -> frozenset[str]:
        """Clients whose update ``round_``'s federation uses: present at its last step, not late."""
        return frozenset(c for c in self.present(round_, self.steps_per_round - 1) if c not in self.deadline_steps)

    def rejoining(self, round_: int) -> frozenset[str]:
        """Clients present in ``round_`` that missed the previous round's federation: they load
        their cluster's weights before their first iteration (none in round 1 or after the run)."""
        if round_ <= 1 or round_ > self.rounds:
            return frozenset()
        return self.present(round_, 0) - self.at_federation(round_ - 1)

    def compute_factor(self, client: str) -> float:
        return float(self.compute_factors.get(client, 1.0))

    def link_factor(self, client: str) -> float:
        return float(self.link_factors.get(client, 1.0))

    def loss_rate(self, client: str) -> float:
        return float(self.loss_rates.get(client, 0.0))

    def retransmissions(self, round_: int, step: int, phase: object, src: str, dst: str) -> int:
        """Copies of the message ``(round_, step, phase, src -> dst)`` that were lost before one
        arrived: geometric (``P(k) = p**k * (1 - p)``) with the loss rate of the message's
        client end, a pure function of the plan's seed and the message."""
        client = dst if src == SERVER_ID else src
        p = self.loss_rate(client)
        if p <= 0.0:
            return 0
        phase = getattr(phase, "value", phase)
        u = _uniform(self.seed, "loss", round_, step, phase, src, dst)
        return int(math.floor(math.log(u) / math.log(p)))

    def participation(self, round_: int) -> dict[str, Any]:
        """Who took part in ``round_``, for ``rounds.jsonl`` (ids in natural order): ``present``
        (took part in its first step), ``federated`` (the federation used their update),
        ``dropped`` (out for some or all of the round by a dropout or a dropped peer),
        ``dropped_at_step`` (their first missed step), ``late`` (missed the round deadline) and
        ``rejoined`` (back after missing the previous round's federation)."""
        random = self.randomly_dropped(round_)
        first_missed: dict[str, int] = {}
        for step in range(self.steps_per_round):
            for cid in self._absent_by_dropout(round_, step, random):
                first_missed.setdefault(cid, step)
        late = [c for c in self.client_ids if c in self.deadline_steps and c not in first_missed]
        return {
            "present": natural_sorted(self.present(round_, 0)),
            "federated": natural_sorted(self.at_federation(round_)),
            "dropped": natural_sorted(first_missed),
            "dropped_at_step": {c: first_missed[c] for c in natural_sorted(first_missed)},
            "late": late,
            "rejoined": natural_sorted(self.rejoining(round_)),
        }

    def empty_rounds(self, rounds: Iterable[int] | None = None) -> list[int]:
        """Rounds whose federation would use no client."""
        return [r for r in (rounds if rounds is not None else range(1, self.rounds + 1))
                if not self.at_federation(r)]

    def check_every_round_federates(self, source: str = "") -> "FaultPlan":
        """This plan, or a one-line :class:`ConfigError` when some round would train nobody."""
        empty = self.empty_rounds()
        if empty:
            shown = ", ".join(map(str, empty[:5])) + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else "")
            raise ConfigError(source, "faults", f"faults leave no client at the federation of round{'s' if len(empty) > 1 else ''} "
                                                f"{shown} (expected at least one client in every round)")
        return self

    def describe(self) -> list[str]:
        """One line per fault in force (clients with equal settings share a line), for logs,
        ``latency.json`` and the docs' tables."""
        lines = []
        for a in self.absences:
            back = f", back at round {a.until_round}" if a.until_round is not None else ", never back"
            lines.append(f"{a.client} drops out at round {a.from_round} step {a.from_step}{back} ({a.reason})")
        for rule in self.random_dropouts:
            lines.append(f"{self._named(rule.clients)} drop out of each round with probability {rule.probability:g}")
        for factor, clients in self._grouped(self.compute_factors):
            lines.append(f"{self._named(clients)} compute {factor:g}x slower")
        for factor, clients in self._grouped(self.link_factors):
            lines.append(f"{self._named(clients)} send and receive {factor:g}x slower")
        for rate, clients in self._grouped(self.loss_rates):
            lines.append(f"{self._named(clients)} lose {rate:.3g} of the copies on their link")
        for steps, clients in self._grouped(self.deadline_steps):
            lines.append(f"{self._named(clients)} miss the round deadline ({self.round_deadline_s:g} s): "
                         f"{steps} of {self.steps_per_round} steps, no federation")
        return lines

    def _named(self, clients: Iterable[str]) -> str:
        chosen = natural_sorted(set(clients))
        if len(chosen) == len(self.client_ids) and len(chosen) > 1:
            return f"all {len(chosen)} clients"
        return ", ".join(chosen)

    @staticmethod
    def _grouped(values: Mapping[str, Any]) -> list[tuple[Any, list[str]]]:
        groups: dict[Any, list[str]] = {}
        for cid in natural_sorted(values):
            groups.setdefault(values[cid], []).append(cid)
        return sorted(groups.items(), key=lambda item: natural_sorted(item[1])[0])


__all__ = ["Absence", "FaultPlan", "POLICIES", "RandomDropout"]
