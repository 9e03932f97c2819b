"""The checks ``scenario validate`` and ``scenario run`` share, beyond parsing the file.

``validate`` must refuse what ``run`` would refuse, with the same line, and ``run`` must refuse
it before it claims a results folder (a failure after that leaves files a second try has to
``--force`` away). Both call :func:`check_runnable`:

* the strategy's own options (its ``Options`` class), that the device asked for is here, and for
  the cohort engine that it can run the strategy;
* the topology the run prices on, with the scenario's ``topology.<key>`` overrides applied (the
  packaged paper-edge topology when the scenario names none);
* the data: every domain's train split read (a malformed dataset fails here, not at round one)
  and partitioned as the run partitions it, so that impossible partitions fail here and a batch
  larger than a client's data is reported (:func:`p2pgan.plan.checks.batch_note`).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pgan.config.schema import Scenario
from p2pgan.errors import ConfigError
from p2pgan.model.segments import ClientCut
from p2pgan.plan.checks import (DomainSource, batch_note, client_sizes, load_train_labels,
                                scenario_partitions)
from p2pgan.run.cohort import check_cohort_strategy
from p2pgan.run.prepare import execution_device
from p2pgan.strategies.catalogue import strategy_for
from p2pgan.topology.profiles import Topology, default_topology_path, load_topology

_PROBE_CUT = ClientCut.of((0, 0, 0, 0))


@dataclass(frozen=True)
class RunnableCheck:
    """What the checks found besides errors: the data each domain uses, each client's size, and
    notes the user should see (one line each, already naming ``file:key``)."""

    sources: tuple[DomainSource, ...]
    sizes: dict[str, int]
    notes: tuple[str, ...]


def check_runnable(scenario: Scenario) -> RunnableCheck:
    """Raise the one-line error a run of ``scenario`` would meet before its first round, or say
    what the run will use (see the module docstring)."""
    strategy = strategy_for(scenario)
    execution_device(scenario)  # what prepare_run refuses, before any folder exists
    if scenario.execution.engine == "cohort":  # what build_cohort refuses
        check_cohort_strategy(strategy, str(scenario.source or ""))
    elif scenario.execution.engine == "ray" and scenario.ray.clients == "cohort":  # what a shard would refuse
        check_cohort_strategy(strategy, str(scenario.source or ""), "ray.clients")
    scenario_topology(scenario)
    labels, sources = load_train_labels(scenario)
    partitions = scenario_partitions(scenario, labels)
    # Pooling never depends on the cuts: probe the layout with a placeholder instead of a search.
    layout = strategy.layout(scenario, [p.client_id for p in partitions],
                             lambda ids: {cid: _PROBE_CUT for cid in ids})
    sizes = client_sizes(partitions, layout.pooled)
    note = batch_note(scenario, sizes)
    return RunnableCheck(tuple(sources), sizes, (note,) if note else ())


def scenario_topology(scenario: Scenario) -> Topology:
    """The topology a run of ``scenario`` prices on, overrides applied. A bad override value is
    blamed on the scenario's ``topology.<key>`` (it came from the scenario or ``--set``), not on
    the topology file, which is fine without it."""
    path = scenario.topology or default_topology_path()
    topology = load_topology(path)
    if not scenario.topology_overrides:
        return topology
    try:
        return topology.replaced(scenario.topology_overrides)
    except ConfigError as exc:
        raise ConfigError(str(scenario.source), f"topology.{exc.key}" if exc.key else "topology_overrides",
                          exc.problem) from None


__all__ = ["RunnableCheck", "check_runnable", "scenario_topology"]
