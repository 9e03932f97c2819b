"""The scenario schema as validated dataclasses.

Pydantic dataclasses give typed fields, unknown-key rejection and precise error locations, which
the loader turns into one-line ``file:key: problem`` messages.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from p2pgan.config.privacy import CutPrivacyBudget, PrivacyOptions
from p2pgan.config.domains import (BUILTIN_DOMAINS, DataShape, DomainEntry, UserDomain,
                                   check_domain_names, client_counts, data_shape, domain_entry, resolve_user_domains,
                                   user_domains)
from p2pgan.ids import client_id
from p2pgan.model.blocks import ModelSpec
from p2pgan.model.policies import SCENARIO_POLICIES

STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
"""Every section: unknown keys refused, and no float field accepts ``.inf``/``.nan``."""
# Numeric fields also take ``strict=True``: YAML 1.1 reads ``yes``/``on`` as booleans and pydantic's
# lax mode would turn them into 1 (and "3" into 3); a number must be written as a number.

SEED_MAX = 2**32 - 1
"""Seeds must suit every consumer: torch takes [-2**63, 2**64), numpy's SeedSequence [0, inf),
scikit-learn's KMeans ``random_state`` (a legacy RandomState) only [0, 2**32)."""
MAX_SECONDS = 1e6
"""Upper bound on a duration (about 11.6 days): larger values overflow asyncio and threading timeouts."""
MAX_NAME_CHARS = 100

DOMAINS = BUILTIN_DOMAINS
CutTuple = tuple[int, int, int, int]


@dataclass(config=STRICT)
class DataSpec:
    root: Optional[Path] = None
    """Folder with full datasets (IDX per domain or torchvision ``raw/`` folders)."""


@dataclass(config=STRICT)
class PartitionSpec:
    kind: Literal["iid", "non-iid", "highly-non-iid", "dirichlet"] = "iid"
    alpha: Optional[float] = Field(default=None, gt=0, strict=True)

    @model_validator(mode="after")
    def _alpha_with_dirichlet(self) -> "PartitionSpec":
        if self.kind == "dirichlet" and self.alpha is None:
            raise ValueError("@alpha dirichlet partition needs alpha (expected a number > 0)")
        return self


@dataclass(config=STRICT)
class ModelSection:
    width: float = Field(default=1.0, gt=0, le=8, strict=True)
    z_dim: int = Field(default=100, ge=1, le=4096, strict=True)

    def to_spec(self, image_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> ModelSpec:
        """The model for images of this shape (a scenario's: :attr:`Scenario.model_spec`)."""
        return ModelSpec(width=self.width, z_dim=self.z_dim, num_classes=num_classes,
                         image_channels=image_channels, image_size=image_size)


@dataclass(config=STRICT)
class TrainingSpec:
    rounds: int = Field(default=1, ge=1, le=1_000_000, strict=True)
    local_epochs: int = Field(default=1, ge=1, le=1_000_000, strict=True)
    batch_size: int = Field(default=64, ge=2, le=1_000_000, strict=True)
    lr: float = Field(default=2e-4, gt=0, strict=True)
    betas: tuple[float, float] = (0.5, 0.999)
    max_batches_per_epoch: Optional[int] = Field(default=None, ge=1, strict=True)

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_are_numbers(cls, betas: object) -> object:
        _refuse_booleans(betas, "betas")
        return betas

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {list(betas)}")
        return betas


@dataclass(config=STRICT)
class CutsSpec:
    """Exactly one of: one cut for all, one per client, a named policy, or a search."""

    fixed: Optional[CutTuple] = None
    per_client: Optional[list[CutTuple]] = None
    policy: Optional[Literal[SCENARIO_POLICIES]] = None  # type: ignore[valid-type]
    search: Optional[Literal["exact", "ga"]] = None
    privacy: Optional[CutPrivacyBudget] = None
    """Leakage budgets the searched cuts must respect (measured by the leakage audit, cached)."""

    @field_validator("fixed", "per_client", mode="before")
    @classmethod
    def _cuts_are_numbers(cls, cuts: object) -> object:
        _refuse_booleans(cuts, "cuts")
        return cuts

    @model_validator(mode="after")
    def _exactly_one(self) -> "CutsSpec":
        if self.privacy is not None and self.search is None:
            raise ValueError("@privacy a privacy budget constrains a cut search (expected search: exact|ga beside it)")
        chosen = [k for k in ("fixed", "per_client", "policy", "search") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of fixed, per_client, policy, search "
                             f"(got {', '.join(chosen) or 'none'})")
        for cut in ([self.fixed] if self.fixed else []) + list(self.per_client or []):
            if any(v not in (0, 1) for v in cut):
                raise ValueError(f"impossible cut {list(cut)} (expected four values each 0 or 1)")
        return self


@dataclass(config=STRICT)
class StrategySpec:
    """``strategy: {name: huscf, <its options>}``. The name and the options are checked against
    the strategy catalogue (each strategy validates its own section) by the run's composition
    root and the commands, which hold the catalogue; this layer only keeps them apart."""

    name: str = "huscf"
    options: dict[str, Any] = Field(default_factory=dict)


@dataclass(config=STRICT)
class TransportSpec:
    kind: Literal["memory", "http"] = "memory"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, strict=True)
    """Base port for the http transport; 0 picks free ports."""
    processes: bool = False
    timeout_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS, strict=True)
    """Deadline for a peer to answer or send what a node waits for."""
    retries: int = Field(default=3, ge=0, le=1000, strict=True)
    max_message_mb: float = Field(default=256.0, gt=0, le=65536, strict=True)


