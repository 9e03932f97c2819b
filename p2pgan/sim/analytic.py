"""The analytic latency model: DESIGN §1.2's critical-path sum, exact for the engine's schedule.

An iteration is a chain of seven batched server computes (G forward, D fake, D real, D backward,
G's pass through D, its backward, G backward). Each waits for the server's previous compute and
for the slowest participant's upload; between two of them every client runs its own branch
(download, local blocks, upload). So

    s_k = max(s_{k-1}, max_i arrival_i,k) + S_k

where ``S_k`` is the batched compute (FLOPs summed over every sample passing through every
server block, divided by the server's rate) and a client's arrival is its previous download plus
its compute plus its upload. The iteration ends with the slowest client's last local backward.
That is the critical path of the same operations :func:`p2pgan.sim.engine.simulate` prices,
including the two details a phase-by-phase sum would miss: a client sends its D-real head
output right after the D-fake one (the second upload queues behind the first on its link) and
the D-real result can arrive while the D-fake result is still downloading. On a topology with
no shared segment the two models agree to rounding; a shared segment only adds queueing, so
SimPy is then >= this model.

Everything is numpy over a trailing axis of client *groups* (clients with the same profile,
batch and cut behave identically: the max over a group is any member, its server load is
``count`` members), with any leading axes for many plans at once. That makes the same code the
cut search's objective: one call prices a whole GA population.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from p2pgan.model.costs import ModelCosts
from p2pgan.model.segments import ClientSplit, NetworkSplit
from p2pgan.topology.profiles import Topology

_COLUMNS = ("g_via", "d_via", "gh_f", "gt_f", "g_first_b", "gh_b", "dh_f", "dt_f", "d_first_b", "dh_b",
            "g_up", "g_dn", "d_up", "d_dn", "gs_f", "gs_b", "ds_f", "ds_b", "params")


def _network_columns(split: NetworkSplit, costs: ModelCosts) -> dict[str, float]:
    via = bool(split.server)
    if via and (not split.head or not split.tail):
        raise ValueError(f"{split.network}: a split through the server needs client head and tail blocks "
                         f"(got head {split.head}, tail {split.tail})")
    first = split.tail if via else split.client_blocks
    return {
        "via": float(via),
        "h_f": costs.flops(split.head, "fwd"),
        "t_f": costs.flops(split.tail, "fwd") if via else 0.0,
        "first_b": costs.flops(first, "bwd"),
        "h_b": costs.flops(split.head, "bwd") if via else 0.0,
        "up": float(costs[split.head[-1]].out_bytes) if via else 0.0,
        "dn": float(costs[split.server[-1]].out_bytes) if via else 0.0,
        "s_f": costs.flops(split.server, "fwd"),
        "s_b": costs.flops(split.server, "bwd"),
    }


@dataclass(frozen=True)
class OptionTable:
    """Per-sample costs of each placement option (one :class:`ClientSplit` per row)."""

    splits: tuple[ClientSplit, ...]
    columns: Mapping[str, np.ndarray]

    @classmethod
    def build(cls, splits: Sequence[ClientSplit], costs: ModelCosts) -> "OptionTable":
        rows = []
        for split in splits:
            g = _network_columns(split.generator, costs)
            d = _network_columns(split.discriminator, costs)
            rows.append({
                "g_via": g["via"], "d_via": d["via"],
                "gh_f": g["h_f"], "gt_f": g["t_f"], "g_first_b": g["first_b"], "gh_b": g["h_b"],
                "dh_f": d["h_f"], "dt_f": d["t_f"], "d_first_b": d["first_b"], "dh_b": d["h_b"],
                "g_up": g["up"], "g_dn": g["dn"], "d_up": d["up"], "d_dn": d["dn"],
                "gs_f": g["s_f"], "gs_b": g["s_b"], "ds_f": d["s_f"], "ds_b": d["s_b"],
                "params": float(sum(costs[name].param_bytes for name in split.client_blocks)),
            })
        columns = {key: np.array([row[key] for row in rows], dtype=float) for key in _COLUMNS}
        return cls(tuple(splits), columns)

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
    gvia = (col["g_via"] > 0) & mask
    dvia = (col["d_via"] > 0) & mask
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

    def round_trip(c: np.ndarray, s: np.ndarray, via: np.ndarray, batch: np.ndarray, multiplier: int,
                   before: str, up: str, on_server: str, down: str, after: str) -> tuple[np.ndarray, np.ndarray]:
        """Clients compute ``before`` and upload; the server computes batched; each client
        downloads its slice and computes ``after`` (column names of the cost table)."""
        c = c + local(col[before], batch)
        a = upload(c, batch * col[up])
        s = server(s, via, a, col[on_server], multiplier)
        r = download(s[..., None], batch * col[down])
        return receive(c, via, r, local(col[after], batch)), s

    s = np.zeros(lead)
    B2 = 2 * B

    # G forward: head -> server -> tail.
    idle = np.zeros_like(local(col["gh_f"], B))
    c, s = round_trip(idle, s, gvia, B, 1, "gh_f", "g_up", "gs_f", "g_dn", "gt_f")

    # D on fake then real: both heads go up back to back.
    c = c + local(col["dh_f"], B)
    a_fake = upload(c, B * col["d_up"])
    c = c + local(col["dh_f"], B)
    a_real = upload(c, B * col["d_up"])
    s = server(s, dvia, a_fake, col["ds_f"], 1)
    r_fake = download(s[..., None], B * col["d_dn"])
    s = server(s, dvia, a_real, col["ds_f"], 1)
    r_real = download(s[..., None], B * col["d_dn"])
    c = receive(c, dvia, r_fake, local(col["dt_f"], B))
    c = receive(c, dvia, r_real, local(col["dt_f"], B))

    # D backward of both passes (2B); G's pass through D and its backward; G backward.
    c, s = round_trip(c, s, dvia, B2, 2, "d_first_b", "d_dn", "ds_b", "d_up", "dh_b")
    c, s = round_trip(c, s, dvia, B, 1, "dh_f", "d_up", "ds_f", "d_dn", "dt_f")
    c, s = round_trip(c, s, dvia, B, 1, "d_first_b", "d_dn", "ds_b", "d_up", "dh_b")
    c, s = round_trip(c, s, gvia, B, 1, "g_first_b", "g_dn", "gs_b", "g_up", "gh_b")

    return np.max(np.where(mask, c, neg), axis=-1)


def client_groups(client_ids: Sequence[str], topology: Topology, assignment: Mapping[str, str],
                  batch_sizes: Mapping[str, int]) -> GroupArrays:
    """One group per client (count 1), in the given order."""
    return GroupArrays.build(topology, [assignment[c] for c in client_ids], [batch_sizes[c] for c in client_ids],
                             [1] * len(client_ids), ids=client_ids)


def analytic_iteration_seconds(splits: Mapping[str, ClientSplit], costs: ModelCosts,
                               batch_sizes: Mapping[str, int], topology: Topology,
                               assignment: Mapping[str, str]) -> float:
    """Seconds of one iteration of ``splits`` from an idle start (the cut search's objective)."""
    ids = list(splits)
    if not ids:
        return 0.0
    unique = list(dict.fromkeys(splits.values()))
    table = OptionTable.build(unique, costs)
    options = np.array([unique.index(splits[c]) for c in ids])
    groups = client_groups(ids, topology, assignment, batch_sizes)
    return float(iteration_seconds(options, table, groups))
