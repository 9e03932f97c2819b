"""The one walk of a run's chain, before any node starts:

scenario -> strategy (options checked) -> partitions -> strategy layout -> cuts -> schedule -> plan.

Every launcher (one process, a process per node, a host per node) prepares through here. A node
process passes ``for_node`` and keeps only what that node may hold: a client its own partition,
the server no client example at all.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain, partition_clients, to_model_input
from p2pgan.engine.execution import exact_cuda, resolve_device
from p2pgan.errors import P2PGanError
from p2pgan.model.costs import ModelCosts, profile_model
from p2pgan.model.segments import ClientCut
from p2pgan.plan.cuts import resolve_cuts
from p2pgan.plan.nodedata import ClientRecord, LocalData, PreparedRun
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.run.faults import build_fault_plan, refuse_pooled_faults
from p2pgan.run.leakage import measured_leakage
from p2pgan.run.steps import Progress, preparation_step
from p2pgan.sim.search import SearchSpace, run_search
from p2pgan.strategies.catalogue import strategy_for
from p2pgan.topology.profiles import load_topology


def prepare_run(scenario: Scenario, costs: ModelCosts | None = None, for_node: str | None = None,
                for_nodes: Collection[str] | None = None, progress: Progress | None = None) -> PreparedRun:
    """Everything a run needs before any node starts: data, partitions, cuts, schedule, costs.

    ``costs``: the model's measured costs when already known (a process per node reuses the
    coordinator's instead of profiling the model again). ``for_node``: keep only that node's
    examples (none for the server or any other id, e.g. a coordinator's ``SERVER_ID``).
    ``for_nodes``: the same for a process hosting several nodes (a Ray shard of clients).
    ``progress``: told each step (:class:`~p2pgan.protocol.events.PreparationStep`) as it starts and ends.
    """
    strategy = strategy_for(scenario)
    train = {}
    for domain in scenario.domains:
        with preparation_step(progress, f"data {domain}") as step:
            train[domain] = load_domain(domain, "train", scenario.data.root, scenario.datasets.get(domain))
            step.detail = f"{len(train[domain]):,} train images"
    with preparation_step(progress, "partition") as step:
        try:
            partitions = partition_clients(scenario.client_counts, {d: data.labels for d, data in train.items()},
                                           scenario.partition.kind, scenario.seed, scenario.partition.alpha,
                                           cap_total=None, num_classes=scenario.data_shape.num_classes)
        except ValueError as exc:
            raise P2PGanError(f"{scenario.source}:partition: {exc}") from None
        step.detail = f"{len(partitions)} clients, {scenario.partition.kind}"
    spec = scenario.model_spec
    if costs is None:
        with preparation_step(progress, "model costs") as step:
            costs = profile_model(spec)
            step.detail = f"{len(costs.blocks)} blocks profiled"
    client_ids = [p.client_id for p in partitions]
    with preparation_step(progress, "cuts") as step:
        layout = strategy.layout(scenario, client_ids, lambda ids: scenario_cuts(scenario, ids, costs))
        step.detail = _cuts_detail(scenario, layout)
    keep = _keeper(for_node, client_ids[0] if layout.pooled else None, for_nodes)
    client_data, clients, records = {}, [], []
    for part in partitions:
        if keep(part.client_id):
            data = train[part.domain]
            index = torch.from_numpy(np.array(part.indices, dtype=np.int64))
            client_data[part.client_id] = LocalData(to_model_input(data.images[index]), data.labels[index].clone())
        clients.append(ClientPlan(part.client_id, layout.cuts[part.client_id], part.size, full_local=layout.full_local))
        records.append(ClientRecord(part.client_id, part.domain, tuple(part.excluded_labels), float(part.size_ratio)))
    del train
    training = scenario.training
    device = execution_device(scenario)
    if device.type == "cuda":
        exact_cuda()  # process-wide: the nodes' kernels in fp32, deterministic, run after run
    setup = NodeSetup(spec, costs, scenario.seed, training.lr, tuple(training.betas), device)
    if layout.pooled:
        refuse_pooled_faults(scenario)
        return _pooled(scenario, setup, clients, records, client_data, keep)
    schedule = Schedule.for_clients([c.num_examples for c in clients], training.rounds, training.local_epochs,
                                    training.batch_size, training.max_batches_per_epoch)
    run_plan = RunPlan(tuple(clients), schedule)
    faults = build_fault_plan(scenario, run_plan, records, strategy.program, costs)
    return PreparedRun(scenario, run_plan, setup, tuple(records), client_data, faults)


def execution_device(scenario: Scenario) -> torch.device:
    """Where this process's nodes compute: ``execution.device`` resolved on this machine (cuda
    where there is none is a one-line error). Ray's actors compute on the CPU (the schema refuses
    cuda there; ``auto`` is the CPU)."""
    if scenario.execution.engine == "ray":
        return torch.device("cpu")
    source = str(scenario.source or "")
    return resolve_device(scenario.execution.device, f"{source}:execution.device" if source else "execution.device")


def scenario_cuts(scenario: Scenario, client_ids: Sequence[str], costs: ModelCosts) -> dict[str, ClientCut]:
    """The scenario's ``cuts:`` section resolved for ``client_ids``, searching with the simulator."""
    return resolve_cuts(scenario, client_ids, _search(costs))


