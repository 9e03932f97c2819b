"""A prepared run: the public plan plus each client's private examples, held apart by node."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from p2pgan.config.schema import Scenario
from p2pgan.plan.faults import FaultPlan
from p2pgan.plan.setup import NodeSetup
from p2pgan.ids import SERVER_ID
from p2pgan.plan.run import RunPlan
from p2pgan.protocol.events import NodeInfo
from p2pgan.protocol.messages import is_on


@dataclass(frozen=True)
class LocalData:
    """A client's private examples: images in [-1, 1], [N, C, H, W], and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def on(self, device: torch.device) -> "LocalData":
        """The examples on ``device`` (itself where they are there already)."""
        if is_on(self.images, device):
            return self
        return LocalData(self.images.to(device), self.labels.to(device))

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``indices`` (a sampler's, drawn on the host), where the examples are."""
        indices = indices.to(self.images.device)
        return self.images[indices], self.labels[indices]


@dataclass(frozen=True)
class ClientRecord:
    """What the experimenter knows about a client (its domain is never given to the server)."""

    client_id: str
    domain: str
    excluded_labels: tuple[int, ...]
    size_ratio: float


@dataclass(frozen=True)
class PreparedRun:
    scenario: Scenario
    plan: RunPlan
    setup: NodeSetup
    records: tuple[ClientRecord, ...]
    client_data: dict[str, LocalData]
    faults: FaultPlan | None = None
    """Who takes part when, slowdowns and losses (``faults:``); after construction always a plan
    (:meth:`FaultPlan.none` where the run has no faults)."""

    def __post_init__(self) -> None:
        if self.faults is None:
            schedule = self.plan.schedule
            object.__setattr__(self, "faults", FaultPlan.none(self.plan.client_ids, schedule.rounds,
                                                              schedule.steps_per_round))

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.scenario.domains)

    def domain_of(self, client_id: str) -> str:
        for record in self.records:
            if record.client_id == client_id:
                return record.domain
        raise KeyError(client_id)

    def node_infos(self, profiles: Mapping[str, str] | None = None) -> tuple[NodeInfo, ...]:
        """What the experimenter shows about each node; ``profiles`` are device profile names."""
        profiles = profiles or {}
        infos = [NodeInfo(SERVER_ID, "server", profile=profiles.get(SERVER_ID))]
        for record, client in zip(self.records, self.plan.clients):
            infos.append(NodeInfo(client.client_id, "client", record.domain, client.cut.as_tuple(),
                                  profiles.get(client.client_id), client.num_examples))
        return tuple(infos)


def client_domains(records) -> dict[str, tuple[str, ...]]:
    """The domains each client's data comes from (a pooled client lists several)."""
    return {r.client_id: tuple(r.domain.split("+")) for r in records}


def speaking_clusters(clusters: Mapping[str, int], domains_of: Mapping[str, tuple[str, ...]],
                      domains: tuple[str, ...]) -> dict[str, int]:
    """Per domain, the cluster holding most of its clients (lowest id on ties)."""
    votes: dict[str, Counter[int]] = defaultdict(Counter)
    for cid, cluster in clusters.items():
        for domain in domains_of.get(cid, ()):
            votes[domain][int(cluster)] += 1
    fallback = Counter(int(c) for c in clusters.values())
    out = {}
    for domain in domains:
        counter = votes.get(domain) or fallback
        out[domain] = min(counter, key=lambda k: (-counter[k], k))
    return out
