"""The analytic latency model: the critical-path sum of a program's iteration, exact for its schedule.

The iteration is read from the :class:`~p2pgan.plan.program.Program` (the U-shaped split's by
default), never written here: each :class:`~p2pgan.plan.program.RoundTrip` is one batched server
compute, which waits for the server's previous compute and for the slowest participant's upload;
between two of them every client runs its own branch (download, local blocks, upload). So

    s_k = max(s_{k-1}, max_i arrival_i,k) + S_k

where ``S_k`` is the batched compute (FLOPs summed over every sample passing through every
server block, divided by the server's rate) and a client's arrival is its previous download plus
its compute plus its upload. The iteration ends with the slowest client's last local compute.
That is the critical path of the same operations :func:`p2pgan.sim.engine.simulate` prices,
including the two details a phase-by-phase sum would miss: the uploads of one
:class:`~p2pgan.plan.program.Exchange` (D's fake and real passes) leave back to back, so the
second queues behind the first on the client's uplink, and their results can arrive while an
earlier one is still downloading. On a topology with no shared segment the two models agree to
rounding; a shared segment only adds queueing, so SimPy is then >= this model. A program with a
server-first :class:`~p2pgan.plan.program.Broadcast` (MD-GAN) is not priced here (SimPy is).

Everything is numpy over a trailing axis of client *groups* (clients with the same profile,
batch and cut behave identically: the max over a group is any member, its server load is
``count`` members), with any leading axes for many plans at once. That makes the same code the
cut search's objective: one call prices a whole GA population.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from p2pgan.errors import P2PGanError
from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit, NetworkSplit
from p2pgan.plan.program import U_SHAPED, Broadcast, Exchange, Part, Program, RoundTrip, network_split
from p2pgan.topology.profiles import Topology


def _via_column(network: str) -> str:
    return f"{network}.via"


def _trip_column(trip: RoundTrip, what: str) -> str:
    return f"{trip.phase.value}.{what}"


def _check_priceable(program: Program) -> None:
    for step in program.iteration:
        if isinstance(step, Broadcast):
            raise P2PGanError(f"the analytic model cannot price program {program.name!r}: its "
                              f"{step.down_phase.value} step is server-first (a Broadcast); price its trace "
                              f"with the SimPy engine instead")


def _check_split(split: NetworkSplit) -> None:
    if split.server and (not split.head or not split.tail):
        raise ValueError(f"{split.network}: a split through the server needs client head and tail blocks "
                         f"(got head {split.head}, tail {split.tail})")


_TRIP_COLUMNS = ("before", "up", "server", "down", "after")


def _trip_columns(trip: RoundTrip, split: NetworkSplit, costs: ModelCosts) -> dict[str, float]:
    """Per client-batch sample: the client's compute before and after the server (FLOPs), the
    bytes it uploads and downloads (every tensor of the message), and the server's FLOPs per
    sample passing through it. A client whose network skips the server only computes before."""
    net, direction = trip.network, trip.direction
    via = bool(split.server)

    def message_bytes(part: Part, tensors: tuple[str, ...]) -> float:
        return float(len(tensors) * costs[part.blocks(split, net)[-1]].out_bytes) if via else 0.0

    values = (
        costs.flops(trip.before.blocks(split, net), direction),
        message_bytes(trip.upload_part(), trip.up),
        costs.flops(split.server, direction),
        message_bytes(trip.download_part(), trip.down),
        costs.flops(trip.after.blocks(split, net), direction) if via else 0.0,
    )
    return {_trip_column(trip, what): value for what, value in zip(_TRIP_COLUMNS, values)}


def _column_names(program: Program) -> list[str]:
    trips = program.round_trips()
    names = [_via_column(net.name) for net in dict.fromkeys(trip.network for trip in trips)]
    names += [_trip_column(trip, what) for trip in trips for what in _TRIP_COLUMNS]
    return [*names, "params"]


@dataclass(frozen=True)
class OptionTable:
    """Per-sample costs of each placement option (one :class:`ClientSplit` per row), one set of
    columns per round trip of ``program``."""

    splits: tuple[ClientSplit, ...]
    columns: Mapping[str, np.ndarray]
    program: Program = U_SHAPED

    @classmethod
    def build(cls, splits: Sequence[ClientSplit], costs: ModelCosts, program: Program = U_SHAPED) -> "OptionTable":
        _check_priceable(program)
        trips = program.round_trips()
        networks = tuple(dict.fromkeys(trip.network for trip in trips))
        rows = []
        for split in splits:
            row: dict[str, float] = {}
            for net in networks:
                part = network_split(split, net)
                _check_split(part)
                row[_via_column(net.name)] = float(bool(part.server))
            for trip in trips:
                row.update(_trip_columns(trip, network_split(split, trip.network), costs))
            row["params"] = float(sum(costs[name].param_bytes for name in program.client_blocks(split)))
            rows.append(row)
        columns = {key: np.array([row[key] for row in rows], dtype=float) for key in _column_names(program)}
        return cls(tuple(splits), columns, program)

    def index(self, split: ClientSplit) -> int:
        return self.splits.index(split)


@dataclass(frozen=True)
class GroupArrays:
    """Per-group device and link parameters (shape ``(N,)``), and the server's rate."""

    rate: np.ndarray
    batch: np.ndarray
    count: np.ndarray
    up_bps: np.ndarray
    up_lat: np.ndarray
    up_extra_spb: np.ndarray
    """Seconds per bit on the shared hops of the upload path (sum of 1/bps)."""
    up_extra_lat: np.ndarray
    dn_bps: np.ndarray
    dn_lat: np.ndarray
    dn_extra_spb: np.ndarray
    dn_extra_lat: np.ndarray
    server_rate: float

    @classmethod
    def build(cls, topology: Topology, profiles: Sequence[str], batches: Sequence[int],
              counts: Sequence[int], ids: Sequence[str] | None = None) -> "GroupArrays":
        """One group per entry: its profile name, per-client batch and number of clients."""
        ids = list(ids) if ids is not None else [f"group{i}" for i in range(len(profiles))]
        cols: dict[str, list[float]] = {k: [] for k in ("rate", "up_bps", "up_lat", "up_x", "up_xl",
                                                          "dn_bps", "dn_lat", "dn_x", "dn_xl")}
        for gid, name in zip(ids, profiles):
            cols["rate"].append(topology.profile(name).flops_per_s)
            for direction, prefix in (("up", "up"), ("down", "dn")):
                hops = topology.path(gid, name, direction)
                access = [h for h in hops if not h.shared][0]
                shared = [h for h in hops if h.shared]
                cols[f"{prefix}_bps"].append(access.bps)
                cols[f"{prefix}_lat"].append(access.latency_s)
                cols[f"{prefix}_x"].append(sum(1.0 / h.bps for h in shared))
                cols[f"{prefix}_xl"].append(sum(h.latency_s for h in shared))
        arr = {k: np.array(v, dtype=float) for k, v in cols.items()}
        return cls(arr["rate"], np.array(batches, dtype=float), np.array(counts, dtype=float),
                   arr["up_bps"], arr["up_lat"], arr["up_x"], arr["up_xl"],
                   arr["dn_bps"], arr["dn_lat"], arr["dn_x"], arr["dn_xl"], topology.server.flops_per_s)

    def __len__(self) -> int:
        return int(self.rate.shape[0])