@dataclass(config=STRICT)
class ExecutionSpec:
    """How the program is executed: a node per client over the transport, one cohort engine
    running every client in this process (no transport), or Ray actors; and on which device the
    nodes or the cohort compute (Ray's on the CPU)."""

    engine: Literal["nodes", "cohort", "ray"] = "nodes"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """``auto``: the first CUDA device where one is available, else the CPU."""


@dataclass(config=STRICT)
class RaySpec:
    """``execution: {engine: ray}``: the server and shards of clients as Ray actors (docs/ray.md)."""

    address: Optional[str] = None
    """``local`` (a private Ray, started and shut down by the run), ``auto`` (the cluster this
    machine belongs to) or ``ray://host:port``; unset: ``$RAY_ADDRESS``, else ``local``."""
    shards: int = Field(default=1, ge=1, le=100_000, strict=True)
    """Actors hosting the clients (each about clients/shards of them); at most one per client."""
    num_cpus_per_shard: float = Field(default=1.0, ge=0, le=1024, strict=True)
    num_gpus_per_shard: float = Field(default=0.0, ge=0, le=64, strict=True)
    num_cpus_server: Optional[float] = Field(default=None, ge=0, le=1024, strict=True)
    """CPUs of the server actor, which runs the server's blocks over every client's batch (its
    torch threads: ``max(1, int(n))``); unset: ``num_cpus_per_shard``."""
    clients: Literal["auto", "nodes", "cohort"] = "auto"
    """How a shard runs its clients: ``nodes`` (a node each, as in memory), ``cohort`` (together,
    one foreach Adam per network and a thread per CPU of the shard; the same numbers on the CPU) or
    ``auto``: the cohort where it can run them (the split engine's own nodes, no faults), else nodes."""

    @property
    def server_cpus(self) -> float:
        return self.num_cpus_per_shard if self.num_cpus_server is None else self.num_cpus_server

    @field_validator("address")
    @classmethod
    def _known_address(cls, address: Optional[str]) -> Optional[str]:
        if address is None or address in ("local", "auto"):
            return address
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not address.startswith("ray://") or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected local, auto or ray://host:port, got {address!r}")
        return address


@dataclass(config=STRICT)
class MetricsSpec:
    enabled: bool = True
    every: int = Field(default=1, ge=1, strict=True)
    """Compute the generation score every N rounds (the last round always)."""
    score_samples: int = Field(default=5000, ge=10, le=10_000_000, strict=True)
    utility_samples: int = Field(default=30000, ge=10, le=10_000_000, strict=True)
    classifier_epochs: int = Field(default=3, ge=1, le=10_000, strict=True)
    utility_epochs: int = Field(default=3, ge=1, le=10_000, strict=True)
    utility: bool = True
    cache_dir: Optional[Path] = None


@dataclass(config=STRICT)
class CheckpointSpec:
    enabled: bool = True
    every: int = Field(default=1, ge=1, strict=True)
    """Write a checkpoint every N rounds (Ctrl-C and SIGTERM also write the last completed round)."""


