"""Cut search: place every client's blocks to minimise the per-iteration latency, within limits.

The search space per profile is the legal cuts (16 for the reference model), plus ``full-local``
(every block of G and D on the device: no activation traffic, the whole model's parameters
exchanged at round end) when a :class:`SearchSpace` asks for it. A placement is infeasible for
a profile when it needs more than the profile's ``memory_bytes``, or when its cut's measured
leakage exceeds the privacy budget (:mod:`p2pgan.sim.feasibility`); infeasible placements are
never chosen, and a profile left with none is a one-line error naming the topology file and the
profile.

Two methods:

``ga``
    The reference genetic algorithm (docs/design.md §1.2): population 1000, 1000 generations, tournament
    of 5, crossover 0.7 (uniform or two-point, half each), bit-flip mutation 0.01, objective
    T_total. Like the reference, a genome holds one cut per *profile* (``encoding="profile"``);
    ``encoding="client"`` gives every client its own genes. Vectorised with numpy: a generation
    is a handful of array operations over the whole population. It returns the best plan seen in
    any generation (the reference returns the best of the last one, which can only be worse).
    A gene decoding to an infeasible cut is read as the nearest feasible one (or full-local where
    no cut fits); full-local has no 4-bit code, so otherwise the GA never picks it.

``exact``
    Branch and bound over one placement per profile. Clients with the same profile and batch are
    interchangeable, so a plan is one of K placements per profile (K^P plans, not K^N). The
    objective only grows with any duration, byte count or server load, so pricing each profile
    not yet decided with a virtual option (the element-wise cheapest of *its feasible*
    placements) bounds every completion of a partial plan from below; whole subtrees are
    discarded against the best plan found so far, and the children of thousands of partial plans
    are priced in one numpy call. The result is the optimum over per-profile plans, which contain
    every plan the reference GA can express; tests check it against brute force, including brute
    force over per-client plans (cuts mixed inside a profile) on small instances. On the paper's
    80 clients it prices a few hundred plans.

Prices. Without shared capacity the analytic model (:func:`p2pgan.sim.analytic.iteration_seconds`)
is SimPy's price exactly. With shared segments SimPy adds queueing, so the search can be asked
to stay exact under *SimPy's* price (``price="simpy"``): branch and bound on
:func:`p2pgan.sim.contention.contention_seconds`, a lower bound of SimPy's price that counts the
queueing on shared segments; then SimPy prices the candidates in increasing order of that bound
(the analytic optimum's plan as well) and stops when the next candidate's bound is no lower than
the best SimPy price found. Every plan not simulated has a SimPy price >= its bound >= that
price, so the plan returned is the SimPy optimum over the feasible per-profile plans (to a
relative 1e-9), and :class:`SimPyProof` says how many plans SimPy priced and how far the
analytic estimate was. Since the bound is usually SimPy's price itself, that is one or two runs.

Why per profile and not per bit: in the reference's phase-by-phase sum the four cut bits price
independently, but in the engine's real schedule a client runs its G tail and D head back to back
with no server round trip between them, so the generator's tail cut and the discriminator's head
cut share one critical-path segment. The search therefore enumerates whole cuts per profile; G and
D still enter the objective as separate server phases, which keeps the evaluation cheap.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from p2pgan.errors import P2PGanError
from p2pgan.ids import natural_sorted
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientCut, ClientSplit
from p2pgan.sim.analytic import GroupArrays, OptionTable, iteration_seconds
from p2pgan.sim.budgets import NO_BUDGET, CutPrivacyBudget, LeakageTable
from p2pgan.sim.contention import SharedArrays, contention_seconds
from p2pgan.sim.engine import simulate
from p2pgan.sim.feasibility import Feasibility
from p2pgan.sim.placement import FULL_LOCAL, Placement, cut_placements
from p2pgan.sim.trace import trace_from_plan
from p2pgan.topology.profiles import Topology

METHODS = ("exact", "ga")
PRICES = ("analytic", "simpy")
PROOF_TOLERANCE = 1e-9
"""Relative: a bound within this of the best SimPy price counts as reaching it (rounding)."""


@dataclass(frozen=True)
class GAParams:
    """docs/design.md §1.2's reference parameters by default."""

    population: int = 1000
    generations: int = 1000
    tournament: int = 5
    crossover: float = 0.7
    mutation: float = 0.01
    encoding: str = "profile"  # "profile" (reference) or "client"


