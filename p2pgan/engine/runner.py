"""Scenario -> data partitions -> cut plan -> nodes wired over a transport -> training."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from p2pgan.baselines import create_baseline_node, reshape_prepared, run_shape, shape_cuts
from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain, partition_clients, to_model_input
from p2pgan.engine.client import ClientNode, LocalData
from p2pgan.engine.cuts import resolve_cuts
from p2pgan.engine.messages import SERVER_ID
from p2pgan.engine.plan import ClientPlan, RunPlan, Schedule
from p2pgan.engine.server import ServerNode
from p2pgan.engine.setup import NodeSetup
from p2pgan.errors import P2PGanError
from p2pgan.events import EventBus, NodeInfo
from p2pgan.federation import create_strategy
from p2pgan.model.costs import ModelCosts, profile_model
from transports.base import Transport, create_transport


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


def prepare_run(scenario: Scenario, costs: ModelCosts | None = None) -> PreparedRun:
    """Everything a run needs before any node starts: data, partitions, cuts, schedule, costs.

    ``costs``: the model's measured costs when already known (a process per node reuses the
    coordinator's instead of profiling the model again).
    """
    train = {domain: load_domain(domain, "train", scenario.data.root) for domain in scenario.domains}
    try:
        partitions = partition_clients(scenario.domains, {d: data.labels for d, data in train.items()},
                                       scenario.partition.kind, scenario.seed, scenario.partition.alpha,
                                       cap_total=None)
    except ValueError as exc:
        raise P2PGanError(f"{scenario.source}:partition: {exc}") from None
    spec = scenario.model.to_spec()
    costs = costs if costs is not None else profile_model(spec)
    client_ids = [p.client_id for p in partitions]
    shape = run_shape(scenario.strategy.name)  # run-structure strategies: p2pgan.baselines
    cuts = shape_cuts(scenario, client_ids) or resolve_cuts(scenario, client_ids, costs)
    client_data, clients, records = {}, [], []
    for part in partitions:
        data = train[part.domain]
        index = torch.from_numpy(np.array(part.indices, dtype=np.int64))
        client_data[part.client_id] = LocalData(to_model_input(data.images[index]), data.labels[index].clone())
        clients.append(ClientPlan(part.client_id, cuts[part.client_id], part.size, full_local=shape.full_local))
        records.append(ClientRecord(part.client_id, part.domain, tuple(part.excluded_labels), float(part.size_ratio)))
    training = scenario.training
    schedule = Schedule.for_clients([c.num_examples for c in clients], training.rounds, training.local_epochs,
                                    training.batch_size, training.max_batches_per_epoch)
    setup = NodeSetup(spec, costs, scenario.seed, training.lr, tuple(training.betas))
    return reshape_prepared(PreparedRun(scenario, RunPlan(tuple(clients), schedule), setup, tuple(records), client_data))


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
