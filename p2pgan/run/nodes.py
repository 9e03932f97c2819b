"""Nodes wired over a transport, run to the end of training in one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from p2pgan.strategies.shapes import create_baseline_node, run_shape
from p2pgan.config.schema import Scenario
from p2pgan.engine.client import ClientNode
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.ids import SERVER_ID
from p2pgan.engine.server import ServerNode
from p2pgan.bus import EventBus
from p2pgan.federation import create_strategy
from p2pgan.protocol.endpoint import Transport
from transports.catalogue import create_transport


def build_transport(scenario: Scenario) -> Transport:
    options = {"receive_timeout_s": scenario.transport.timeout_s}
    if scenario.transport.kind != "memory":
        options.update(host=scenario.transport.host, port=scenario.transport.port,
                       retries=scenario.transport.retries, max_message_mb=scenario.transport.max_message_mb)
    return create_transport(scenario.transport.kind, **options)


def create_server(prepared: PreparedRun, endpoint, bus: EventBus) -> ServerNode:
    baseline = create_baseline_node(prepared, SERVER_ID, endpoint, bus)
    if baseline is not None:
        return baseline
    aggregation = run_shape(prepared.scenario.strategy.name).aggregation
    strategy = create_strategy(aggregation, **strategy_options(prepared))
    return ServerNode(prepared.setup, prepared.plan, strategy, len(prepared.domains), endpoint, bus)


def strategy_options(prepared: PreparedRun) -> dict[str, object]:
    spec = prepared.scenario.strategy
    clusters = spec.clusters if spec.clusters is not None else len(prepared.domains)
    return {"kld_alpha": spec.kld_alpha, "clusters": clusters, "warmup_rounds": spec.warmup_rounds,
            "seed": prepared.scenario.seed, "cluster_feature": spec.cluster_feature}


def create_client(prepared: PreparedRun, client_id: str, endpoint, bus: EventBus) -> ClientNode:
    baseline = create_baseline_node(prepared, client_id, endpoint, bus)
    if baseline is not None:
        return baseline
    return ClientNode(prepared.setup, prepared.plan.client(client_id), prepared.plan.schedule,
                      prepared.client_data[client_id], endpoint, bus)


async def run_nodes(prepared: PreparedRun, transport: Transport, bus: EventBus,
                    node_ids: Sequence[str] | None = None) -> None:
    """Run the given nodes (default: all) in this event loop until training ends.

    If any node fails, every other local node is woken with the error so nothing hangs.
    """
    node_ids = list(node_ids) if node_ids is not None else [SERVER_ID, *prepared.plan.client_ids]
    endpoints = await transport.open(node_ids)
    try:
        nodes = [create_server(prepared, endpoints[nid], bus) if nid == SERVER_ID
                 else create_client(prepared, nid, endpoints[nid], bus) for nid in node_ids]
        tasks = [asyncio.create_task(node.run(), name=node.node_id) for node in nodes]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if t.exception() is not None]
            if failed:
                error = failed[0].exception()
                transport.fail_all(error)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise error
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        await transport.close()