ClientSelector = Union[str, list[str]]
"""Clients a fault applies to: ``"*"`` (every client), a domain name (that domain's clients), a
client id (``c003``), or a list of those."""
MAX_SLOWDOWN = 1e6
MAX_VIRTUAL_SECONDS = 1e12
"""Upper bound on a virtual-time deadline (simulated seconds: no timer ever waits for it)."""


def _selector_names(clients: ClientSelector) -> tuple[str, ...]:
    return (clients,) if isinstance(clients, str) else tuple(clients)


def _selector_input(clients: object) -> object:
    """Refuse anything but a name or a list of names before the union's own messages would."""
    if isinstance(clients, str) or (isinstance(clients, list) and all(isinstance(c, str) for c in clients)):
        return clients
    raise ValueError(f'expected "*", a domain, a client id or a list of those, got {clients!r}')


def _check_selector(clients: ClientSelector) -> ClientSelector:
    names = _selector_names(clients)
    if not names:
        raise ValueError('@clients names no client (expected "*", a domain, a client id or a list of those)')
    for name in names:
        if not name or not name.strip():
            raise ValueError('@clients an empty name (expected "*", a domain or a client id)')
    return clients


@dataclass(config=STRICT)
class _ClientRule:
    """A fault rule's ``clients``: checked once here for every kind of rule."""

    clients: ClientSelector

    @field_validator("clients", mode="before")
    @classmethod
    def _clients_are_names(cls, clients: object) -> object:
        return _selector_input(clients)

    @model_validator(mode="after")
    def _selected(self) -> "_ClientRule":
        _check_selector(self.clients)
        return self


@dataclass(config=STRICT)
class DropoutSpec(_ClientRule):
    """One dropout rule: scripted (``at_round``/``at_step``, back at ``rejoin_round`` or never) or
    random (``probability`` per round, each client drawn on its own, back the next round)."""

    at_round: Optional[int] = Field(default=None, ge=1, le=1_000_000, strict=True)
    at_step: int = Field(default=0, ge=0, le=1_000_000_000, strict=True)
    """The first step of ``at_round`` the clients miss (they take part in the steps before it)."""
    rejoin_round: Optional[int] = Field(default=None, ge=2, le=1_000_000, strict=True)
    """The round the clients take part in again from its first step; unset: never."""
    probability: Optional[float] = Field(default=None, ge=0, le=1, strict=True)

    @model_validator(mode="after")
    def _scripted_or_random(self) -> "DropoutSpec":
        if (self.at_round is None) == (self.probability is None):
            raise ValueError("give at_round (a scripted dropout) or probability (a dropout drawn every round), "
                             f"not {'both' if self.at_round is not None else 'neither'}")
        if self.probability is not None:
            if self.at_step:
                raise ValueError("@at_step a random dropout misses whole rounds (expected at_step only with at_round)")
            if self.rejoin_round is not None:
                raise ValueError("@rejoin_round a random dropout is back the next round "
                                 "(expected rejoin_round only with at_round)")
        elif self.rejoin_round is not None and self.at_round is not None and self.rejoin_round <= self.at_round:
            raise ValueError(f"@rejoin_round rejoin round {self.rejoin_round} is not after the dropout's round "
                             f"{self.at_round} (expected > {self.at_round}, or leave it out: never back)")
        return self


@dataclass(config=STRICT)
class StragglerSpec(_ClientRule):
    """Slowdown factors (>= 1): ``compute`` multiplies a client's compute time, ``link`` divides
    its access link's bandwidth both ways. Rules naming the same client multiply."""

    compute: float = Field(default=1.0, ge=1, le=MAX_SLOWDOWN, strict=True)
    link: float = Field(default=1.0, ge=1, le=MAX_SLOWDOWN, strict=True)


@dataclass(config=STRICT)
class LossyLinkSpec(_ClientRule):
    """A client's access link loses each copy of a message with ``loss_rate``; every lost copy is
    sent again (priced as retransmissions). Rules naming the same client lose independently."""

    loss_rate: float = Field(ge=0, lt=1, strict=True)


