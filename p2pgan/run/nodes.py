"""Nodes wired over a transport, run to the end of training in one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from p2pgan.bus import EventBus
from p2pgan.engine.loops import RoundCheckpoint
from p2pgan.engine.state import NodeState
from p2pgan.errors import PeerError
from p2pgan.ids import SERVER_ID
from p2pgan.plan.nodedata import PreparedRun
from p2pgan.protocol.endpoint import Transport
from p2pgan.protocol.events import LogEvent, NodeStopped
from p2pgan.strategies.base import Strategy
from p2pgan.strategies.catalogue import strategy_for
from transports.catalogue import create_transport


def build_transport(prepared: PreparedRun) -> Transport:
    scenario = prepared.scenario
    options = {"receive_timeout_s": scenario.transport.timeout_s}
    if scenario.transport.kind != "memory":
        options.update(host=scenario.transport.host, port=scenario.transport.port,
                       retries=scenario.transport.retries, max_message_mb=scenario.transport.max_message_mb,
                       message_specs=strategy_for(scenario).program.message_specs())
    return create_transport(scenario.transport.kind, **options)


async def run_nodes(prepared: PreparedRun, transport: Transport, bus: EventBus,
                    node_ids: Sequence[str] | None = None, strategy: Strategy | None = None,
                    first_round: int = 1, states: Mapping[str, NodeState] | None = None,
                    checkpoint: RoundCheckpoint | None = None) -> None:
    """Run the given nodes (default: all) in this event loop until training ends.

    A resumed run passes the round to start at and each node's saved state; ``checkpoint`` gets
    every node's state after each round's federation. If any node fails, every other local node
    is woken with the error so nothing hangs.
    """
    strategy = strategy or strategy_for(prepared.scenario)
    node_ids = list(node_ids) if node_ids is not None else [SERVER_ID, *prepared.plan.client_ids]
    endpoints = await transport.open(node_ids)
    try:
        nodes = [strategy.create_node(prepared, nid, endpoints[nid], bus) for nid in node_ids]
        if states is not None:
            for node in nodes:
                node.load_state_dict(states[node.node_id])
        tasks = [asyncio.create_task(node.run(first_round, checkpoint), name=node.node_id) for node in nodes]
        try:
            pending, stopped = set(tasks), set()
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if t.exception() is not None]
                if not failed:
                    continue
                if all(_dropped_peer(prepared, t) for t in failed) and _others_go_on(node_ids, tasks, stopped | set(failed)):
                    # faults.policy continue: a client that lost the server's attention (it was
                    # dropped as dead or silent) ends alone; the server goes on without it, and
                    # so do the other clients hosted here (a Ray shard's).
                    stopped.update(failed)
                    for task in failed:
                        bus.publish(LogEvent(f"node {task.get_name()} stopped: {task.exception()}", "warning"))
                        bus.publish(NodeStopped(task.get_name(), str(task.exception())))
                    continue
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


def _others_go_on(node_ids: Sequence[str], tasks: Sequence[asyncio.Task], stopped: set[asyncio.Task]) -> bool:
    """Nodes here that can do without the ``stopped`` clients: the server still running, or (the
    server runs elsewhere) another client that has not stopped, whether still running or already
    done with its training (it may finish before a silent client's timeout). Every local client
    stopped is this host's failure, which the host above handles (a process or shard lost under
    ``policy: continue``)."""
    if SERVER_ID in node_ids:
        return any(t.get_name() == SERVER_ID and not t.done() for t in tasks)
    return any(t not in stopped for t in tasks)


def _dropped_peer(prepared: PreparedRun, task: asyncio.Task) -> bool:
    """A client's task failed with a peer error under ``faults.policy: continue``."""
    return (prepared.faults.policy == "continue" and task.get_name() != SERVER_ID
            and isinstance(task.exception(), PeerError))