def _cuts_detail(scenario: Scenario, layout) -> str:
    if layout.full_local:
        return "every block on the client" + (" (one pooled client)" if layout.pooled else "")
    spec = scenario.cuts
    how = (f"search {spec.search}" if spec.search is not None else f"policy {spec.policy}" if spec.policy is not None
           else "per client" if spec.per_client is not None else "fixed")
    distinct = len({cut.as_tuple() for cut in layout.cuts.values()})
    return f"{how}, {distinct} distinct cut{'s' if distinct != 1 else ''}"


def _keeper(for_node: str | None, pooled_into: str | None, for_nodes: Collection[str] | None = None):
    """Which clients' examples this process keeps: all (one process runs every node), the
    node's own (a client process), none (the server, a coordinator). The client that pools
    every partition (centralized) keeps all of them: that is what it is."""
    if for_nodes is not None:
        hosted = frozenset(for_nodes)
        if pooled_into is not None and pooled_into in hosted:
            return lambda cid: True
        return lambda cid: cid in hosted
    if for_node is None or (pooled_into is not None and for_node == pooled_into):
        return lambda cid: True
    return lambda cid: cid == for_node


def _search(costs: ModelCosts):
    def search(scenario: Scenario, client_ids: Sequence[str]) -> dict[str, ClientCut]:
        assert scenario.topology is not None and scenario.cuts.search is not None
        topology = load_topology(scenario.topology, scenario.topology_overrides)
        assignment = topology.assign_profiles(list(client_ids))
        budget = scenario.cuts.privacy
        space = SearchSpace()
        if budget is not None and budget.constrains:
            space = SearchSpace(leakage=measured_leakage(scenario), budget=budget)
        # Exact under SimPy's price where links share capacity (elsewhere the same as analytic).
        return run_search(scenario.cuts.search, list(client_ids), costs, scenario.training.batch_size, topology,
                          assignment, scenario.seed, space=space, price="simpy").cuts
    return search


def _pooled(scenario: Scenario, setup: NodeSetup, clients: list[ClientPlan], records: list[ClientRecord],
            client_data: dict[str, LocalData], keep) -> PreparedRun:
    """One client (the first id) with every partition's examples; records keep the true domains."""
    cid = clients[0].client_id
    size = sum(c.num_examples for c in clients)
    data = {}
    if keep(cid) and client_data:
        ids = [c.client_id for c in clients]
        data[cid] = LocalData(torch.cat([client_data[c].images for c in ids]),
                              torch.cat([client_data[c].labels for c in ids]))
    client = ClientPlan(cid, clients[0].cut, size, full_local=True)
    training = scenario.training
    schedule = Schedule.for_clients([size], training.rounds, training.local_epochs, training.batch_size,
                                    training.max_batches_per_epoch)
    # The record names every pooled domain ("mnist+fashion-mnist"): results give each its own grid.
    pooled = ClientRecord(cid, "+".join(scenario.domains), (), 1.0)
    return PreparedRun(scenario, RunPlan((client,), schedule), setup, (pooled,), data)
