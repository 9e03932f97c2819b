"""Plain size-weighted federated averaging over one cluster (DESIGN §1.3 step 4, w_i ∝ n_i)."""

from __future__ import annotations

from p2pgan.protocol.federation import FederationInput, FederationResult

from p2pgan.federation.base import (

    FederationStrategy,

    average_cluster,

    distribute,

    register_strategy,

    size_weights,

)


@register_strategy("split-fedavg")
class SizeWeightedFedAvg(FederationStrategy):
    """Every client in one cluster; every layer averaged with weights n_i / Σ n."""

    def __init__(self, **_: object) -> None:
        pass

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        members = list(inputs.updates)
        weights = size_weights(inputs, members)
        model = average_cluster(inputs, members, weights)
        result = distribute(inputs, {c: 0 for c in members}, {0: model}, model)
        result.details["weights"] = weights
        return result
