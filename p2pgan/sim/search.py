"""Cut search: pick every client's four cuts to minimise the analytic per-iteration latency.

Two methods on the same objective (:func:`p2pgan.sim.analytic.iteration_seconds`):

``ga``
    The reference genetic algorithm (DESIGN §1.2): population 1000, 1000 generations, tournament
    of 5, crossover 0.7 (uniform or two-point, half each), bit-flip mutation 0.01, objective
    T_total. Like the reference, a genome holds one cut per *profile* (``encoding="profile"``);
    ``encoding="client"`` gives every client its own genes. Vectorised with numpy: a generation
    is a handful of array operations over the whole population. It returns the best plan seen in
    any generation (the reference returns the best of the last one, which can only be worse).

``exact``
    Branch and bound over one cut per profile. Clients with the same profile and batch are
    interchangeable, so a plan is one of 16 cuts per profile (16^P plans, not 16^N). The
    objective only grows with any duration, byte count or server load, so pricing the profiles
    not yet decided with a virtual option (the element-wise cheapest of the 16) bounds every
    completion of a partial plan from below; whole subtrees are discarded against the best plan
    found so far, and the children of thousands of partial plans are priced in one numpy call.
    The result is the optimum over per-profile plans, which contain every plan the reference
    GA can express; tests check it against brute force, including brute force over per-client
    plans (cuts mixed inside a profile) on small instances. On the paper's 80 clients it prices
    a few hundred plans.

Why per profile and not per bit: in the reference's phase-by-phase sum the four cut bits price
independently, but in the engine's real schedule a client runs its G tail and D head back to back
with no server round trip between them, so the generator's tail cut and the discriminator's head
cut share one critical-path segment. The search therefore enumerates whole cuts per profile; G and
D still enter the objective as separate server phases, which keeps the evaluation cheap.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from p2pgan.errors import P2PGanError
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientCut, all_cut_options, split_client
from p2pgan.sim.analytic import GroupArrays, OptionTable, iteration_seconds
from p2pgan.topology.profiles import Topology

METHODS = ("exact", "ga")


@dataclass(frozen=True)
class GAParams:
    """DESIGN §1.2's reference parameters by default."""

    population: int = 1000
    generations: int = 1000
    tournament: int = 5
    crossover: float = 0.7
    mutation: float = 0.01
    encoding: str = "profile"  # "profile" (reference) or "client"


