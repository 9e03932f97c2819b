"""HuSCF-GAN and its two ablations: clustered, KLD-weighted federation over the U-shaped split
(docs/design.md §1.3; the aggregation itself is :class:`p2pgan.federation.huscf.ClusteredKLD`)."""

from __future__ import annotations

from typing import ClassVar, Literal, Union

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from p2pgan.federation.huscf import ClusteredKLD
from p2pgan.protocol.federation import FederationInput, FederationResult
from p2pgan.strategies.base import STRICT_OPTIONS, RunFacts, Strategy


@dataclass(config=STRICT_OPTIONS)
class HuSCFOptions:
    kld_alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    clusters: Union[Literal["auto"], int, None] = None
    """``None``: the number of domains; ``auto``: chosen by silhouette; N: fixed."""
    warmup_rounds: int = Field(default=2, ge=0)
    cluster_feature: Literal["covariance", "correlation", "mean"] = "covariance"
    """What clusters are formed on: channel covariances (or correlations) of the D-middle output,
    robust to which labels a client holds, or its batch mean (the paper's literal choice)."""
    cut_centering: bool = True

    @field_validator("clusters")
    @classmethod
    def _positive_clusters(cls, clusters: Union[str, int, None]) -> Union[str, int, None]:
        if isinstance(clusters, bool) or (isinstance(clusters, int) and clusters < 1):
            raise ValueError("clusters must be >= 1, 'auto' or omitted")
        return clusters


class HuSCF(Strategy):
    name = "huscf"
    Options = HuSCFOptions
    summary = "heterogeneous cuts; clusters from D-middle features, KLD weights in-cluster and globally"
    use_clusters: ClassVar[bool] = True
    use_kld: ClassVar[bool] = True

    def bind(self, facts: RunFacts) -> None:
        super().bind(facts)
        options: HuSCFOptions = self.options
        clusters = options.clusters if options.clusters is not None else self.num_domains
        self._aggregation = ClusteredKLD(self.name, options.kld_alpha, clusters, options.warmup_rounds, self.seed,
                                         options.cut_centering, options.cluster_feature,
                                         use_clusters=self.use_clusters, use_kld=self.use_kld)

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        return self._aggregation.aggregate(inputs)


class HuSCFNoKLD(HuSCF):
    name = "huscf-no-kld"
    summary = "ablation: HuSCF's clustering with size weights n_i / sum n instead of KLD weights"
    use_kld = False


class HuSCFNoCluster(HuSCF):
    name = "huscf-no-cluster"
    summary = "ablation: HuSCF's KLD weights with every client in one cluster"
    use_clusters = False
