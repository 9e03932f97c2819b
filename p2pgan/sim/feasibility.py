"""Which placements a device can run: its memory, and the privacy budget.

Memory model (per client, fp32, from the measured :class:`~p2pgan.model.costs.ModelCosts`):

* the parameters of the blocks it holds (``param_bytes``, float buffers such as batch-norm
  running statistics included), their gradients (1x) and Adam's two moment estimates (2x):
  ``4 x params`` in all;
* the activations kept alive for the backward pass at the batch size: the output of every block
  it runs, plus the tensor it receives from the server as its tail's input. G's are alive from
  G's forward to its backward (``batch`` samples). D runs on fake and real images before one
  backward of both passes, so D's are alive for ``2 x batch`` samples (the later adversarial pass
  through D needs only ``batch``, after those are freed).

It leaves out framework overhead and temporary buffers inside one block's computation, so it is
a lower estimate: a plan it calls infeasible cannot fit; declare ``memory_bytes`` as what the
device can give to training. A placement is infeasible when its need exceeds the profile's
``memory_bytes`` (unlimited when the profile declares none), or when its cut's measured leakage
exceeds the privacy budget (full-local leaks nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit, NetworkSplit
from p2pgan.sim.budgets import NO_BUDGET, NO_LEAKAGE, CutPrivacyBudget, Leakage, LeakageTable
from p2pgan.sim.placement import Placement
from p2pgan.topology.profiles import Topology

ADAM_STATE = 2
"""Adam keeps two moment estimates per parameter."""


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a client needs for one placement at one batch size."""

    params: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.activations


def _activation_bytes(split: NetworkSplit, costs: ModelCosts) -> int:
    """Per sample: outputs of the client's blocks, plus the server output its tail consumes."""
    kept = sum(costs[name].out_bytes for name in split.client_blocks)
    if split.server and split.tail:
        kept += costs[split.server[-1]].out_bytes
    return kept


def memory_need(split: ClientSplit, costs: ModelCosts, batch: int) -> MemoryNeed:
    params = sum(costs[name].param_bytes for name in split.client_blocks)
    per_sample = _activation_bytes(split.generator, costs) + 2 * _activation_bytes(split.discriminator, costs)
    activations = batch * per_sample
    return MemoryNeed(params, params, ADAM_STATE * params, activations)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def placement_leakage(placement: Placement, leakage: LeakageTable | None, budget: CutPrivacyBudget) -> Leakage | None:
    """The leakage the budget is checked against (``None`` when nothing constrains it)."""
    if placement.cut is None:
        return NO_LEAKAGE
    if not budget.constrains:
        return None
    if leakage is None:
        raise P2PGanError("a privacy budget needs a leakage table (measured by `p2pgan privacy`)")
    if placement.cut not in leakage:
        raise P2PGanError(f"the leakage table has no entry for cut {placement.cut} (measure it, or drop the budget)")
    return leakage[placement.cut]


@dataclass(frozen=True)
class Feasibility:
    """Per profile and placement: does it fit the memory, and is it within the privacy budget."""

    profiles: tuple[str, ...]
    placements: tuple[Placement, ...]
    needs: tuple[MemoryNeed, ...]
    """Per placement, at the search's batch size."""
    memory_ok: np.ndarray
    """``(P, K)`` bool."""
    privacy_ok: np.ndarray
    """``(K,)`` bool: the budget is the same for every profile."""
    budget: CutPrivacyBudget = NO_BUDGET

    @property
    def mask(self) -> np.ndarray:
        """``(P, K)``: feasible placements per profile."""
        return self.memory_ok & self.privacy_ok[None, :]

    @classmethod
    def build(cls, topology: Topology, profiles: Sequence[str], placements: Sequence[Placement], costs: ModelCosts,
              batch: int, leakage: LeakageTable | None = None, budget: CutPrivacyBudget = NO_BUDGET,
              memory: bool = True) -> "Feasibility":
        """``memory=False`` ignores every ``memory_bytes`` (to see what the constraint costs)."""
        placements = tuple(placements)
        needs = tuple(memory_need(p.split(), costs, batch) for p in placements)
        memory_ok = np.ones((len(profiles), len(placements)), dtype=bool)
        if memory:
            for i, name in enumerate(profiles):
                limit = topology.profile(name).memory_bytes
                if limit is not None:
                    memory_ok[i] = [need.total <= limit for need in needs]
        leaks = [placement_leakage(p, leakage, budget) for p in placements]
        privacy_ok = np.array([leak is None or budget.admits(leak) for leak in leaks], dtype=bool)
        out = cls(tuple(profiles), placements, needs, memory_ok, privacy_ok, budget)
        out.check(topology, batch)
        return out

    def check(self, topology: Topology, batch: int) -> None:
        """A profile with no feasible placement is a one-line error naming the file and profile."""
        for i, name in enumerate(self.profiles):
            if self.mask[i].any():
                continue
            limit = topology.profile(name).memory_bytes
            smallest = min(range(len(self.needs)), key=lambda k: self.needs[k].total)
            key = f"profiles.{name}.memory_bytes"
            if not self.memory_ok[i].any():
                raise ConfigError(topology.source, key,
                                  f"{format_bytes(limit)} holds no placement at batch {batch}: the smallest, "
                                  f"{self.placements[smallest]}, needs {format_bytes(self.needs[smallest].total)}")
            if limit is None:
                raise ConfigError(topology.source, f"profiles.{name}",
                                  f"the privacy budget ({self.budget}) excludes every placement this search may "
                                  "choose (allow full-local, or loosen cuts.privacy)")
            fitting = [str(p) for p, ok in zip(self.placements, self.memory_ok[i]) if ok]
            shown = ", ".join(fitting[:3]) + (f" and {len(fitting) - 3} more" if len(fitting) > 3 else "")
            raise ConfigError(topology.source, key,
                              f"{format_bytes(limit)} at batch {batch} holds only {shown}, and the privacy budget "
                              f"({self.budget}) excludes every one of them")

    def binding(self, profile: str) -> list[str]:
        """What excludes placements of ``profile``: ``"memory"``, ``"privacy"`` (either may be empty)."""
        i = self.profiles.index(profile)
        return [name for name, ok in (("memory", self.memory_ok[i]), ("privacy", self.privacy_ok)) if not ok.all()]
