"""The centralized upper bound: one client holding every domain's pooled data, the whole model,
no averaging. It breaks the privacy constraint on purpose; with several domains it is not an
upper bound per domain (a label-conditional cGAN on pooled domains mixes them within a class)."""

from __future__ import annotations

from collections.abc import Sequence

from p2pgan.config.schema import Scenario
from p2pgan.federation.base import keep_own
from p2pgan.protocol.federation import FederationInput, FederationResult
from p2pgan.strategies.base import CutResolver, Layout, Strategy, full_local_layout


class Centralized(Strategy):
    name = "centralized"
    summary = "one client with the pooled data of every partition, full local, no averaging"

    def layout(self, scenario: Scenario, client_ids: Sequence[str], resolve_cuts: CutResolver) -> Layout:
        return full_local_layout(client_ids, pooled=True)

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        return keep_own(inputs)
