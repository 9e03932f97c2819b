"""FedProx over the U-shaped split (Li et al., 2020): size-weighted FedAvg, plus a proximal term
``mu/2 * ||w - w_round||^2`` on every block a client holds, which keeps clients with skewed
(non-IID) data from drifting far from the round's starting point. The server's shared blocks
are trained on everyone's batches at once and get no proximal term."""

from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from p2pgan.engine.client import ClientNode
from p2pgan.federation.base import size_weighted_fedavg
from p2pgan.plan.program import Local, LocalAction
from p2pgan.protocol.federation import FederationInput, FederationResult
from p2pgan.strategies.base import STRICT_OPTIONS, Strategy


@dataclass(config=STRICT_OPTIONS)
class FedProxOptions:
    mu: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    """Weight of the proximal term; 0 is plain split FedAvg."""


class FedProxClient(ClientNode):
    """A split client whose optimizer steps see the proximal term's gradient ``mu * (w - w_round)``."""

    def __init__(self, *args, mu: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mu = mu
        self._anchor = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {f"{block}.{name}": p.detach().clone()
                for block, module in self.blocks.items() for name, p in module.named_parameters()}

    def _local(self, action: Local, it) -> None:
        if action.action is LocalAction.STEP and self._mu > 0:
            with torch.no_grad():
                for block in action.network.block_names:
                    module = self.blocks.get(block)
                    for name, p in (module.named_parameters() if module is not None else ()):
                        if p.grad is not None:
                            p.grad.add_(p - self._anchor[f"{block}.{name}"], alpha=self._mu)
        super()._local(action, it)

    async def federate(self, round_: int, losses: dict[str, float]) -> None:
        await super().federate(round_, losses)
        self._anchor = self._snapshot()

    async def rejoin(self, round_: int) -> None:
        await super().rejoin(round_)
        self._anchor = self._snapshot()

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._anchor = self._snapshot()  # the anchor is the round's starting point: the loaded blocks


class FedProx(Strategy):
    name = "fedprox"
    Options = FedProxOptions
    summary = "the scenario's cuts, size-weighted FedAvg, proximal term mu on client-held blocks"

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        return size_weighted_fedavg(inputs)

    def create_client(self, prepared, client_id, endpoint, bus):
        return FedProxClient(prepared.setup, prepared.plan.client(client_id), prepared.plan.schedule,
                             prepared.client_data[client_id], endpoint, bus, self.program, mu=self.options.mu,
                             faults=prepared.faults)
