"""A run's nodes executed by the cohort engine (``execution.engine: cohort``): every client and
the server in this process, without a transport, publishing what the nodes publish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from p2pgan.bus import EventBus
from p2pgan.config.schema import FaultsSpec, Scenario
from p2pgan.engine.cohort import CohortEngine
from p2pgan.engine.execution import KernelPolicy, default_policy
from p2pgan.engine.loops import RoundCheckpoint
from p2pgan.engine.shard_cohort import ShardCohort
from p2pgan.engine.state import NodeState
from p2pgan.errors import ConfigError
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.plan.program import U_SHAPED
from p2pgan.protocol.endpoint import Transport
from p2pgan.strategies.base import Strategy


def _own_parts(strategy: Strategy) -> list[str]:
    """What ``strategy`` brings of its own in place of the split engine's program and node kinds."""
    cls = type(strategy)
    own = [name for name in ("create_node", "create_server", "create_client")
           if getattr(cls, name) is not getattr(Strategy, name)]
    if strategy.program is not U_SHAPED:
        own.insert(0, f"program {strategy.program.name!r}")
    return own


def check_cohort_strategy(strategy: Strategy, source: str = "", key: str = "execution.engine") -> None:
    """The cohort engines run the U-shaped program with the split engine's own node kinds; a
    strategy that brings its own nodes or program (fedprox's client, md-gan) needs ``nodes``
    (``key``: the scenario key that asked for a cohort)."""
    own = _own_parts(strategy)
    if own:
        raise ConfigError(source, key,
                          f"the cohort engine runs the split engine's own nodes, and strategy {type(strategy).name} "
                          f"brings its own ({', '.join(own)}) (expected {key.rpartition('.')[2]}: nodes)")


def shard_client_mode(scenario: Scenario, strategy: Strategy) -> str:
    """How a Ray shard runs its clients, ``nodes`` or ``cohort``: ``ray.clients``, where ``auto``
    (the default) is the cohort wherever it can run them (the split engine's own nodes, no
    ``faults:`` section), else nodes."""
    mode = scenario.ray.clients
    if mode == "auto":
        return "cohort" if scenario.faults == FaultsSpec() and not _own_parts(strategy) else "nodes"
    return mode


def build_cohort(prepared: PreparedRun, bus: EventBus, strategy: Strategy) -> CohortEngine:
    check_cohort_strategy(strategy, str(prepared.scenario.source or ""))
    return CohortEngine(prepared.setup, prepared.plan, prepared.client_data, strategy, len(prepared.domains),
                        strategy.program, bus, default_policy(prepared.setup.device))


async def run_cohort(prepared: PreparedRun, bus: EventBus, strategy: Strategy, first_round: int = 1,
                     states: Mapping[str, NodeState] | None = None, checkpoint: RoundCheckpoint | None = None) -> None:
    """Train to the end of the schedule: the cohort counterpart of :func:`p2pgan.run.nodes.run_nodes`
    for every node at once (a resumed run passes its first round and every node's saved state;
    ``checkpoint`` gets every node's state after each round, in the node engine's format)."""
    engine = build_cohort(prepared, bus, strategy)
    try:
        if states is not None:
            engine.load_state_dicts(dict(states))
        await engine.run(first_round, checkpoint)
    finally:
        engine.close()


async def run_shard_cohort(prepared: PreparedRun, transport: Transport, bus: EventBus, strategy: Strategy,
                           client_ids: Sequence[str], client_threads: int = 1, first_round: int = 1,
                           states: Mapping[str, NodeState] | None = None,
                           checkpoint: RoundCheckpoint | None = None) -> None:
    """Train a shard's clients (the server runs elsewhere, a node on ``transport``) to the end of the
    schedule as one :class:`~p2pgan.engine.shard_cohort.ShardCohort` on the CPU, its clients'
    computations on ``client_threads`` threads: the counterpart of
    :func:`p2pgan.run.nodes.run_nodes` for ``ray.clients: cohort``."""
    check_cohort_strategy(strategy, str(prepared.scenario.source or ""), "ray.clients")
    endpoints = await transport.open(list(client_ids))
    engine = ShardCohort(prepared.setup, prepared.plan, client_ids, prepared.client_data, endpoints,
                         strategy.program, bus, KernelPolicy(client_threads=client_threads))
    try:
        if states is not None:
            engine.load_state_dicts(states)
        await engine.run(first_round, checkpoint)
    finally:
        engine.close()
        await transport.close()
