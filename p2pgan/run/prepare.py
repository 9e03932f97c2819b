"""The one walk of a run's chain: scenario -> partitions -> strategy layout -> cuts -> schedule -> plan."""

from __future__ import annotations

import numpy as np
import torch

from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain, partition_clients, to_model_input
from p2pgan.errors import P2PGanError
from p2pgan.model.costs import ModelCosts, profile_model
from p2pgan.plan.cuts import resolve_cuts
from p2pgan.plan.nodedata import ClientRecord, LocalData, PreparedRun
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.strategies.shapes import reshape_prepared, run_shape, shape_cuts


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