@dataclass(frozen=True)
class SearchSpace:
    """What the search may choose from and what it must respect, beyond the topology's memory."""

    full_local: bool = False
    """Offer full-local next to the cuts (its plan cannot be written as cuts alone)."""
    leakage: LeakageTable | None = None
    """Measured leakage per cut; needed when ``budget`` constrains."""
    budget: CutPrivacyBudget = NO_BUDGET
    memory: bool = True
    """Honour the profiles' ``memory_bytes`` (``False``: to see what the constraint costs)."""


@dataclass
class SearchProblem:
    """Everything the objective needs: the placements, their feasibility and the client groups."""

    client_ids: tuple[str, ...]
    options: tuple[ClientCut, ...]
    """The legal cuts, as the first rows of ``table`` (a GA genome decodes to these)."""
    placements: tuple[Placement, ...]
    """Every row of ``table``: ``options`` as placements, then full-local when offered."""
    table: OptionTable
    profiles: tuple[str, ...]
    """Distinct profiles in order of first appearance among the clients."""
    profile_of: Mapping[str, str]
    groups: GroupArrays
    """One group per profile, ``count`` = its number of clients."""
    client_groups: GroupArrays
    """One group per client (for per-client plans)."""
    feasibility: Feasibility
    costs: ModelCosts
    batch_size: int
    topology: Topology
    assignment: Mapping[str, str]
    ordered_ids: tuple[str, ...] = ()
    """The clients in natural id order (the server's send order), for :meth:`contention`."""
    ordered_groups: GroupArrays | None = None
    shared: SharedArrays | None = None
    profile_index: np.ndarray | None = None
    """Per client of ``ordered_ids``: its profile's position in ``profiles``."""

    @classmethod
    def build(cls, client_ids: Sequence[str], costs: ModelCosts, batch_size: int, topology: Topology,
              assignment: Mapping[str, str], space: SearchSpace = SearchSpace()) -> "SearchProblem":
        ids = tuple(client_ids)
        if not ids:
            raise P2PGanError("cut search needs at least one client")
        cuts = cut_placements()
        placements = (*cuts, FULL_LOCAL) if space.full_local else cuts
        table = OptionTable.build([p.split() for p in placements], costs)
        profiles = tuple(dict.fromkeys(assignment[c] for c in ids))
        counts = [sum(1 for c in ids if assignment[c] == p) for p in profiles]
        groups = GroupArrays.build(topology, profiles, [batch_size] * len(profiles), counts)
        per_client = GroupArrays.build(topology, [assignment[c] for c in ids], [batch_size] * len(ids),
                                       [1] * len(ids), ids=ids)
        feasibility = Feasibility.build(topology, profiles, placements, costs, batch_size, space.leakage,
                                        space.budget, space.memory)
        problem = cls(ids, tuple(p.cut for p in cuts), placements, table, profiles, {c: assignment[c] for c in ids},
                      groups, per_client, feasibility, costs, batch_size, topology, assignment)
        if topology.has_shared_capacity:
            ordered = tuple(natural_sorted(ids))
            names = [assignment[c] for c in ordered]
            problem.ordered_ids = ordered
            problem.ordered_groups = GroupArrays.build(topology, names, [batch_size] * len(ordered),
                                                       [1] * len(ordered), ids=ordered)
            problem.shared = SharedArrays.build(topology, names, [1] * len(ordered), ordered)
            problem.profile_index = np.array([profiles.index(name) for name in names])
        return problem

    # -- prices ----------------------------------------------------------------------------------

    def evaluate(self, plans: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Analytic seconds per iteration of per-profile plans ``(..., P)`` (option indices)."""
        return iteration_seconds(plans, self.table, self.groups, present)

    def evaluate_clients(self, plans: np.ndarray) -> np.ndarray:
        """Analytic seconds per iteration of per-client plans ``(..., N)``."""
        return iteration_seconds(plans, self.table, self.client_groups)

    def bound_table(self) -> OptionTable:
        """The options plus one virtual row, the element-wise minimum of every column.

        Every column is a duration, a byte count or a server load, and the latency only grows
        with each of them, so a group given the virtual row costs no more than with any real
        option: pricing undecided groups with it bounds every completion of a partial plan.
        """
        columns = {key: np.append(values, values.min()) for key, values in self.table.columns.items()}
        return OptionTable((*self.table.splits, self.table.splits[0]), columns, self.table.program)

    def search_table(self) -> OptionTable:
        """The placements plus one virtual row per profile (row ``K + g``): the element-wise
        minimum over that profile's *feasible* placements, a tighter bound than
        :meth:`bound_table` when constraints exclude the cheapest values."""
        mask = self.feasibility.mask
        columns = {key: np.concatenate([values, [values[mask[g]].min() for g in range(len(self.profiles))]])
                   for key, values in self.table.columns.items()}
        return OptionTable((*self.table.splits, *[self.table.splits[0]] * len(self.profiles)), columns,
                           self.table.program)

    def contention(self, plans: np.ndarray, table: OptionTable | None = None) -> np.ndarray:
        """Lower bound of SimPy's seconds of per-profile plans ``(..., P)`` (rows of ``table``)."""
        if self.shared is None:
            return iteration_seconds(plans, table or self.table, self.groups)
        per_client = np.asarray(plans)[..., self.profile_index]
        return contention_seconds(per_client, table or self.table, self.ordered_groups, self.shared)

    def simulate(self, plan: Sequence[int]) -> float:
        """SimPy's seconds for one iteration from idle of a per-profile plan."""
        splits = {c: p.split() for c, p in self.expand_placements(plan).items()}
        ops = trace_from_plan(splits, self.costs, {c: self.batch_size for c in splits}, 1, False)
        return simulate(ops, self.topology, self.assignment).first_iteration_seconds

    # -- feasibility -------------------------------------------------------------------------------

    def feasible(self, plans: np.ndarray, per_client: bool = False) -> np.ndarray:
        """Whether every unit's option is feasible, for plans ``(..., P)`` (or ``(..., N)``)."""
        mask = self.feasibility.mask
        if per_client:
            rows = np.array([self.profiles.index(self.profile_of[c]) for c in self.client_ids])
        else:
            rows = np.arange(len(self.profiles))
        return np.all(mask[rows, np.asarray(plans)], axis=-1)

    def penalised(self, per_client: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        """The analytic price with ``inf`` for infeasible plans (the GA's fitness)."""
        evaluate = self.evaluate_clients if per_client else self.evaluate

        def price(plans: np.ndarray) -> np.ndarray:
            return np.where(self.feasible(plans, per_client), evaluate(plans), np.inf)

        return price

    def repair_table(self, per_client: bool = False) -> np.ndarray:
        """``(units, len(options))``: each cut itself where feasible for that unit, else the
        feasible cut differing in the fewest cut values, else full-local."""
        names = [self.profile_of[c] for c in self.client_ids] if per_client else list(self.profiles)
        mask = self.feasibility.mask
        values = np.array([cut.as_tuple() for cut in self.options])
        distance = np.abs(values[:, None, :] - values[None, :, :]).sum(axis=-1)
        table = np.empty((len(names), len(self.options)), dtype=np.int64)
        for u, name in enumerate(names):
            ok = mask[self.profiles.index(name)]
            cuts_ok = np.flatnonzero(ok[:len(self.options)])
            if cuts_ok.size == 0:  # only full-local fits this profile (the check ensured something does)
                table[u] = np.flatnonzero(ok)[0]
                continue
            table[u] = cuts_ok[np.argmin(distance[:, cuts_ok], axis=1)]
        return table

    def choices(self, g: int) -> np.ndarray:
        """The feasible placements of profile ``g``."""
        return np.flatnonzero(self.feasibility.mask[g])

    # -- plans -------------------------------------------------------------------------------------

    def expand_placements(self, plan: Sequence[int]) -> dict[str, Placement]:
        """A per-profile plan as one placement per client."""
        by_profile = {p: self.placements[int(k)] for p, k in zip(self.profiles, plan)}
        return {c: by_profile[self.profile_of[c]] for c in self.client_ids}

    def expand(self, plan: Sequence[int]) -> dict[str, ClientCut]:
        """A per-profile plan as one cut per client (a full-local placement has none: error)."""
        return _cuts_of(self.expand_placements(plan))

    def client_plan(self, cuts: Mapping[str, ClientCut]) -> np.ndarray:
        return np.array([self.options.index(cuts[c]) for c in self.client_ids])


def _cuts_of(placements: Mapping[str, Placement]) -> dict[str, ClientCut]:
    out = {}
    for client, placement in placements.items():
        if placement.cut is None:
            raise P2PGanError(f"client {client} is placed full-local, which no cut expresses "
                              "(read the result's placements)")
        out[client] = placement.cut
    return out


@dataclass(frozen=True)
class SimPyProof:
    """How the plan was proved the SimPy optimum, and how far the analytic model was."""

    proven: bool
    simulated_s: float
    """SimPy's seconds per iteration of the plan returned."""
    analytic_s: float
    """The analytic model's seconds for the same plan."""
    analytic_optimum_s: float
    """The analytic optimum's analytic seconds (what an analytic-only search reports)."""
    analytic_optimum_simulated_s: float
    """SimPy's seconds for the analytic optimum's plan."""
    next_bound_s: float
    """A lower bound of every plan SimPy did not price (``inf`` when none is left); ``>=
    simulated_s`` (to the tolerance) when proven."""
    simulations: int
    bound_evaluations: int

    @property
    def analytic_gap(self) -> float:
        """How far below SimPy the analytic estimate of the chosen plan is (relative)."""
        return (self.simulated_s - self.analytic_s) / self.simulated_s if self.simulated_s else 0.0

    @property
    def analytic_plan_excess(self) -> float:
        """How much slower, under SimPy, the analytic optimum's plan is than the plan returned."""
        return (self.analytic_optimum_simulated_s / self.simulated_s - 1.0) if self.simulated_s else 0.0


@dataclass
class SearchResult:
    method: str
    placements: dict[str, Placement]
    per_profile_placement: dict[str, Placement]
    seconds: float
    """Analytic seconds per iteration of the plan found."""
    wall_s: float
    evaluations: int
    history: list[float] = field(default_factory=list)
    """GA: best seconds so far after each generation."""
    feasibility: Feasibility | None = None
    proof: SimPyProof | None = None
    """Set when the search was exact under SimPy's price (``price="simpy"``, shared capacity)."""

    @property
    def cuts(self) -> dict[str, ClientCut]:
        """One cut per client; an error when a client is placed full-local."""
        return _cuts_of(self.placements)

    @property
    def per_profile(self) -> dict[str, ClientCut]:
        return _cuts_of(self.per_profile_placement)

    @property
    def simulated_s(self) -> float | None:
        return self.proof.simulated_s if self.proof else None

    def splits(self) -> dict[str, ClientSplit]:
        return {c: p.split() for c, p in self.placements.items()}

    @property
    def generation_reached(self) -> int | None:
        """GA: first generation (1-based) whose best-so-far equals the final best."""
        for i, value in enumerate(self.history):
            if value <= self.seconds:
                return i + 1
        return None


# -- exact ---------------------------------------------------------------------------------------

Pricer = Callable[..., np.ndarray]
"""``price(plans, table, present=None)``: seconds of per-profile plans (rows of ``table``)."""


def _analytic_pricer(problem: SearchProblem) -> Pricer:
    return lambda plans, table, present=None: iteration_seconds(plans, table, problem.groups, present)


def _contention_pricer(problem: SearchProblem) -> Pricer:
    def price(plans: np.ndarray, table: OptionTable, present: np.ndarray | None = None) -> np.ndarray:
        if present is not None:  # undecided profiles: their cheapest feasible virtual row
            plans = np.where(present, plans, len(problem.placements) + np.arange(len(problem.profiles)))
        return problem.contention(plans, table)

    return price


def exact_search(problem: SearchProblem, objective: str = "analytic") -> tuple[np.ndarray, float, int]:
    """Optimal feasible per-profile plan by branch and bound. Returns (plan, seconds, plans evaluated).

    ``objective``: ``"analytic"`` (the analytic model) or ``"contention"`` (the lower bound of
    SimPy's price; equal to the analytic model without shared capacity).
    """
    P = len(problem.profiles)
    K = len(problem.placements)
    table = problem.search_table()
    price = _contention_pricer(problem) if objective == "contention" else _analytic_pricer(problem)
    choices = [problem.choices(g) for g in range(P)]
    evaluations = 0

    # A good first incumbent makes the bound bite early: best uniform plan (each profile's first
    # feasible placement where that one is not), then coordinate descent.
    uniform = np.array([[k if problem.feasibility.mask[g, k] else choices[g][0] for g in range(P)]
                        for k in range(K)])
    values = price(uniform, table)
    evaluations += K
    best_plan = uniform[int(np.argmin(values))].copy()
    best = float(values.min())
    improved = True
    while improved:
        improved = False
        for g in range(P):
            trial = np.repeat(best_plan[None, :], len(choices[g]), axis=0)
            trial[:, g] = choices[g]
            values = price(trial, table)
            evaluations += len(choices[g])
            k = int(np.argmin(values))
            if values[k] < best:
                best, best_plan, improved = float(values[k]), trial[k].copy(), True

    # Decide the heaviest groups first: their choices dominate the max terms and server load.
    alone = np.empty(P)
    for g in range(P):
        present = np.zeros(P, dtype=bool)
        present[g] = True
        trial = np.repeat(best_plan[None, :], len(choices[g]), axis=0)
        trial[:, g] = choices[g]
        alone[g] = price(trial, table, np.broadcast_to(present, trial.shape)).min()
    order = np.argsort(-alone, kind="stable")

    # Depth-first over *batches* of partial plans: every expansion prices all children of up to
    # ``chunk`` partial plans in one vectorised call, and memory stays bounded by depth * chunk.
    # Undecided groups take their virtual cheapest feasible row, so a child's price is a lower bound.
    chunk = 4096 if objective == "analytic" else 512
    virtual = K + np.arange(P)
    stack: list[tuple[int, np.ndarray]] = [(0, virtual[None, :].copy())]
    while stack:
        depth, partial = stack.pop()
        g = order[depth]
        options = choices[g]
        children = np.repeat(partial, len(options), axis=0)
        children[:, g] = np.tile(options, partial.shape[0])
        bounds = price(children, table)
        evaluations += children.shape[0]
        if depth + 1 == P:
            k = int(np.argmin(bounds))
            if bounds[k] < best:
                best, best_plan = float(bounds[k]), children[k].copy()
            continue
        keep = np.argsort(bounds, kind="stable")
        keep = keep[bounds[keep] < best]
        survivors = children[keep]
        # Most promising batch last, so it is expanded first (and may tighten ``best`` early).
        for lo in reversed(range(0, survivors.shape[0], chunk)):
            stack.append((depth + 1, survivors[lo:lo + chunk]))
    return best_plan, best, evaluations


def brute_force(problem: SearchProblem, per_client: bool = False, chunk: int = 1 << 15) -> tuple[np.ndarray, float]:
    """Every feasible plan under the analytic model, for tests: per profile (K^P) or per client
    (K^N). Small instances only."""
    units = len(problem.client_ids) if per_client else len(problem.profiles)
    K = len(problem.placements)
    total = K**units
    if total > 1 << 24:
        raise ValueError(f"brute force over {total} plans is too many")
    evaluate = problem.penalised(per_client)
    best_plan, best = None, np.inf
    powers = K ** np.arange(units - 1, -1, -1)
    for lo in range(0, total, chunk):
        codes = np.arange(lo, min(total, lo + chunk))
        plans = (codes[:, None] // powers) % K
        values = evaluate(plans)
        k = int(np.argmin(values))
        if values[k] < best:
            best, best_plan = float(values[k]), plans[k].copy()
    return best_plan, best


def feasible_plans(problem: SearchProblem) -> np.ndarray:
    """Every feasible per-profile plan ``(M, P)``, for tests (small instances only)."""
    grids = np.meshgrid(*[problem.choices(g) for g in range(len(problem.profiles))], indexing="ij")
    return np.stack([grid.ravel() for grid in grids], axis=-1)


# -- exact under SimPy's price ------------------------------------------------------------------


def simpy_exact_search(problem: SearchProblem, analytic_plan: np.ndarray, analytic_s: float,
                       max_simulations: int = 200) -> tuple[np.ndarray, SimPyProof]:
    """The feasible per-profile plan with the least SimPy price (see the module docstring)."""
    P, K = len(problem.profiles), len(problem.placements)
    table = problem.search_table()
    price = _contention_pricer(problem)
    bound_plan, _, evaluations = exact_search(problem, "contention")
    simulated: dict[tuple[int, ...], float] = {}

    def sim(plan: np.ndarray) -> float:
        key = tuple(int(k) for k in plan)
        if key not in simulated:
            simulated[key] = problem.simulate(plan)
        return simulated[key]

    analytic_sim = sim(analytic_plan)
    best_plan, best = analytic_plan, analytic_sim
    if sim(bound_plan) < best:
        best_plan, best = bound_plan, sim(bound_plan)
    least = float(price(bound_plan[None, :], table)[0])  # the least bound of any feasible plan

    # Best first over partial plans keyed by their bound: complete plans come out in increasing
    # order of their bound, and nothing left in the heap can beat ``best`` once its top cannot.
    virtual = K + np.arange(P)
    order = np.argsort(-problem.groups.count, kind="stable")  # the most clients decided first
    counter = itertools.count()
    heap: list[tuple[float, int, int, tuple[int, ...]]] = [(least, next(counter), 0, tuple(virtual))]
    next_bound = np.inf
    proven = True
    while heap:
        bound, _, depth, partial = heap[0]
        if bound >= best * (1 - PROOF_TOLERANCE):
            next_bound = bound
            break
        heapq.heappop(heap)
        if depth == P:
            if len(simulated) >= max_simulations and tuple(partial) not in simulated:
                next_bound, proven = bound, False
                break
            value = sim(np.array(partial))
            if value < best:
                best_plan, best = np.array(partial), value
            continue
        g = order[depth]
        children = np.repeat(np.array(partial)[None, :], len(problem.choices(g)), axis=0)
        children[:, g] = problem.choices(g)
        bounds = price(children, table)
        evaluations += children.shape[0]
        for child, value in zip(children, bounds):
            if value < best * (1 - PROOF_TOLERANCE):
                heapq.heappush(heap, (float(value), next(counter), depth + 1, tuple(int(k) for k in child)))
    proof = SimPyProof(
        proven=proven,
        simulated_s=best,
        analytic_s=float(problem.evaluate(np.asarray(best_plan)[None, :])[0]),
        analytic_optimum_s=analytic_s,
        analytic_optimum_simulated_s=analytic_sim,
        next_bound_s=float(next_bound),
        simulations=len(simulated),
        bound_evaluations=evaluations,
    )
    return np.asarray(best_plan), proof


# -- genetic algorithm -------------------------------------------------------------------------


def _bits_to_options(problem: SearchProblem) -> Callable[[np.ndarray], np.ndarray]:
    """Decoder from genomes ``(pop, units*4)`` to option indices ``(pop, units)``."""
    index = {cut.as_tuple(): k for k, cut in enumerate(problem.options)}
    if any(v not in (0, 1) for cut in problem.options for v in cut.as_tuple()):
        raise P2PGanError("the GA encodes each cut as 4 bits; this model has cuts beyond 0/1")
    lookup = np.array([index[bits] for bits in itertools.product((0, 1), repeat=4)])
    weights = np.array([8, 4, 2, 1])

    def decode(genomes: np.ndarray) -> np.ndarray:
        bits = genomes.reshape(genomes.shape[0], -1, 4)
        return lookup[bits @ weights]

    return decode


def _tournament(rng: np.random.Generator, fitness: np.ndarray, n: int, k: int) -> np.ndarray:
    """``n`` tournament winners; each tournament draws ``k`` distinct members (Floyd's method)."""
    size = fitness.shape[0]
    k = min(k, size)
    picks = np.empty((n, k), dtype=np.int64)
    for j in range(k):
        top = size - k + j
        t = rng.integers(0, top + 1, n)
        dup = (picks[:, :j] == t[:, None]).any(axis=1) if j else np.zeros(n, dtype=bool)
        picks[:, j] = np.where(dup, top, t)
    return picks[np.arange(n), np.argmin(fitness[picks], axis=1)]


def genetic_search(problem: SearchProblem, seed: int, params: GAParams = GAParams(),
                   progress: Callable[[int, float], None] | None = None) -> tuple[np.ndarray, float, int, list[float]]:
    """The reference GA. Returns (plan as option indices, seconds, evaluations, best-so-far history)."""
    if params.encoding not in ("profile", "client"):
        raise P2PGanError(f"unknown GA encoding {params.encoding!r} (expected profile or client)")
    per_client = params.encoding == "client"
    units = len(problem.client_ids) if per_client else len(problem.profiles)
    evaluate = problem.evaluate_clients if per_client else problem.evaluate
    # Genes that decode to an infeasible placement are read as the nearest feasible one, so every
    # genome is a feasible plan (a penalty alone leaves heavily constrained populations empty).
    bits = _bits_to_options(problem)
    repair = problem.repair_table(per_client)
    rows = np.arange(repair.shape[0])

    def decode(genomes: np.ndarray) -> np.ndarray:
        return repair[rows, bits(genomes)]

    rng = np.random.default_rng(seed)
    P, L = params.population, 4 * units
    if P < 2:
        raise P2PGanError("GA population must be at least 2")
    half = (P + 1) // 2

    population = rng.integers(0, 2, (P, L), dtype=np.int8)
    fitness = evaluate(decode(population))
    evaluations = P
    k = int(np.argmin(fitness))
    best, best_genome = float(fitness[k]), population[k].copy()
    history: list[float] = []
    positions = np.arange(L)
    for generation in range(params.generations):
        parents = _tournament(rng, fitness, 2 * half, params.tournament)
        p1, p2 = population[parents[0::2]], population[parents[1::2]]
        crossing = rng.random(half) < params.crossover
        uniform = rng.random(half) < 0.5
        # Uniform crossover: every gene independently from either parent (independently per child).
        u1 = np.where(rng.random((half, L)) < 0.5, p1, p2)
        u2 = np.where(rng.random((half, L)) < 0.5, p2, p1)
        # Two-point crossover: swap the segment [a, b) with 1 <= a < b <= L-1.
        if L >= 3:
            a = rng.integers(1, L - 1, half)
            b = a + 1 + np.floor(rng.random(half) * (L - 1 - a)).astype(np.int64)
            segment = (positions >= a[:, None]) & (positions < b[:, None])
            t1, t2 = np.where(segment, p2, p1), np.where(segment, p1, p2)
        else:
            t1, t2 = u1, u2
        pick_u = (crossing & uniform)[:, None]
        pick_t = (crossing & ~uniform)[:, None]
        c1 = np.where(pick_u, u1, np.where(pick_t, t1, p1))
        c2 = np.where(pick_u, u2, np.where(pick_t, t2, p2))
        children = np.empty((2 * half, L), dtype=np.int8)
        children[0::2], children[1::2] = c1, c2
        children = children[:P]
        children ^= (rng.random((P, L)) < params.mutation).astype(np.int8)
        population = children
        fitness = evaluate(decode(population))
        evaluations += P
        k = int(np.argmin(fitness))
        if fitness[k] < best:
            best, best_genome = float(fitness[k]), population[k].copy()
        history.append(best)
        if progress is not None:
            progress(generation + 1, best)
    return decode(best_genome[None, :])[0], best, evaluations, history


# -- entry points --------------------------------------------------------------------------------


def run_search(method: str, client_ids: Sequence[str], costs: ModelCosts, batch_size: int, topology: Topology,
               assignment: Mapping[str, str], seed: int, ga: GAParams = GAParams(),
               progress: Callable[[int, float], None] | None = None, space: SearchSpace = SearchSpace(),
               price: str = "analytic", max_simulations: int = 200) -> SearchResult:
    """Search and report the plan, its analytic latency and what the search cost.

    ``price="simpy"`` makes ``exact`` exact under SimPy's price where the topology has shared
    capacity (elsewhere the two agree and it changes nothing); the result's ``proof`` says so.
    """
    if method not in METHODS:
        raise P2PGanError(f"unknown cut search {method!r} (expected one of: {', '.join(METHODS)})")
    if price not in PRICES:
        raise P2PGanError(f"unknown price {price!r} (expected one of: {', '.join(PRICES)})")
    problem = SearchProblem.build(client_ids, costs, batch_size, topology, assignment, space)
    started = time.perf_counter()
    history: list[float] = []
    proof = None
    if method == "exact":
        plan, seconds, evaluations = exact_search(problem)
        if price == "simpy" and problem.shared is not None:
            plan, proof = simpy_exact_search(problem, plan, seconds, max_simulations)
            seconds = proof.analytic_s
            evaluations += proof.bound_evaluations
        placements = problem.expand_placements(plan)
    else:
        plan, seconds, evaluations, history = genetic_search(problem, seed, ga, progress)
        if ga.encoding == "client":
            placements = {c: problem.placements[int(k)] for c, k in zip(problem.client_ids, plan)}
        else:
            placements = problem.expand_placements(plan)
    wall = time.perf_counter() - started
    per_profile: dict[str, Placement] = {}
    for c in problem.client_ids:
        per_profile.setdefault(problem.profile_of[c], placements[c])
    return SearchResult(method, placements, per_profile, seconds, wall, evaluations, history,
                        problem.feasibility, proof)


def search_cuts(method: str, client_ids: Sequence[str], costs: ModelCosts, batch_size: int, topology: Topology,
                assignment: Mapping[str, str], seed: int, **ga_options) -> dict[str, ClientCut]:
    """One cut per client minimising the analytic seconds per iteration. ``method``: exact | ga.

    Respects the profiles' ``memory_bytes``; never places a client full-local (a run's cuts are
    cuts; see :func:`search_placements`). ``ga_options`` (population, generations, ...) override
    :class:`GAParams` for ``ga``.
    """
    params = GAParams(**ga_options)
    return run_search(method, client_ids, costs, batch_size, topology, assignment, seed, params).cuts


def search_placements(method: str, client_ids: Sequence[str], costs: ModelCosts, batch_size: int,
                      topology: Topology, assignment: Mapping[str, str], seed: int,
                      space: SearchSpace = SearchSpace(full_local=True), price: str = "simpy",
                      **ga_options) -> dict[str, Placement]:
    """One placement per client (a cut, or full-local where that is faster and fits), within the
    space's limits, exact under SimPy's price by default."""
    params = GAParams(**ga_options)
    return run_search(method, client_ids, costs, batch_size, topology, assignment, seed, params,
                      space=space, price=price).placements