def iteration_seconds(options: np.ndarray, table: OptionTable, groups: GroupArrays,
                      present: np.ndarray | None = None) -> np.ndarray:
    """Seconds of one iteration from an idle start, for every plan in ``options``.

    ``options``: int array ``(..., N)``, the option row of each group. ``present``: optional bool
    mask of the same shape; absent groups are left out entirely (a partial plan, whose time is a
    lower bound of every completion of it).
    """
    options = np.asarray(options)
    col = {key: values[options] for key, values in table.columns.items()}
    B, R, n = groups.batch, groups.rate, groups.count
    mask = n > 0
    if present is not None:
        mask = mask & present
    mask = np.broadcast_to(mask, options.shape)
    via = {trip.network.name: (col[_via_column(trip.network.name)] > 0) & mask for trip in table.program.round_trips()}
    lead = options.shape[:-1]
    Rs = groups.server_rate
    neg = -np.inf

    up_free = np.zeros(options.shape)
    dn_free = np.zeros(options.shape)

    def upload(ready: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        nonlocal up_free
        bits = nbytes * 8.0
        start = np.maximum(ready, up_free)
        up_free = start + bits / groups.up_bps
        return up_free + groups.up_lat + bits * groups.up_extra_spb + groups.up_extra_lat

    def download(ready: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        nonlocal dn_free
        bits = nbytes * 8.0
        at_access = ready + bits * groups.dn_extra_spb + groups.dn_extra_lat
        start = np.maximum(at_access, dn_free)
        dn_free = start + bits / groups.dn_bps
        return dn_free + groups.dn_lat

    def server(s: np.ndarray, via: np.ndarray, arrivals: np.ndarray, per_sample: np.ndarray,
               multiplier: int) -> np.ndarray:
        flops = np.sum(np.where(via, per_sample * (multiplier * B) * n, 0.0), axis=-1)
        latest = np.max(np.where(via, arrivals, neg), axis=-1)
        return np.where(via.any(axis=-1), np.maximum(s, latest) + flops / Rs, s)

    def local(flops_per_sample: np.ndarray, batch: np.ndarray) -> np.ndarray:
        return flops_per_sample * batch / R

    def receive(c: np.ndarray, via: np.ndarray, arrival: np.ndarray, after: np.ndarray) -> np.ndarray:
        return np.where(via, np.maximum(c, arrival) + after, c)

    s = np.zeros(lead)
    c = np.zeros(options.shape)
    for step in table.program.iteration:
        if not isinstance(step, Exchange):
            continue  # Local steps cost nothing; Broadcast was refused when the table was built
        # Every trip's upload leaves before any download is awaited; the server then runs the
        # trips in order, each client receiving its results in the same order.
        arrivals = []
        for trip in step.trips:
            c = c + local(col[_trip_column(trip, "before")], trip.samples * B)
            arrivals.append(upload(c, B * col[_trip_column(trip, "up")]))
        results = []
        for trip, arrival in zip(step.trips, arrivals):
            s = server(s, via[trip.network.name], arrival, col[_trip_column(trip, "server")], trip.samples)
            results.append(download(s[..., None], B * col[_trip_column(trip, "down")]))
        for trip, result in zip(step.trips, results):
            c = receive(c, via[trip.network.name], result, local(col[_trip_column(trip, "after")], trip.samples * B))

    return np.max(np.where(mask, c, neg), axis=-1)


def client_groups(client_ids: Sequence[str], topology: Topology, assignment: Mapping[str, str],
                  batch_sizes: Mapping[str, int]) -> GroupArrays:
    """One group per client (count 1), in the given order."""
    return GroupArrays.build(topology, [assignment[c] for c in client_ids], [batch_sizes[c] for c in client_ids],
                             [1] * len(client_ids), ids=client_ids)


def analytic_iteration_seconds(splits: Mapping[str, ClientSplit], costs: ModelCosts,
                               batch_sizes: Mapping[str, int], topology: Topology,
                               assignment: Mapping[str, str], program: Program = U_SHAPED) -> float:
    """Seconds of one iteration of ``program`` over ``splits`` from an idle start (the cut
    search's objective). Raises :class:`~p2pgan.errors.P2PGanError` for a program it cannot price."""
    _check_priceable(program)
    ids = list(splits)
    if not ids:
        return 0.0
    unique = list(dict.fromkeys(splits.values()))
    table = OptionTable.build(unique, costs, program)
    options = np.array([unique.index(splits[c]) for c in ids])
    groups = client_groups(ids, topology, assignment, batch_sizes)
    return float(iteration_seconds(options, table, groups))
