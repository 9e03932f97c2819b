"""The scenario schema as validated dataclasses.

Pydantic dataclasses give typed fields, unknown-key rejection and precise error locations, which
the loader turns into one-line ``file:key: problem`` messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from p2pgan.model.blocks import ModelSpec

STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

DOMAINS = ("mnist", "fashion-mnist", "kmnist", "glyphs")
STRATEGIES = (
    "split-fedavg", "huscf", "huscf-no-kld", "huscf-no-cluster",
    "fedavg-gan", "md-gan", "usplit-fedavg", "centralized",
)
CUT_POLICIES = ("all-offload", "all-local", "mixed")
CutTuple = tuple[int, int, int, int]


@dataclass(config=STRICT)
class DataSpec:
    root: Optional[Path] = None
    """Folder with full datasets (IDX per domain or torchvision ``raw/`` folders)."""


@dataclass(config=STRICT)
class PartitionSpec:
    kind: Literal["iid", "non-iid", "highly-non-iid", "dirichlet"] = "iid"
    alpha: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _alpha_with_dirichlet(self) -> "PartitionSpec":
        if self.kind == "dirichlet" and self.alpha is None:
            raise ValueError("@alpha dirichlet partition needs alpha (expected a number > 0)")
        return self


@dataclass(config=STRICT)
class ModelSection:
    width: float = Field(default=1.0, gt=0, le=8)
    z_dim: int = Field(default=100, ge=1)

    def to_spec(self) -> ModelSpec:
        return ModelSpec(width=self.width, z_dim=self.z_dim)


@dataclass(config=STRICT)
class TrainingSpec:
    rounds: int = Field(default=1, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    max_batches_per_epoch: Optional[int] = Field(default=None, ge=1)

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
    policy: Optional[Literal["all-offload", "all-local", "mixed"]] = None
    search: Optional[Literal["exact", "ga"]] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "CutsSpec":
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
    name: Literal[
        "split-fedavg", "huscf", "huscf-no-kld", "huscf-no-cluster",
        "fedavg-gan", "md-gan", "usplit-fedavg", "centralized",
    ] = "huscf"
    kld_alpha: float = Field(default=1.0, ge=0)
    clusters: Union[Literal["auto"], int, None] = None
    """``None``: the number of domains; ``auto``: chosen by silhouette; N: fixed."""
    warmup_rounds: int = Field(default=2, ge=0)
    cluster_feature: Literal["covariance", "correlation", "mean"] = "covariance"
    """What HuSCF clusters on: channel covariances (or correlations) of the D-middle output, robust
    to which labels a client holds, or its batch mean (DESIGN §1.3 literally); see
    p2pgan.federation.huscf."""

    @field_validator("clusters")
    @classmethod
    def _positive_clusters(cls, clusters: Union[str, int, None]) -> Union[str, int, None]:
        if isinstance(clusters, int) and clusters < 1:
            raise ValueError("clusters must be >= 1, 'auto' or omitted")
        return clusters


@dataclass(config=STRICT)
class TransportSpec:
    kind: Literal["memory", "http"] = "memory"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    """Base port for the http transport; 0 picks free ports."""
    processes: bool = False
    timeout_s: float = Field(default=60.0, gt=0)
    """Deadline for a peer to answer or send what a node waits for."""
    retries: int = Field(default=3, ge=0)
    max_message_mb: float = Field(default=256.0, gt=0)


@dataclass(config=STRICT)
class MetricsSpec:
    enabled: bool = True
    every: int = Field(default=1, ge=1)
    """Compute the generation score every N rounds (the last round always)."""
    score_samples: int = Field(default=5000, ge=10)
    utility_samples: int = Field(default=30000, ge=10)
    classifier_epochs: int = Field(default=3, ge=1)
    utility_epochs: int = Field(default=3, ge=1)
    utility: bool = True
    cache_dir: Optional[Path] = None


@dataclass(config=STRICT)
class OutputSpec:
    dir: Optional[Path] = None
    """Results folder; default ``runs/<name>`` next to the scenario's project."""
    grid_samples_per_class: int = Field(default=4, ge=1, le=16)


@dataclass(config=STRICT)
class Scenario:
    name: str
    domains: dict[str, int]
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cuts: CutsSpec = Field(default_factory=lambda: CutsSpec(policy="all-offload"))
    topology: Optional[Path] = None
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    source: Optional[Path] = None
    """The scenario file (set by the loader, not read from YAML)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or any(c in name for c in "/\\\0"):
            raise ValueError("name must be non-empty and contain no path separators")
        return name

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: dict[str, int]) -> dict[str, int]:
        if not domains:
            raise ValueError("at least one domain is needed (expected e.g. {mnist: 4})")
        for domain, count in domains.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r} (expected one of: {', '.join(DOMAINS)})")
            if count < 1:
                raise ValueError(f"{domain} needs at least 1 client, got {count}")
        return domains

    @model_validator(mode="after")
    def _cuts_match_clients(self) -> "Scenario":
        if self.cuts.per_client is not None and len(self.cuts.per_client) != self.num_clients:
            raise ValueError(f"@cuts.per_client lists {len(self.cuts.per_client)} cuts for "
                             f"{self.num_clients} clients (expected one per client)")
        if self.cuts.search is not None and self.topology is None:
            raise ValueError("@cuts.search needs a topology file (expected topology: path/to.yaml)")
        return self

    @property
    def num_clients(self) -> int:
        return sum(self.domains.values())

    @property
    def results_dir(self) -> Path:
        assert self.output.dir is not None, "the loader always sets output.dir"
        return self.output.dir
