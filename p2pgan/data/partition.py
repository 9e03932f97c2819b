"""Client data partitions (docs/design.md §1.4), deterministic by seed.

For ``iid``, ``non-iid`` and ``highly-non-iid`` a domain's train set is

1. shuffled and split equally among that domain's clients (sizes differ by at most one),
2. filtered by the client's excluded labels,
3. capped at ``cap_total // total_clients * size_ratio`` examples (``cap_total`` = 60000 as in
   the reference; ``total_clients`` counts the clients of every domain).

Excluded labels: each client draws how many labels it lacks from the table below (probabilities
normalised to sum to 1), then which labels uniformly without replacement.

Size ratios: *decided per domain*. The domain's clients are apportioned to the ratios so the
shares match the table as closely as integer counts allow (largest-remainder rounding; ties go to
the ratio listed first), then the ratios are dealt to the clients in a seeded random order. So
10 non-IID clients of a domain are exactly 3 × 2/3 and 7 × 1.

=================  ==========================================  ===================================
kind               excluded labels per client (count: prob)    size ratio (share of clients)
=================  ==========================================  ===================================
iid                none                                        1 (all)
non-iid            0: .25, 2: .30, 3: .10, 4: .10 (normalised)  2/3 (30%), 1 (70%)
highly-non-iid     2: .4, 3: .6                                1/6 (20%), 1/3 (30%), 1 (50%)
=================  ==========================================  ===================================

``dirichlet`` (parameter ``alpha``): for every class, the domain's examples of that class are
shared among the domain's clients with proportions drawn from Dirichlet(alpha); a draw that leaves
a client empty is redrawn. The cap (ratio 1) still applies (random subset). ``excluded_labels`` =
the classes a client ends up with none of.

Randomness: one ``numpy.random.Generator`` family per domain, seeded from ``(seed, crc32(domain))``
with separate child streams for the split, the exclusions, the ratios and the Dirichlet draws, so
adding a domain never changes another domain's draws (only the cap, which depends on the total
client count) and all three table kinds share the same equal split for a given seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from p2pgan.ids import client_id
import torch

__all__ = [
    "ClientPartition",
    "PARTITION_KINDS",
    "EXCLUSION_TABLE",
    "SIZE_RATIO_TABLE",
    "REFERENCE_CAP_TOTAL",
    "partition_clients",
    "apportion",
    "normalize_kind",
]

PARTITION_KINDS = ("iid", "non-iid", "highly-non-iid", "dirichlet")
REFERENCE_CAP_TOTAL = 60000

# kind -> {number of excluded labels: probability (normalised at use)}
EXCLUSION_TABLE: dict[str, dict[int, float]] = {
    "iid": {0: 1.0},
    "non-iid": {0: 0.25, 2: 0.30, 3: 0.10, 4: 0.10},
    "highly-non-iid": {2: 0.4, 3: 0.6},
}
# kind -> ((size ratio, share of clients), ...)
SIZE_RATIO_TABLE: dict[str, tuple[tuple[Fraction, float], ...]] = {
    "iid": ((Fraction(1), 1.0),),
    "non-iid": ((Fraction(2, 3), 0.3), (Fraction(1), 0.7)),
    "highly-non-iid": ((Fraction(1, 6), 0.2), (Fraction(1, 3), 0.3), (Fraction(1), 0.5)),
}

_MAX_DIRICHLET_DRAWS = 1000


@dataclass(frozen=True, eq=False)
class ClientPartition:
    client_id: str  # "c000", "c001", ... global index in domain-mix order
    domain: str
    indices: np.ndarray = field(repr=False)  # int64, sorted, into the domain's train DomainData
    excluded_labels: tuple[int, ...]
    size_ratio: float

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientPartition):
            return NotImplemented
        return (
            self.client_id == other.client_id
            and self.domain == other.domain
            and self.excluded_labels == other.excluded_labels
            and self.size_ratio == other.size_ratio
            and np.array_equal(self.indices, other.indices)
        )

    __hash__ = None  # type: ignore[assignment]


def normalize_kind(kind: str) -> str:
    k = str(kind).strip().lower().replace("_", "-").replace(" ", "-")
    k = {"noniid": "non-iid", "highly-noniid": "highly-non-iid", "dir": "dirichlet"}.get(k, k)
    if k not in PARTITION_KINDS:
        raise ValueError(f"unknown partition kind {kind!r} (expected one of {', '.join(PARTITION_KINDS)})")
    return k


def apportion(n: int, shares: list[float] | tuple[float, ...]) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``shares`` (largest remainder)."""
    total = float(sum(shares))
    quotas = [n * s / total for s in shares]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _as_labels(domain: str, labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"train labels for domain {domain!r} must be 1-D, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
        raise ValueError(f"train labels for domain {domain!r} must be non-negative integers")
    return arr.astype(np.int64, copy=False)


def _streams(seed: int, domain: str) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(domain.encode())])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def _cap(base: int, ratio: Fraction) -> int:
    return (base * ratio.numerator) // ratio.denominator


