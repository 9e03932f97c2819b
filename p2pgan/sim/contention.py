"""A lower bound of the SimPy price under shared capacity, cheap enough to drive a search.

The analytic model (:mod:`p2pgan.sim.analytic`) lets every transfer cross a shared segment as if
it were alone, so it bounds SimPy's price from below, but loosely when many clients share one
segment (14 % below SimPy for 12 clients behind the paper-edge-nic 1 Gbit/s NIC, 2x for 80).
This model runs the same recursion over the table's :class:`~p2pgan.plan.program.Program` and
adds the queueing SimPy adds on each shared resource (one segment in one direction: FIFO, one
transfer at a time), in two ways that both keep it a lower bound:

* **downloads, in the server's send order.** The server sends a trip's results at the end of
  its compute, to the clients in natural id order, so they reach the first shared hop of their
  path in that order, and every later hop that all of them reach through the same hops before it
  in the same order too. With a known order, a FIFO resource is the recursion
  ``leave_k = max(arrive_k, leave_{k-1}) + hold_k``, which only grows with every arrival time:
  fed with lower bounds of the arrivals it gives lower bounds of the departures. This needs one
  group per client, in that order (``count == 1``); for groups of several clients, and for hops
  reached through different paths, downloads cross shared hops unqueued, as in the analytic model.
* **uploads, in any order.** Uploads reach a shared resource at times that depend on the
  clients, so the order is not known; but whatever the order, the set ``S = {j : e_j >= e_i}``
  of uploads arriving no earlier than ``e_i`` cannot all have crossed before
  ``e_i + sum_S hold_j``, and the last of them still travels ``min_S q_j`` to the server. The
  server starts a trip only when every upload of it (and of the exchange's earlier trips, which
  it ran first) is in, so the largest such bound joins its start.

Every time this computes is a lower bound of the corresponding SimPy time (under queueing,
events only move later), so ``analytic <= this <= SimPy``; without shared segments it equals the
analytic model. Lower bounds of each client's costs (a partial plan's cheapest feasible option
for the groups not yet decided, or leaving them out) keep it a lower bound, which is what lets a
branch and bound use it. Tests check all of this on random topologies and plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from p2pgan.ids import natural_sorted
from p2pgan.plan.program import Exchange, RoundTrip
# The column names are the analytic table's own; reading them through its helpers keeps one spelling.
from p2pgan.sim.analytic import GroupArrays, OptionTable, _trip_column, _via_column
from p2pgan.topology.profiles import Topology

_NEG = -np.inf


@dataclass(frozen=True)
class UpResource:
    """One shared segment towards the server: which groups cross it, and from there to the
    server (this hop included) the seconds per bit and the latency."""

    name: str
    spb: float
    crosses: np.ndarray
    to_end_spb: np.ndarray
    to_end_lat: np.ndarray


DownStage = tuple[Optional[int], np.ndarray, float, float]
"""``(resource or None when not queued, groups crossing it here (send order), seconds per bit, latency)``."""


@dataclass(frozen=True)
class SharedArrays:
    """The shared resources of the same groups, in the same order, as a :class:`GroupArrays`."""

    up: tuple[UpResource, ...]
    levels: tuple[tuple[DownStage, ...], ...]
    """Download paths' shared hops by position: level ``i`` holds every group's ``i``-th shared hop."""
    down_resources: int

    @classmethod
    def build(cls, topology: Topology, profiles: Sequence[str], counts: Sequence[int],
              ids: Sequence[str] | None = None) -> "SharedArrays":
        """Arguments as given to :meth:`GroupArrays.build` (``counts`` decides whether the send
        order is known: only for one client per group, groups in natural id order)."""
        ids = list(ids) if ids is not None else [f"group{i}" for i in range(len(profiles))]
        n = len(profiles)
        up: dict[str, dict] = {}
        down: list[list] = []
        for g, (gid, name) in enumerate(zip(ids, profiles)):
            hops = topology.path(gid, name, "up")
            spb = [1.0 / h.bps for h in hops]
            lat = [h.latency_s for h in hops]
            for i, hop in enumerate(hops):
                if not hop.shared or (hop.resource in up and up[hop.resource]["crosses"][g]):
                    continue  # a segment crossed twice counts once: still a lower bound
                r = up.setdefault(hop.resource, {"spb": spb[i], "crosses": np.zeros(n, bool),
                                                 "to_end_spb": np.zeros(n), "to_end_lat": np.zeros(n)})
                r["crosses"][g] = True
                r["to_end_spb"][g], r["to_end_lat"][g] = sum(spb[i:]), sum(lat[i:])
            down.append([h for h in topology.path(gid, name, "down") if h.shared])
        # A download hop has a known FIFO order when the server sends in client order (one client
        # per group, groups in natural id order) and every group reaching it crossed the same hops
        # before it: they then arrive in the order they were sent.
        in_order = all(c == 1 for c in counts) and ids == natural_sorted(ids)
        before: dict[str, set] = {}
        for path in down:
            for i, hop in enumerate(path):
                before.setdefault(hop.resource, set()).add(tuple(h.resource for h in path[:i]))
        names = sorted(before)
        levels = []
        for i in range(max((len(path) for path in down), default=0)):
            queued: dict[str, list[int]] = {}
            stages: list[DownStage] = []
            for g, path in enumerate(down):
                if i >= len(path):
                    continue
                hop = path[i]
                repeated = hop.resource in {h.resource for h in path[:i]}
                if in_order and len(before[hop.resource]) == 1 and not repeated:
                    queued.setdefault(hop.resource, []).append(g)
                else:
                    stages.append((None, np.array([g]), 1.0 / hop.bps, hop.latency_s))
            for name, members in queued.items():
                hop = down[members[0]][i]
                stages.append((names.index(name), np.array(members), 1.0 / hop.bps, hop.latency_s))
            levels.append(tuple(stages))
        ups = tuple(UpResource(name, r["spb"], r["crosses"], r["to_end_spb"], r["to_end_lat"])
                    for name, r in sorted(up.items()))
        return cls(ups, tuple(levels), len(names))


def release_bound(e: np.ndarray, h: np.ndarray, q: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Lower bound of the last delivery of jobs through one FIFO resource; ``-inf`` if no member.

    Arrays ``(..., J)``: earliest arrival at the resource, hold (``count * seconds`` for a group
    of identical clients), least travel from it to the destination. With the members sorted by
    decreasing arrival, every prefix is a set ``S`` of jobs that all arrive no earlier than its
    last one's ``e``: ``max over prefixes of (e_last + sum_S h + min_S q)``.
    """
    key = np.where(member, e, _NEG)
    order = np.argsort(-key, axis=-1, kind="stable")
    e_sorted = np.take_along_axis(key, order, axis=-1)
    held = np.cumsum(np.take_along_axis(np.where(member, h, 0.0), order, axis=-1), axis=-1)
    travel = np.minimum.accumulate(np.take_along_axis(np.where(member, q, np.inf), order, axis=-1), axis=-1)
    inside = np.isfinite(e_sorted)
    return np.max(np.where(inside, np.where(inside, e_sorted, 0.0) + held + np.where(inside, travel, 0.0), _NEG),
                  axis=-1)