@dataclass(config=STRICT)
class FaultsSpec:
    """``faults:``: dropouts, stragglers, lossy links and a round deadline, seeded (docs/faults.md)."""

    seed: Optional[int] = Field(default=None, ge=0, le=SEED_MAX, strict=True)
    """Seed of the random dropouts and retransmissions; unset: the scenario's seed."""
    policy: Literal["fail", "continue"] = "fail"
    """What a dead or silent peer (over http) or a dead shard of clients (on Ray) does to a run:
    end it (``fail``) or be dropped while the run goes on with the rest (``continue``; a silent
    peer after ``peer_deadline_s``)."""
    peer_deadline_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS, strict=True)
    """Wall seconds the server waits for one peer's message before dropping it (``continue``)."""
    round_deadline_s: Optional[float] = Field(default=None, gt=0, le=MAX_VIRTUAL_SECONDS, strict=True)
    """Virtual seconds: a client whose own round would end later misses that round's federation
    (it stops at the step the deadline falls in)."""
    dropout: list[DropoutSpec] = Field(default_factory=list)
    stragglers: list[StragglerSpec] = Field(default_factory=list)
    lossy_links: list[LossyLinkSpec] = Field(default_factory=list)

    def rules(self) -> tuple[tuple[str, int, ClientSelector], ...]:
        """``(section, index, clients)`` of every rule, for messages naming ``faults.<section>[i]``."""
        return tuple((section, i, rule.clients) for section in ("dropout", "stragglers", "lossy_links")
                     for i, rule in enumerate(getattr(self, section)))


def selected_clients(clients: ClientSelector, domain_clients: Mapping[str, Sequence[str]]) -> tuple[str, ...] | str:
    """The client ids ``clients`` names given each domain's client ids (in client order), or the
    first name that is neither ``"*"``, a domain nor a client id (as a ``str``)."""
    every = [cid for ids in domain_clients.values() for cid in ids]
    known = set(every)
    chosen: set[str] = set()
    for name in _selector_names(clients):
        if name == "*":
            chosen.update(every)
        elif name in domain_clients:
            chosen.update(domain_clients[name])
        elif name in known:
            chosen.add(name)
        else:
            return name
    return tuple(cid for cid in every if cid in chosen)


@dataclass(config=STRICT)
class OutputSpec:
    dir: Optional[Path] = None
    """Results folder; default ``runs/<name>`` next to the scenario's project."""
    grid_samples_per_class: int = Field(default=4, ge=1, le=16, strict=True)


@dataclass(config=STRICT)
class LoggingSpec:
    """``logging:``: optional outputs a run writes beside its results (docs/api.md)."""

    tensorboard: bool = False
    """Per-step losses, per-round scores, clusters and simulated latency as TensorBoard scalars."""
    dir: Optional[Path] = None
    """The run's TensorBoard folder; default ``<results>/tensorboard``; relative: to the scenario file."""

    @field_validator("tensorboard")
    @classmethod
    def _extra_installed(cls, tensorboard: bool) -> bool:
        if tensorboard and find_spec("tensorboard") is None:
            raise ValueError("needs the optional extra: pip install -e '.[tensorboard]'")
        return tensorboard