def _table_partition(
    domain: str,
    n: int,
    labels: np.ndarray,
    kind: str,
    rngs: list[np.random.Generator],
    base: int,
    num_classes: int,
) -> list[tuple[np.ndarray, tuple[int, ...], Fraction]]:
    rng_split, rng_excl, rng_ratio, _ = rngs
    chunks = np.array_split(rng_split.permutation(len(labels)), n)

    counts_tbl = EXCLUSION_TABLE[kind]
    values = np.array(list(counts_tbl), dtype=np.int64)
    probs = np.array(list(counts_tbl.values()), dtype=np.float64)
    probs /= probs.sum()
    if values.max() > num_classes:
        raise ValueError(f"{kind}: cannot exclude {values.max()} of {num_classes} labels")
    excluded = []
    for _ in range(n):
        k = int(rng_excl.choice(values, p=probs))
        excluded.append(tuple(sorted(int(c) for c in rng_excl.choice(num_classes, size=k, replace=False))))

    table = SIZE_RATIO_TABLE[kind]
    ratio_counts = apportion(n, [share for _, share in table])
    ratios = [r for (r, _), c in zip(table, ratio_counts) for _ in range(c)]
    ratios = [ratios[i] for i in rng_ratio.permutation(n)]

    out = []
    for chunk, excl, ratio in zip(chunks, excluded, ratios):
        kept = chunk[~np.isin(labels[chunk], excl)] if excl else chunk
        kept = np.sort(kept[: _cap(base, ratio)])
        out.append((kept, excl, ratio))
    return out


def _dirichlet_partition(
    domain: str,
    n: int,
    labels: np.ndarray,
    alpha: float,
    rngs: list[np.random.Generator],
    base: int,
    num_classes: int,
) -> list[tuple[np.ndarray, tuple[int, ...], Fraction]]:
    rng = rngs[3]
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    by_class = [idx[rng.permutation(len(idx))] for idx in by_class]
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            if len(idx) == 0:
                continue
            p = rng.dirichlet(np.full(n, float(alpha)))
            cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for i, piece in enumerate(np.split(idx, cuts)):
                parts[i].append(piece)
        client_idx = [np.concatenate(p) for p in parts]
        if min(len(c) for c in client_idx) >= 1:
            break
    else:
        raise ValueError(
            f"dirichlet(alpha={alpha}) partition of domain {domain!r} ({len(labels)} examples, "
            f"{n} clients) left a client empty in {_MAX_DIRICHLET_DRAWS} draws; "
            "use a larger alpha or fewer clients"
        )
    cap = _cap(base, Fraction(1))
    out = []
    for idx in client_idx:
        if len(idx) > cap:
            idx = idx[rng.permutation(len(idx))[:cap]]
        idx = np.sort(idx)
        present = np.bincount(labels[idx], minlength=num_classes)
        excl = tuple(int(c) for c in np.flatnonzero(present == 0))
        out.append((idx, excl, Fraction(1)))
    return out


def partition_clients(
    domain_mix: Mapping[str, int],
    train_labels: Mapping[str, np.ndarray | torch.Tensor],
    kind: str,
    seed: int,
    alpha: float | None = None,
    *,
    cap_total: int | None = REFERENCE_CAP_TOTAL,
    num_classes: int = 10,
) -> list[ClientPartition]:
    """Partition every domain's train set among its clients (see the module doc).

    ``domain_mix`` maps domain → number of clients, in client order: client ids ``c000``… are
    assigned domain by domain in that order. ``train_labels`` maps each domain with clients to the
    labels of its train set; returned ``indices`` index into that array. ``alpha`` is used only by
    ``dirichlet``. ``cap_total`` is the reference's 60000 in the per-client cap
    ``cap_total // total_clients * ratio``; ``None`` uses the largest train set in the mix
    instead (equal to 60000 with the full datasets, and it keeps the size ratios effective on the
    small offline copies, where a 60000-based cap never binds). Raises ValueError when a client
    would end up empty.
    """
    kind = normalize_kind(kind)
    if kind == "dirichlet":
        if alpha is None or not math.isfinite(float(alpha)) or float(alpha) <= 0:
            raise ValueError(f"dirichlet partition needs a positive finite alpha, got {alpha!r}")
    mix: dict[str, int] = {}
    for domain, count in domain_mix.items():
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise ValueError(f"client count for domain {domain!r} must be a non-negative integer, got {count!r}")
        mix[str(domain)] = int(count)
    total = sum(mix.values())
    if total == 0:
        raise ValueError("domain mix has no clients")
    missing = [d for d, c in mix.items() if c > 0 and d not in train_labels]
    if missing:
        raise ValueError(f"no train labels given for domain(s) {', '.join(map(repr, missing))}")
    if cap_total is None:
        cap_total = max(len(train_labels[d]) for d, c in mix.items() if c > 0)
    base = int(cap_total) // total
    if base < 1:
        raise ValueError(f"per-client cap {cap_total} // {total} clients is 0; use fewer clients")
    if kind == "highly-non-iid" and _cap(base, Fraction(1, 6)) < 1:
        raise ValueError(
            f"highly-non-iid cap {base} × 1/6 rounds to 0 examples; use fewer clients (total {total})"
        )

    result: list[ClientPartition] = []
    next_id = 0
    for domain, n in mix.items():
        if n == 0:
            continue
        labels = _as_labels(domain, train_labels[domain])
        if len(labels) < n:
            raise ValueError(
                f"domain {domain!r} has {len(labels)} train examples for {n} clients; "
                "every client needs at least one"
            )
        nc = max(num_classes, int(labels.max()) + 1)
        rngs = _streams(seed, domain)
        if kind == "dirichlet":
            parts = _dirichlet_partition(domain, n, labels, float(alpha), rngs, base, nc)  # type: ignore[arg-type]
        else:
            parts = _table_partition(domain, n, labels, kind, rngs, base, nc)
        for idx, excl, ratio in parts:
            cid = client_id(next_id)
            next_id += 1
            if len(idx) == 0:
                raise ValueError(
                    f"client {cid} (domain {domain!r}, {kind}) has no examples left after excluding "
                    f"labels {list(excl)} from its share of {len(labels)} // {n} examples; "
                    "use fewer clients or more data"
                )
            idx = np.ascontiguousarray(idx, dtype=np.int64)
            idx.setflags(write=False)
            result.append(ClientPartition(cid, domain, idx, excl, float(ratio)))
    return result
