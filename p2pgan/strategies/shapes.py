"""Run shapes: how each strategy of the scenario lays out a run over the same nodes and transport.

A strategy is more than a round-end aggregation policy: the baselines of DESIGN §2 also change
who holds which blocks and which data. :class:`RunShape` says that declaratively, and
:func:`p2pgan.engine.runner.prepare_run` applies it in three places (cuts, ``full_local``, and a
final reshape of the prepared run); node creation asks :func:`create_baseline_node` first.

=================  ==================  ======================================================
strategy           aggregation         run structure
=================  ==================  ======================================================
huscf              huscf               the scenario's (heterogeneous) cuts; clustered KLD FL
huscf-no-kld       huscf-no-kld        same, size weights instead of KLD weights (ablation)
huscf-no-cluster   huscf-no-cluster    same, one cluster, KLD weights (ablation)
split-fedavg       split-fedavg        the scenario's cuts, one cluster, size-weighted FedAvg
usplit-fedavg      split-fedavg        one homogeneous U-shaped cut for every client
                                       (``cuts.fixed`` if given, ``cuts.policy`` all-offload
                                       or all-local if given, else :data:`DEFAULT_USPLIT_CUT`)
fedavg-gan         split-fedavg        every client holds the whole G and D (``full_local``):
                                       no activations travel, only parameters at round end
centralized        centralized (none)  one client holding the pooled data of every domain's
                                       partitions, full local, no averaging. The upper bound
                                       that breaks the privacy constraint. Its record's domain
                                       is ``"+".join(domains)``: each domain's metrics come from
                                       that single model (a label-conditional cGAN trained on
                                       pooled domains mixes them within a class, so with
                                       several domains it is *not* an upper bound per domain)
md-gan             (D swap)            generator on the server, a whole discriminator on each
                                       client (:mod:`p2pgan.baselines.mdgan`); the server ships
                                       **synthetic images** (and the labels it sampled) down to
                                       the clients, and clients send image-shaped gradients up
=================  ==================  ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from p2pgan.model.segments import ClientCut

if TYPE_CHECKING:  # pragma: no cover
    from p2pgan.config.schema import Scenario
    from p2pgan.plan.nodedata import PreparedRun

DEFAULT_USPLIT_CUT = ClientCut(0, 0, 0, 0)
"""usplit-fedavg's cut when the scenario gives none for all: clients keep only the pinned blocks
(G's label-consuming head and image tail, D's label head and loss tail); the server runs the rest."""

LOCAL_CUT = ClientCut(1, 1, 1, 1)
"""The cut recorded for full-local clients (they hold every block; the cut is informational)."""


@dataclass(frozen=True)
class RunShape:
    name: str
    aggregation: str
    """Registered :class:`~p2pgan.federation.FederationStrategy` the split server runs at round end."""
    cuts: Literal["scenario", "homogeneous", "local"] = "scenario"
    full_local: bool = False
    pooled: bool = False
    nodes: Literal["split", "md-gan"] = "split"


SHAPES: dict[str, RunShape] = {
    shape.name: shape
    for shape in (
        RunShape("huscf", "huscf"),
        RunShape("huscf-no-kld", "huscf-no-kld"),
        RunShape("huscf-no-cluster", "huscf-no-cluster"),
        RunShape("split-fedavg", "split-fedavg"),
        RunShape("usplit-fedavg", "split-fedavg", cuts="homogeneous"),
        RunShape("fedavg-gan", "split-fedavg", cuts="local", full_local=True),
        RunShape("centralized", "centralized", cuts="local", full_local=True, pooled=True),
        RunShape("md-gan", "md-gan", cuts="local", full_local=True, nodes="md-gan"),
    )
}


def run_shape(strategy: str) -> RunShape:
    try:
        return SHAPES[strategy]
    except KeyError:
        raise KeyError(f"unknown strategy {strategy!r} (known: {', '.join(sorted(SHAPES))})") from None


def homogeneous_cut(scenario: "Scenario") -> ClientCut:
    """usplit-fedavg's one cut for all (see the module table)."""
    spec = scenario.cuts
    if spec.fixed is not None:
        return ClientCut.of(spec.fixed)
    if spec.policy == "all-local":
        return ClientCut(1, 1, 1, 1)
    return DEFAULT_USPLIT_CUT


def shape_cuts(scenario: "Scenario", client_ids: list[str]) -> dict[str, ClientCut] | None:
    """The cuts this strategy imposes, or ``None`` to resolve the scenario's ``cuts:`` section."""
    shape = run_shape(scenario.strategy.name)
    if shape.cuts == "homogeneous":
        cut = homogeneous_cut(scenario)
        return {cid: cut for cid in client_ids}
    if shape.cuts == "local":
        return {cid: LOCAL_CUT for cid in client_ids}
    return None


def reshape_prepared(prepared: "PreparedRun") -> "PreparedRun":
    """Last step of ``prepare_run``: pool every client's data into one client for ``centralized``."""
    shape = run_shape(prepared.scenario.strategy.name)
    if not shape.pooled:
        return prepared
    return _pooled(prepared)


def _pooled(prepared: "PreparedRun") -> "PreparedRun":
    import torch

    from p2pgan.plan.nodedata import LocalData
    from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
    from p2pgan.plan.nodedata import ClientRecord, PreparedRun

    ids = prepared.plan.client_ids
    images = torch.cat([prepared.client_data[c].images for c in ids])
    labels = torch.cat([prepared.client_data[c].labels for c in ids])
    cid = ids[0]
    domain = "+".join(prepared.domains)
    present = set(labels.unique().tolist())
    num_classes = prepared.setup.model.num_classes
    record = ClientRecord(cid, domain, tuple(c for c in range(num_classes) if c not in present), 1.0)
    client = ClientPlan(cid, LOCAL_CUT, int(labels.shape[0]), full_local=True)
    training = prepared.scenario.training
    schedule = Schedule.for_clients([client.num_examples], training.rounds, training.local_epochs,
                                    training.batch_size, training.max_batches_per_epoch)
    return PreparedRun(prepared.scenario, RunPlan((client,), schedule), prepared.setup, (record,),
                       {cid: LocalData(images, labels)})


def create_baseline_node(prepared: "PreparedRun", node_id: str, endpoint, bus):
    """A node of a strategy with its own node pair (md-gan), or ``None`` for the split engine's."""
    shape = run_shape(prepared.scenario.strategy.name)
    if shape.nodes != "md-gan":
        return None
    from p2pgan.strategies.mdgan import MDGanClient, MDGanServer
    from p2pgan.ids import SERVER_ID

    if node_id == SERVER_ID:
        return MDGanServer(prepared, endpoint, bus)
    return MDGanClient(prepared, node_id, endpoint, bus)


__all__ = [
    "DEFAULT_USPLIT_CUT", "LOCAL_CUT", "RunShape", "SHAPES", "create_baseline_node", "homogeneous_cut",
    "reshape_prepared", "run_shape", "shape_cuts",
]