def fifo_departures(arrive: np.ndarray, hold: np.ndarray, member: np.ndarray,
                    free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One FIFO resource serving members in axis order, free from ``free`` on.

    ``leave_k = max(arrive_k, leave_{k-1}) + hold_k`` unrolled:
    ``leave_k = max(free, max_{j <= k} (arrive_j - H_{j-1})) + H_k`` with ``H`` the running sum
    of holds. Returns each position's departure (meaningless for non-members) and the time the
    resource is free again.
    """
    hold = np.where(member, hold, 0.0)
    total = np.cumsum(hold, axis=-1)
    start_gap = np.where(member, arrive - (total - hold), _NEG)
    latest = np.maximum(np.maximum.accumulate(start_gap, axis=-1), free[..., None])
    leave = latest + total
    return leave, leave[..., -1] if leave.shape[-1] else free


def contention_seconds(options: np.ndarray, table: OptionTable, groups: GroupArrays, shared: SharedArrays,
                       present: np.ndarray | None = None) -> np.ndarray:
    """Lower bound of SimPy's seconds for one iteration from idle, for every plan in ``options``.

    Same arguments as :func:`p2pgan.sim.analytic.iteration_seconds`, plus the shared resources
    of the same groups.
    """
    options = np.asarray(options)
    col = {key: values[options] for key, values in table.columns.items()}
    B, R, n = groups.batch, groups.rate, groups.count
    mask = n > 0
    if present is not None:
        mask = mask & present
    mask = np.broadcast_to(mask, options.shape)
    exchanges = [step for step in table.program.iteration if isinstance(step, Exchange)]
    via = {trip.network.name: (col[_via_column(trip.network.name)] > 0) & mask
           for step in exchanges for trip in step.trips}
    lead = options.shape[:-1]
    Rs = groups.server_rate

    def column(trip: RoundTrip, what: str) -> np.ndarray:
        return col[_trip_column(trip, what)]

    up_free = np.zeros(options.shape)
    dn_free = np.zeros(options.shape)
    hop_free = [np.zeros(lead) for _ in range(shared.down_resources)]

    def upload(ready: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        nonlocal up_free
        bits = nbytes * 8.0
        start = np.maximum(ready, up_free)
        up_free = start + bits / groups.up_bps
        return up_free + groups.up_lat + bits * groups.up_extra_spb + groups.up_extra_lat

    def download(ready: np.ndarray, nbytes: np.ndarray, on: np.ndarray) -> np.ndarray:
        """Each group's receipt of a result sent at ``ready``: shared hops in send order, then access."""
        nonlocal dn_free
        bits = nbytes * 8.0
        t = np.broadcast_to(ready[..., None], options.shape).copy()
        for level in shared.levels:
            for resource, groups_at, spb, latency in level:
                hold = bits[..., groups_at] * spb
                if resource is None:  # not queued: crossed as if alone
                    t[..., groups_at] += hold + latency
                    continue
                member = on[..., groups_at]
                leave, hop_free[resource] = fifo_departures(t[..., groups_at], hold, member, hop_free[resource])
                # Groups not downloading here keep the analytic model's (harmless) times.
                t[..., groups_at] = np.where(member, leave, t[..., groups_at] + hold) + latency
        start = np.maximum(t, dn_free)
        dn_free = start + bits / groups.dn_bps
        return dn_free + groups.dn_lat

    def up_floor(jobs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """The server has every upload of ``jobs`` ((arrival at the server, bytes, member)) no earlier."""
        floor = np.full(lead, _NEG)
        for r in shared.up:
            parts = [(arrival - nb * 8.0 * r.to_end_spb - r.to_end_lat, n * nb * 8.0 * r.spb,
                      nb * 8.0 * (r.to_end_spb - r.spb) + r.to_end_lat, m & r.crosses) for arrival, nb, m in jobs]
            stacked = [np.concatenate(np.broadcast_arrays(*(part[k] for part in parts)), axis=-1) for k in range(4)]
            floor = np.maximum(floor, release_bound(*stacked))
        return floor

    def server(s: np.ndarray, on: np.ndarray, arrivals: np.ndarray, per_sample: np.ndarray, multiplier: int,
               floor: np.ndarray) -> np.ndarray:
        flops = np.sum(np.where(on, per_sample * (multiplier * B) * n, 0.0), axis=-1)
        latest = np.max(np.where(on, arrivals, _NEG), axis=-1)
        return np.where(on.any(axis=-1), np.maximum(np.maximum(s, latest), floor) + flops / Rs, s)

    def local(flops_per_sample: np.ndarray, batch) -> np.ndarray:
        return flops_per_sample * batch / R

    def receive(c: np.ndarray, on: np.ndarray, arrival: np.ndarray, after: np.ndarray) -> np.ndarray:
        return np.where(on, np.maximum(c, arrival) + after, c)

    s = np.zeros(lead)
    c = np.zeros(options.shape)
    for step in exchanges:
        jobs, arrivals = [], []
        for trip in step.trips:
            c = c + local(column(trip, "before"), trip.samples * B)
            nbytes = B * column(trip, "up")
            arrivals.append(upload(c, nbytes))
            jobs.append((arrivals[-1], nbytes, via[trip.network.name]))
        results = []
        for i, trip in enumerate(step.trips):
            on = via[trip.network.name]
            # The server runs this trip after the exchange's earlier ones: all their uploads are in.
            floor = up_floor(jobs[: i + 1]) if shared.up else np.full(lead, _NEG)
            s = server(s, on, arrivals[i], column(trip, "server"), trip.samples, floor)
            results.append(download(s, B * column(trip, "down"), on))
        for trip, result in zip(step.trips, results):
            c = receive(c, via[trip.network.name], result, local(column(trip, "after"), trip.samples * B))

    return np.max(np.where(mask, c, _NEG), axis=-1)