@dataclass
class SearchProblem:
    """Everything the objective needs: the 16 cut options and the clients grouped by profile."""

    client_ids: tuple[str, ...]
    options: tuple[ClientCut, ...]
    table: OptionTable
    profiles: tuple[str, ...]
    """Distinct profiles in order of first appearance among the clients."""
    profile_of: Mapping[str, str]
    groups: GroupArrays
    """One group per profile, ``count`` = its number of clients."""
    client_groups: GroupArrays
    """One group per client (for per-client plans)."""

    @classmethod
    def build(cls, client_ids: Sequence[str], costs: ModelCosts, batch_size: int, topology: Topology,
              assignment: Mapping[str, str]) -> "SearchProblem":
        ids = tuple(client_ids)
        if not ids:
            raise P2PGanError("cut search needs at least one client")
        options = tuple(all_cut_options())
        table = OptionTable.build([split_client(cut) for cut in options], costs)
        profiles = tuple(dict.fromkeys(assignment[c] for c in ids))
        counts = [sum(1 for c in ids if assignment[c] == p) for p in profiles]
        groups = GroupArrays.build(topology, profiles, [batch_size] * len(profiles), counts)
        per_client = GroupArrays.build(topology, [assignment[c] for c in ids], [batch_size] * len(ids),
                                       [1] * len(ids), ids=ids)
        return cls(ids, options, table, profiles, {c: assignment[c] for c in ids}, groups, per_client)

    def evaluate(self, plans: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Seconds per iteration of per-profile plans ``(..., P)`` (option indices)."""
        return iteration_seconds(plans, self.table, self.groups, present)

    def bound_table(self) -> OptionTable:
        """The options plus one virtual row, the element-wise minimum of every column.

        Every column is a duration, a byte count or a server load, and the latency only grows
        with each of them, so a group given the virtual row costs no more than with any real
        option: pricing undecided groups with it bounds every completion of a partial plan.
        """
        columns = {key: np.append(values, values.min()) for key, values in self.table.columns.items()}
        return OptionTable((*self.table.splits, self.table.splits[0]), columns)

    def evaluate_clients(self, plans: np.ndarray) -> np.ndarray:
        """Seconds per iteration of per-client plans ``(..., N)``."""
        return iteration_seconds(plans, self.table, self.client_groups)

    def expand(self, plan: Sequence[int]) -> dict[str, ClientCut]:
        """A per-profile plan as one cut per client."""
        by_profile = {p: self.options[int(k)] for p, k in zip(self.profiles, plan)}
        return {c: by_profile[self.profile_of[c]] for c in self.client_ids}

    def client_plan(self, cuts: Mapping[str, ClientCut]) -> np.ndarray:
        return np.array([self.options.index(cuts[c]) for c in self.client_ids])


@dataclass
class SearchResult:
    method: str
    cuts: dict[str, ClientCut]
    per_profile: dict[str, ClientCut]
    seconds: float
    """Analytic seconds per iteration of the plan found."""
    wall_s: float
    evaluations: int
    history: list[float] = field(default_factory=list)
    """GA: best seconds so far after each generation."""

    @property
    def generation_reached(self) -> int | None:
        """GA: first generation (1-based) whose best-so-far equals the final best."""
        for i, value in enumerate(self.history):
            if value <= self.seconds:
                return i + 1
        return None


# -- exact ---------------------------------------------------------------------------------------


def exact_search(problem: SearchProblem) -> tuple[np.ndarray, float, int]:
    """Optimal per-profile plan by branch and bound. Returns (plan, seconds, plans evaluated)."""
    P, K = len(problem.profiles), len(problem.options)
    evaluations = 0

    # A good first incumbent makes the bound bite early: best uniform plan, then coordinate descent.
    uniform = np.repeat(np.arange(K)[:, None], P, axis=1)
    values = problem.evaluate(uniform)
    evaluations += K
    best_plan = uniform[int(np.argmin(values))].copy()
    best = float(values.min())
    improved = True
    while improved:
        improved = False
        for g in range(P):
            trial = np.repeat(best_plan[None, :], K, axis=0)
            trial[:, g] = np.arange(K)
            values = problem.evaluate(trial)
            evaluations += K
            k = int(np.argmin(values))
            if values[k] < best:
                best, best_plan, improved = float(values[k]), trial[k].copy(), True

    # Decide the heaviest groups first: their choices dominate the max terms and server load.
    alone = np.empty(P)
    for g in range(P):
        present = np.zeros(P, dtype=bool)
        present[g] = True
        trial = np.repeat(best_plan[None, :], K, axis=0)
        trial[:, g] = np.arange(K)
        alone[g] = problem.evaluate(trial, present).min()
    order = np.argsort(-alone, kind="stable")

    # Depth-first over *batches* of partial plans: every expansion prices all children of up to
    # ``chunk`` partial plans in one vectorised call, and memory stays bounded by depth * chunk.
    # Undecided groups take the virtual cheapest option, so a child's price is a lower bound.
    table = problem.bound_table()
    chunk = 4096
    stack: list[tuple[int, np.ndarray]] = [(0, np.full((1, P), K, dtype=np.int64))]
    choices = np.arange(K)
    while stack:
        depth, partial = stack.pop()
        g = order[depth]
        children = np.repeat(partial, K, axis=0)
        children[:, g] = np.tile(choices, partial.shape[0])
        bounds = iteration_seconds(children, table, problem.groups)
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
    """Every plan, for tests: per profile (16^P) or per client (16^N). Small instances only."""
    units = len(problem.client_ids) if per_client else len(problem.profiles)
    K = len(problem.options)
    total = K**units
    if total > 1 << 24:
        raise ValueError(f"brute force over {total} plans is too many")
    evaluate = problem.evaluate_clients if per_client else problem.evaluate
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
    decode = _bits_to_options(problem)
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
               progress: Callable[[int, float], None] | None = None) -> SearchResult:
    """Search and report the plan, its analytic latency and what the search cost."""
    if method not in METHODS:
        raise P2PGanError(f"unknown cut search {method!r} (expected one of: {', '.join(METHODS)})")
    problem = SearchProblem.build(client_ids, costs, batch_size, topology, assignment)
    started = time.perf_counter()
    history: list[float] = []
    if method == "exact":
        plan, seconds, evaluations = exact_search(problem)
        cuts = problem.expand(plan)
    else:
        plan, seconds, evaluations, history = genetic_search(problem, seed, ga, progress)
        if ga.encoding == "client":
            cuts = {c: problem.options[int(k)] for c, k in zip(problem.client_ids, plan)}
        else:
            cuts = problem.expand(plan)
    wall = time.perf_counter() - started
    per_profile: dict[str, ClientCut] = {}
    for c in problem.client_ids:
        per_profile.setdefault(problem.profile_of[c], cuts[c])
    return SearchResult(method, cuts, per_profile, seconds, wall, evaluations, history)


def search_cuts(method: str, client_ids: Sequence[str], costs: ModelCosts, batch_size: int, topology: Topology,
                assignment: Mapping[str, str], seed: int, **ga_options) -> dict[str, ClientCut]:
    """One cut per client minimising the analytic seconds per iteration. ``method``: exact | ga.

    ``ga_options`` (population, generations, ...) override :class:`GAParams` for ``ga``.
    """
    params = GAParams(**ga_options)
    return run_search(method, client_ids, costs, batch_size, topology, assignment, seed, params).cuts
