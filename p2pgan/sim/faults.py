"""Faults in virtual time before the run: each client's own round (for the round deadline) and
the per-round estimate the live views show.

The run's final price is the SimPy engine's on the trace with the fault plan as its conditions
(:func:`p2pgan.sim.engine.simulate`); this module prices what must be known earlier, from one
iteration of the program, with a lossy link's resends at their expected count (``1 / (1 - p)``
copies per message) instead of the seeded ones, which belong to particular messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.program import Program
from p2pgan.protocol.messages import MessageKind
from p2pgan.sim.engine import simulate
from p2pgan.sim.trace import trace_from_program
from p2pgan.topology.profiles import Topology


@dataclass(frozen=True)
class ExpectedLoss:
    """``faults`` with every lossy link's resends folded into its bandwidth at their expected
    count: a link that loses a fraction ``p`` of its copies carries ``1 / (1 - p)`` copies per message."""

    faults: FaultPlan

    def compute_factor(self, client: str) -> float:
        return self.faults.compute_factor(client)

    def link_factor(self, client: str) -> float:
        return self.faults.link_factor(client) / (1.0 - self.faults.loss_rate(client))

    def retransmissions(self, round_: int, step: int, phase: object, src: str, dst: str) -> int:
        return 0


@dataclass(frozen=True)
class OwnRound:
    """A client's round as if it alone used the server: ``iteration_s`` per step and its whole
    round (every step, then its parameter upload arriving), in virtual seconds."""

    iteration_s: float
    round_s: float


def own_rounds(program: Program, splits: Mapping[str, ClientSplit], costs: ModelCosts, batches: Mapping[str, int],
               topology: Topology, assignment: Mapping[str, str], faults: FaultPlan, steps_per_round: int,
               server_batch: int | None = None) -> dict[str, OwnRound]:
    """Each client's own round with its straggler factors and expected resends (the round
    deadline's measure: a slow client is late whoever else takes part)."""
    conditions = ExpectedLoss(faults)
    out = {}
    for cid, split in splits.items():
        ops = trace_from_program(program, {cid: split}, costs, {cid: batches[cid]}, 1, include_aggregation=True,
                                 server_batch=server_batch)
        report = simulate(ops, topology, assignment, conditions)
        iteration = report.first_iteration_seconds
        # The update counts once the server has it: the end of the client's parameter upload.
        uploaded = [report.finish_s[op.index] for op in ops
                    if op.msg_kind == MessageKind.PARAMS.value and op.node == cid]
        upload_s = max(uploaded) - iteration if uploaded else 0.0
        out[cid] = OwnRound(iteration, steps_per_round * iteration + upload_s)
    return out


class RoundEstimates:
    """Simulated seconds of each round's iterations with only the clients present at each one
    (SimPy on one iteration per distinct set of clients, resends at their expected count): the
    live views' running estimate of a run with faults."""

    def __init__(self, program: Program, splits: Mapping[str, ClientSplit], costs: ModelCosts,
                 batches: Mapping[str, int], topology: Topology, assignment: Mapping[str, str], faults: FaultPlan,
                 server_batch: int | None = None) -> None:
        self._program, self._splits, self._costs, self._batches = program, splits, costs, batches
        self._topology, self._assignment, self._faults = topology, assignment, faults
        self._server_batch = server_batch
        self._iteration: dict[frozenset[str], float] = {}

    def iteration_seconds(self, present: frozenset[str]) -> float:
        found = self._iteration.get(present)
        if found is None:
            splits = {c: s for c, s in self._splits.items() if c in present}
            if not splits:
                found = 0.0
            else:
                ops = trace_from_program(self._program, splits, self._costs, self._batches, 1,
                                         include_aggregation=False, server_batch=self._server_batch)
                found = simulate(ops, self._topology, self._assignment,
                                 ExpectedLoss(self._faults)).first_iteration_seconds
            self._iteration[present] = found
        return found

    def round_seconds(self, round_: int, faults: FaultPlan | None = None) -> float:
        """``round_``'s iterations under ``faults`` (default: the plan given at construction)."""
        faults = faults if faults is not None else self._faults
        return sum(self.iteration_seconds(faults.present(round_, step)) for step in range(faults.steps_per_round))


__all__ = ["ExpectedLoss", "OwnRound", "RoundEstimates", "own_rounds"]