@dataclass(config=STRICT)
class Scenario:
    name: str
    domains: dict[str, DomainEntry]
    """Built-in domain -> clients, or a name -> :class:`~p2pgan.config.domains.UserDomain`."""
    seed: int = Field(default=0, ge=0, le=SEED_MAX, strict=True)
    data: DataSpec = Field(default_factory=DataSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cuts: CutsSpec = Field(default_factory=lambda: CutsSpec(policy="all-offload"))
    topology: Optional[Path] = None
    topology_overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted topology keys set on top of the topology file (``--set topology.links.device1.up_bps=...``
    writes here; see :mod:`p2pgan.config.keys`), applied wherever the topology is loaded."""
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    privacy: PrivacyOptions = Field(default_factory=PrivacyOptions)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    faults: FaultsSpec = Field(default_factory=FaultsSpec)
    """The leakage audit (p2pgan privacy); ``enabled`` runs it after training on the trained weights."""
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    source: Optional[Path] = None
    """The scenario file (set by the loader, not read from YAML)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # The name becomes a folder (runs/<name>) and appears in command lines and logs.
        if not name or not name.strip():
            raise ValueError("name must not be empty")
        if any(c in name for c in "/\\"):
            raise ValueError(f"name must not contain a path separator, got {name!r}")
        if not name.isprintable():
            raise ValueError(f"name must not contain control characters, got {name!r}")
        if set(name) <= {"."}:
            raise ValueError(f"name must not be {name!r} (it names a folder)")
        if name.startswith("-"):
            raise ValueError(f"name must not start with '-' (it would read as a flag), got {name!r}")
        if name != name.strip():
            raise ValueError(f"name must not start or end with whitespace, got {name!r}")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"name must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
        return name

    @field_validator("domains", mode="before")
    @classmethod
    def _counts_or_datasets(cls, domains: object) -> object:
        if isinstance(domains, dict):
            return {domain: domain_entry(domain, entry) for domain, entry in domains.items()}
        return domains

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: dict[str, DomainEntry]) -> dict[str, DomainEntry]:
        check_domain_names(domains)
        return domains

    @model_validator(mode="after")
    def _datasets_found(self) -> "Scenario":
        # Dataset paths are relative to the scenario file (the loader passes it as ``source``).
        base = Path(self.source).resolve().parent if self.source is not None else Path.cwd()
        resolve_user_domains(self.domains, base)
        return self

    @model_validator(mode="after")
    def _cuts_match_clients(self) -> "Scenario":
        if self.cuts.per_client is not None and len(self.cuts.per_client) != self.num_clients:
            raise ValueError(f"@cuts.per_client lists {len(self.cuts.per_client)} cuts for "
                             f"{self.num_clients} clients (expected one per client)")
        if self.cuts.search is not None and self.topology is None:
            raise ValueError("@cuts.search needs a topology file (expected topology: path/to.yaml)")
        return self

    @model_validator(mode="after")
    def _fits_the_run(self) -> "Scenario":
        # Strategy options are typed by each strategy's Options class; the client count is only here.
        clusters = self.strategy.options.get("clusters")
        if isinstance(clusters, int) and not isinstance(clusters, bool) and clusters > self.num_clients:
            raise ValueError(f"@strategy.clusters {clusters} clusters for {self.num_clients} clients "
                             "(expected at most one cluster per client)")
        # Nodes listen on port, port+1, ..., port+num_clients (the server, then each client).
        if self.transport.port and self.transport.port + self.num_clients > 65535:
            raise ValueError(f"@transport.port base port {self.transport.port} + {self.num_clients} clients "
                             f"needs ports up to {self.transport.port + self.num_clients} (expected at most "
                             f"65535: a base port <= {65535 - self.num_clients}, or 0 for free ports)")
        return self

    @model_validator(mode="after")
    def _faults_fit_the_run(self) -> "Scenario":
        # What the file alone settles; a step beyond a round's real length is refused at prepare
        # (steps per round depend on the partition sizes, i.e. on the data).
        domain_clients = self.domain_clients
        ids = [cid for group in domain_clients.values() for cid in group]
        for section, i, clients in self.faults.rules():
            unknown = selected_clients(clients, domain_clients)
            if isinstance(unknown, str):
                raise ValueError(f"@faults.{section}[{i}].clients unknown client or domain {unknown!r} (expected \"*\", "
                                 f"a domain ({', '.join(domain_clients)}) or a client id {ids[0]}..{ids[-1]})")
        rounds = self.training.rounds
        most_steps = (self.training.local_epochs * self.training.max_batches_per_epoch
                      if self.training.max_batches_per_epoch is not None else None)
        for i, rule in enumerate(self.faults.dropout):
            if rule.at_round is not None and rule.at_round > rounds:
                raise ValueError(f"@faults.dropout[{i}].at_round round {rule.at_round} but the run has {rounds} "
                                 f"round{'s' if rounds > 1 else ''} (expected 1..{rounds})")
            if rule.rejoin_round is not None and rule.rejoin_round > rounds:
                raise ValueError(f"@faults.dropout[{i}].rejoin_round round {rule.rejoin_round} but the run has "
                                 f"{rounds} rounds (expected <= {rounds}, or leave it out: never back)")
            if most_steps is not None and rule.at_step >= most_steps:
                raise ValueError(f"@faults.dropout[{i}].at_step step {rule.at_step} but a round has at most "
                                 f"{most_steps} steps (local_epochs x max_batches_per_epoch; expected "
                                 f"0..{most_steps - 1})")
        return self

    @model_validator(mode="after")
    def _faults_need_the_node_engine(self) -> "Scenario":
        # Who takes part when, and dropped peers, are executed by the node engine only (Ray's
        # actors run it too); the cohort engine batches every client in every step.
        engine = self.execution.engine
        if engine == "cohort" and self.faults != FaultsSpec():
            raise ValueError(f"@faults execution.engine {engine} runs every client in every step, so it cannot "
                             "take faults (expected execution.engine: nodes or ray, or no faults section)")
        if engine == "ray" and self.ray.clients == "cohort" and self.faults != FaultsSpec():
            raise ValueError("@faults ray.clients cohort runs every client of a shard in every step, so it cannot "
                             "take faults (expected ray.clients: nodes, or no faults section)")
        if (self.faults.policy == "continue" and (self.transport.kind == "http" or engine == "ray")
                and self.faults.peer_deadline_s >= self.transport.timeout_s):
            # The live clients wait for the server at most timeout_s: a longer wait for a dead
            # (or, on Ray, a hung) peer would time them out too.
            raise ValueError(f"@faults.peer_deadline_s must be below transport.timeout_s "
                             f"({self.transport.timeout_s:g} s) under policy continue "
                             f"(got {self.faults.peer_deadline_s:g} s)")
        return self

    @model_validator(mode="after")
    def _cohort_runs_in_one_process(self) -> "Scenario":
        if self.execution.engine == "cohort" and (self.transport.kind != "memory" or self.transport.processes):
            used = "transport.processes" if self.transport.processes else f"transport.kind {self.transport.kind}"
            raise ValueError(f"@execution.engine cohort runs every client in one process without a transport, "
                             f"so it cannot use {used} (expected transport: memory without processes, "
                             "or engine: nodes)")
        return self

    @model_validator(mode="after")
    def _ray_computes_on_the_cpu(self) -> "Scenario":
        # Ray's actors (the server node and the shards' nodes or cohorts) compute on the CPU; a
        # cuda they would ignore is refused, and auto means the CPU there.
        if self.execution.device == "cuda" and self.execution.engine == "ray":
            raise ValueError("@execution.device cuda runs the nodes or the cohort engine on the GPU; execution.engine "
                             "ray computes on the CPU (expected execution.engine: nodes or cohort, or device: cpu or auto)")
        return self

    @model_validator(mode="after")
    def _ray_runs_its_own_transport(self) -> "Scenario":
        if self.execution.engine == "ray":
            if self.transport.kind != "memory" or self.transport.processes:
                used = "transport.processes" if self.transport.processes else f"transport.kind {self.transport.kind}"
                raise ValueError(f"@execution.engine ray carries messages between its actors itself, so it cannot "
                                 f"use {used} (expected transport: memory without processes)")
            if self.ray.shards > self.num_clients:
                raise ValueError(f"@ray.shards {self.ray.shards} shards for {self.num_clients} clients "
                                 "(expected at most one shard per client)")
        return self

    @property
    def num_clients(self) -> int:
        return sum(self.client_counts.values())

    @property
    def client_counts(self) -> dict[str, int]:
        """Domain -> number of clients, for every domain (built-in or a user dataset)."""
        return client_counts(self.domains)

    @property
    def domain_clients(self) -> dict[str, tuple[str, ...]]:
        """Domain -> its client ids (``c000``... are given domain by domain, in file order)."""
        out, next_id = {}, 0
        for domain, count in self.client_counts.items():
            if count:
                out[domain] = tuple(client_id(next_id + k) for k in range(count))
                next_id += count
        return out

    @property
    def datasets(self) -> dict[str, UserDomain]:
        """The domains read from the user's files (``load_domain(..., dataset=scenario.datasets.get(d))``)."""
        return user_domains(self.domains)

    @property
    def data_shape(self) -> DataShape:
        """Image channels, side and class count shared by every domain of the scenario."""
        return data_shape(self.domains)

    @property
    def model_spec(self) -> ModelSpec:
        """The ``model:`` section sized for this scenario's images and classes."""
        shape = self.data_shape
        return self.model.to_spec(image_channels=shape.channels, image_size=shape.size,
                                  num_classes=shape.num_classes)

    @property
    def results_dir(self) -> Path:
        assert self.output.dir is not None, "the loader always sets output.dir"
        return self.output.dir


def _refuse_booleans(value: object, what: str) -> None:
    """``True``/``False`` (YAML ``yes``/``no``) inside a list of numbers."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (list, tuple)):
            _refuse_booleans(item, what)
        elif isinstance(item, bool):
            raise ValueError(f"{what} must be numbers, got {item!r} (YAML reads yes/no/on/off as booleans)")
