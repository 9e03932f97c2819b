"""What a scenario implies once its data is read, checked before a run claims a results folder.

The schema settles what the file alone can (:mod:`p2pgan.config.schema`); the client sizes depend
on the data (the offline copies hold 5,000 train images per domain, a ``data.root`` the full
sets) and on the partition drawn from it, so they are only known here.

A batch larger than a client's data is not refused: the sampler slices an endless stream of
fresh seeded permutations, so every batch is full (the server's batched middle and the
simulator's price both count ``batch_size`` examples per client) and a small client's batch holds
some of its examples twice (docs/design.md §1.1, "Schedule"). The shipped paper scenarios do this
on purpose on the offline copies (62 examples per client in s6, batch 64). It is reported, though,
so that nobody meets it by surprise: :func:`batch_note` is the one line ``scenario validate`` and
``scenario run`` both print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from p2pgan.config.schema import Scenario
from p2pgan.data import ClientPartition, load_domain, partition_clients
from p2pgan.errors import P2PGanError


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's train split was read from, and how many examples it holds."""

    domain: str
    examples: int
    source: str


def load_train_labels(scenario: Scenario) -> tuple[dict[str, torch.Tensor], list[DomainSource]]:
    """Every domain's train labels (what partitioning needs) and where each came from.

    Reads the same files the run reads (and caches them for it); a malformed dataset is the
    loader's one-line :class:`~p2pgan.errors.DataError`."""
    labels, sources = {}, []
    for domain in scenario.domains:
        data = load_domain(domain, "train", scenario.data.root, scenario.datasets.get(domain))
        labels[domain] = data.labels
        sources.append(DomainSource(domain, len(data), data.source))
    return labels, sources


def scenario_partitions(scenario: Scenario, labels: Mapping[str, torch.Tensor]) -> list[ClientPartition]:
    """The clients' partitions of the train sets, as the run draws them (seeded by the scenario)."""
    try:
        return partition_clients(scenario.client_counts, labels, scenario.partition.kind, scenario.seed,
                                 scenario.partition.alpha, cap_total=None,
                                 num_classes=scenario.data_shape.num_classes)
    except ValueError as exc:
        raise P2PGanError(f"{scenario.source}:partition: {exc}") from None


def client_sizes(partitions: Sequence[ClientPartition], pooled: bool) -> dict[str, int]:
    """Examples each training client holds: its partition, or every partition for the one client
    that pools them (the centralized strategy trains the first client on all of them)."""
    if pooled and partitions:
        return {partitions[0].client_id: sum(p.size for p in partitions)}
    return {p.client_id: p.size for p in partitions}


def clients_below_batch(batch_size: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """The clients holding fewer examples than one batch, smallest first (ties in client order)."""
    small = [(n, i, cid) for i, (cid, n) in enumerate(sizes.items()) if n < batch_size]
    return {cid: n for n, _, cid in sorted(small)}


def batch_note(scenario: Scenario, sizes: Mapping[str, int]) -> str | None:
    """One line naming ``file:training.batch_size`` and the smallest client when some client
    holds fewer examples than a batch; ``None`` when every client fills its batches alone."""
    batch = scenario.training.batch_size
    small = clients_below_batch(batch, sizes)
    if not small:
        return None
    cid, size = next(iter(small.items()))
    others = f"; {len(small)} of {len(sizes)} clients hold less than a batch" if len(small) > 1 else ""
    return (f"{scenario.source}:training.batch_size: {batch} is more than client {cid} holds ({size} example"
            f"{'s' if size != 1 else ''} after partitioning{others}): their batches repeat examples, drawn from "
            "successive shuffles of their data (lower training.batch_size, or use more data per client)")


__all__ = ["DomainSource", "batch_note", "client_sizes", "clients_below_batch", "load_train_labels",
           "scenario_partitions"]
