"""Size-weighted FedAvg over three layouts: the scenario's heterogeneous cuts, one homogeneous
U-shaped cut for all, and the whole model on every client (FedAvg-GAN)."""

from __future__ import annotations

from collections.abc import Sequence

from p2pgan.config.schema import Scenario
from p2pgan.federation.base import size_weighted_fedavg
from p2pgan.model.segments import ClientCut
from p2pgan.protocol.federation import FederationInput, FederationResult
from p2pgan.strategies.base import CutResolver, Layout, Strategy, full_local_layout

DEFAULT_USPLIT_CUT = ClientCut(0, 0, 0, 0)
"""usplit-fedavg's cut when the scenario gives none for all: clients keep only the pinned blocks
(G's label-consuming head and image tail, D's label head and loss tail); the server runs the rest."""


class SplitFedAvg(Strategy):
    name = "split-fedavg"
    summary = "the scenario's heterogeneous cuts, one cluster, size-weighted FedAvg"

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        return size_weighted_fedavg(inputs)


class USplitFedAvg(SplitFedAvg):
    name = "usplit-fedavg"
    summary = "one homogeneous U-shaped cut for every client, size-weighted FedAvg"

    def layout(self, scenario: Scenario, client_ids: Sequence[str], resolve_cuts: CutResolver) -> Layout:
        cut = homogeneous_cut(scenario)
        return Layout({cid: cut for cid in client_ids})


class FedAvgGAN(SplitFedAvg):
    name = "fedavg-gan"
    summary = "the whole G and D on every client; only parameters travel, at round end"

    def layout(self, scenario: Scenario, client_ids: Sequence[str], resolve_cuts: CutResolver) -> Layout:
        return full_local_layout(client_ids)


def homogeneous_cut(scenario: Scenario) -> ClientCut:
    """``cuts.fixed`` if given, ``all-local`` if that is the policy, else :data:`DEFAULT_USPLIT_CUT`."""
    spec = scenario.cuts
    if spec.fixed is not None:
        return ClientCut.of(spec.fixed)
    if spec.policy == "all-local":
        return ClientCut(1, 1, 1, 1)
    return DEFAULT_USPLIT_CUT
