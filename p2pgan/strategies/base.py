"""The one Strategy concept: a class per training policy, Flower-style.

A strategy owns everything that makes it itself, and the run knows only this interface:

* ``Options``: its own YAML section (the keys under ``strategy:`` besides ``name``), validated
  with unknown keys refused, so FedAvg never silently swallows a HuSCF knob;
* :meth:`layout`: who holds which blocks and which data (cuts, full-local clients, pooled data);
* ``program``: the iteration the nodes execute and the simulator prices;
* :meth:`create_server` / :meth:`create_client`: its node kinds (the U-shaped split's by default);
* :meth:`aggregate`: what the server does with the round's parameters.

Adding a strategy is one module with one subclass, plus one line in
:mod:`p2pgan.strategies.catalogue`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as options_dataclass

from p2pgan.bus import EventBus
from p2pgan.engine.client import ClientNode
from p2pgan.engine.server import ServerNode
from p2pgan.ids import SERVER_ID
from p2pgan.model.segments import ClientCut
from p2pgan.plan.program import U_SHAPED, Program
from p2pgan.protocol.endpoint import Endpoint
from p2pgan.protocol.federation import FederationInput, FederationResult

if TYPE_CHECKING:  # pragma: no cover
    from p2pgan.config.schema import Scenario
    from p2pgan.plan.nodedata import PreparedRun

STRICT_OPTIONS = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

LOCAL_CUT = ClientCut(1, 1, 1, 1)
"""The cut recorded for full-local clients (they hold every block; the cut is informational)."""


@options_dataclass(config=STRICT_OPTIONS)
class NoOptions:
    """A strategy without options: any key under ``strategy:`` besides ``name`` is refused."""


@dataclass(frozen=True)
class Layout:
    """Who holds what: one cut per client, whether every client holds the whole model, whether
    every client's data is pooled into one client (the centralized upper bound)."""

    cuts: dict[str, ClientCut]
    full_local: bool = False
    pooled: bool = False


@dataclass(frozen=True)
class RunFacts:
    """What a strategy may know about the run besides its own options."""

    seed: int
    num_domains: int


CutResolver = Callable[[Sequence[str]], dict[str, ClientCut]]
"""Resolves the scenario's ``cuts:`` section for the given client ids (policy, list or search)."""


class Strategy(ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    program: ClassVar[Program] = U_SHAPED
    summary: ClassVar[str] = ""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def bind(self, facts: RunFacts) -> None:
        """Learn the run-wide facts the options do not hold. Called once by the composition root
        before any node is created."""
        self.num_domains = facts.num_domains
        self.seed = facts.seed

    def layout(self, scenario: "Scenario", client_ids: Sequence[str], resolve_cuts: CutResolver) -> Layout:
        """Default: the scenario's (heterogeneous) cuts, each client its own data."""
        return Layout(resolve_cuts(client_ids))

    @abstractmethod
    def aggregate(self, inputs: FederationInput) -> FederationResult:
        """Combine the round's client and server copies into what everyone continues with."""

    def create_server(self, prepared: "PreparedRun", endpoint: Endpoint, bus: EventBus):
        return ServerNode(prepared.setup, prepared.plan, self, len(prepared.domains), endpoint, bus, self.program,
                          faults=prepared.faults)

    def create_client(self, prepared: "PreparedRun", client_id: str, endpoint: Endpoint, bus: EventBus):
        return ClientNode(prepared.setup, prepared.plan.client(client_id), prepared.plan.schedule,
                          prepared.client_data[client_id], endpoint, bus, self.program, faults=prepared.faults)

    def create_node(self, prepared: "PreparedRun", node_id: str, endpoint: Endpoint, bus: EventBus):
        if node_id == SERVER_ID:
            return self.create_server(prepared, endpoint, bus)
        return self.create_client(prepared, node_id, endpoint, bus)


def full_local_layout(client_ids: Sequence[str], pooled: bool = False) -> Layout:
    return Layout({cid: LOCAL_CUT for cid in client_ids}, full_local=True, pooled=pooled)
