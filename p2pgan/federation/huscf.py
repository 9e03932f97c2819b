"""HuSCF-GAN's clustered, KLD-weighted federation (docs/design.md §1.3) and its two ablations.

At the end of every round the server holds, for each client, the output of its always-shared D
middle block from the round's last real-data D pass (``FederationInput.features``). From those:

1. **Clusters** (after ``warmup_rounds`` rounds; before that everyone is in one cluster): KMeans
   (``n_init=10``, ``random_state=seed``) with ``k`` = the scenario's ``clusters`` (default: the
   number of domains) or ``"auto"`` (silhouette), over one feature vector per client built from
   that activation ``[B, C, H, W]``:

   * ``cluster_feature: covariance`` (default): the channel covariance over all samples and
     positions (upper triangle) — second-order "style" statistics of the domain;
   * ``cluster_feature: correlation``: the same, normalised to correlations;
   * ``cluster_feature: mean``: the batch mean of the flattened activation, docs/design.md §1.3 literally.

   Why not the batch mean by default: D's head consumes the label (a learned label plane), so the
   batch mean moves with *which classes a client holds*. On non-IID partitions, clients that lack
   the same labels then look alike across domains, and KMeans groups them by label set rather
   than by domain. Measured on 54 round-end snapshots of 8 non-IID runs with mixed cuts (seven
   MNIST/Fashion-MNIST runs of 6–8 clients, one four-domain run of 12 clients), the mean feature
   recovered the domains with mean ARI 0.64 (perfectly in 59% of the snapshots), the correlation
   and covariance features with 0.97 (94%); on the four-domain run alone 0.48, 0.85 and 0.93.
   The KLD scores below still use the batch mean, exactly as specified.

   Cut placement (docs/design.md §4.5 pitfall): the only cut bit that changes what reaches the D middle is
   ``d_head`` (whether D's movable head block ran on the client, normalising over its own batch,
   or batched on the server). When both ``d_head`` groups have at least two members *and* the
   features' dominant two-way KMeans split matches the groups (ARI ≥ 0.5: the features are
   cut-driven), each group's mean feature is subtracted from its members before clustering.
   Centring unconditionally costs accuracy when it is not needed (a group's mean then depends on
   its domain mix: four-domain ARI 0.93 → 0.84 above); in the runs above it never triggered,
   while on synthetic cut-dominated features it recovers the domains (tests/test_federation.py).
   Residual effect seen: in scenarios/multidomain.yaml with searched cuts only two of 12 clients
   offload D's head block (``d_head=0``); they were intermittent outliers in rounds 3–9 (ARI
   0.64–1.0 per round) before the clusters settled at ARI 1.0 from round 10 on. Centring a
   group of two would mirror its members around the origin, so it is (rightly) not applied.
   The features are then standardised per dimension.
2. **KLD scores and weights** (:mod:`p2pgan.federation.kld`): ``w_i`` within the client's cluster,
   ``g_i`` over all clients.
3. **Aggregation**: for each cluster and each block of the whole G and D, ``Σ w_i·θ_i`` with
   ``θ_i`` the client's own copy where it holds the block, else the server's copy. Every client
   loads its cluster's average of the blocks it holds; the server's shared blocks become
   ``Σ g_i·θ_i`` over all clients. Float buffers (BatchNorm running statistics) are averaged the
   same way. The parameters travel as PARAMS/AGGREGATE messages through the transport, so their
   bytes are counted by the latency model.

Ablations: ``huscf-no-kld`` keeps the clustering but uses size weights ``n_i / Σ n`` (in the
cluster and globally); ``huscf-no-cluster`` keeps KLD weights but one cluster for everyone.

``FederationResult.details`` (written to ``rounds.jsonl``) holds the phase, k, the feature, the
clusters' members, the weights and the KLD scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from p2pgan.federation.base import average_cluster, distribute, size_weights
from p2pgan.federation.clustering import cluster_clients, natural_key
from p2pgan.federation.kld import client_weights
from p2pgan.protocol.federation import FederationInput, FederationResult

CUT_DRIVEN_ARI = 0.5
"""Centre features per cut group only when a two-way KMeans split matches the groups this well."""

# Position of the d_head bit in ClientCut.as_tuple() = (g_head, g_tail, d_head, d_tail).
D_HEAD_BIT = 2


def cut_groups_for_features(inputs: FederationInput, ids: list[str], min_group: int = 2) -> dict[str, int] | None:
    """The ``d_head`` bit per client when centring by it is meaningful, else ``None``.

    Centring needs at least two groups, each with ``min_group`` members or more (a group of one
    would be centred onto the origin and lose its domain signal).
    """
    groups = {c: int(inputs.updates[c].cut[D_HEAD_BIT]) if len(inputs.updates[c].cut) > D_HEAD_BIT else 0
              for c in ids}
    sizes: dict[int, int] = {}
    for g in groups.values():
        sizes[g] = sizes.get(g, 0) + 1
    if len(sizes) < 2 or min(sizes.values()) < min_group:
        return None
    return groups


CLUSTER_FEATURES = ("covariance", "correlation", "mean")


def _channels_by_samples(activation: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(activation).detach().to("cpu", torch.float64)
    if a.dim() != 4:
        raise ValueError(f"expected an activation [B, C, H, W], got {tuple(a.shape)}")
    x = a.transpose(0, 1).reshape(a.shape[1], -1)  # [C, B·H·W]
    return x - x.mean(dim=1, keepdim=True)


def covariance_feature(activation: torch.Tensor) -> torch.Tensor:
    """Label-robust clustering feature: the channel covariance of ``[B, C, H, W]``.

    Channels are compared over every sample and position (``C × C``, like the Gram matrices of
    style transfer: a domain's texture, not which classes the batch happens to hold); the upper
    triangle with the diagonal is returned, ``C·(C+1)/2`` values in float64.
    """
    x = _channels_by_samples(activation)
    cov = x @ x.T / x.shape[1]
    rows, cols = torch.triu_indices(cov.shape[0], cov.shape[1])
    return cov[rows, cols]


def correlation_feature(activation: torch.Tensor) -> torch.Tensor:
    """The channel correlation matrix of ``[B, C, H, W]`` (strict upper triangle, ``C·(C−1)/2``
    values); scale-free. A constant channel correlates 0 with everything."""
    x = _channels_by_samples(activation)
    norms = x.norm(dim=1, keepdim=True)
    x = x / torch.where(norms > 0, norms, torch.ones_like(norms))
    corr = x @ x.T
    rows, cols = torch.triu_indices(corr.shape[0], corr.shape[1], offset=1)
    return corr[rows, cols]


def clustering_features(features: Mapping[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """What KMeans sees per client: the channel covariance (default), correlation, or the batch
    mean of the activation (``mean``: docs/design.md §1.3 literally)."""
    if kind == "mean":
        return dict(features)
    if kind == "covariance":
        return {c: covariance_feature(a) for c, a in features.items()}
    if kind == "correlation":
        return {c: correlation_feature(a) for c, a in features.items()}
    raise ValueError(f"unknown cluster feature {kind!r} (expected one of {', '.join(CLUSTER_FEATURES)})")


def cut_driven(features: Mapping[str, torch.Tensor], groups: Mapping[str, int], seed: int,
               threshold: float = CUT_DRIVEN_ARI) -> bool:
    """Whether the features' dominant two-way split is the ``d_head`` split (the docs/design.md §4.5 pitfall):
    KMeans with k=2 agrees with the cut groups at adjusted Rand index ``threshold`` or more."""
    from sklearn.metrics import adjusted_rand_score

    two = cluster_clients(features, 2, seed)
    ids = sorted(two)
    return adjusted_rand_score([groups[c] for c in ids], [two[c] for c in ids]) >= threshold


class ClusteredKLD:
    """HuSCF's aggregation: optional clustering, KLD or size weights, per-cluster averaging.

    ``use_clusters=False`` is the one-cluster ablation, ``use_kld=False`` the size-weight one.
    """

    def __init__(self, name: str, kld_alpha: float = 1.0, clusters: int | Literal["auto"] | None = None,
                 warmup_rounds: int = 2, seed: int = 0, cut_centering: bool = True,
                 cluster_feature: str = "covariance", use_clusters: bool = True, use_kld: bool = True) -> None:
        self.name = name
        self.use_clusters = use_clusters
        self.use_kld = use_kld
        self.kld_alpha = float(kld_alpha)
        self.k = clusters
        self.warmup_rounds = int(warmup_rounds)
        self.seed = int(seed)
        self.cut_centering = cut_centering
        if cluster_feature not in CLUSTER_FEATURES:
            raise ValueError(f"unknown cluster feature {cluster_feature!r}")
        self.cluster_feature = cluster_feature

    def aggregate(self, inputs: FederationInput) -> FederationResult:
        ids = list(inputs.updates)
        details: dict[str, Any] = {"strategy": self.name}
        features = {c: inputs.features[c] for c in ids if c in inputs.features}
        have_features = bool(ids) and len(features) == len(ids)
        if not have_features:
            details["note"] = "no D-middle features for every client: one cluster, size weights"

        clusters = self._clusters(inputs, ids, features if have_features else {}, details)
        use_kld = self.use_kld and have_features
        if use_kld:
            c_w, g_w, c_kld, g_kld = client_weights(features, {c: inputs.updates[c].num_examples for c in ids},
                                                    clusters, self.kld_alpha)
            details["kld"] = _rounded(c_kld)
            details["global_kld"] = _rounded(g_kld)
        else:
            c_w = {}
            for label in sorted(set(clusters.values())):
                members = [c for c in ids if clusters[c] == label]
                c_w.update(size_weights(inputs, members))
            g_w = size_weights(inputs, ids)
        details["weights"] = _rounded(c_w)
        details["global_weights"] = _rounded(g_w)

        cluster_models = {}
        for label in sorted(set(clusters.values())):
            members = [c for c in ids if clusters[c] == label]
            cluster_models[label] = average_cluster(inputs, members, c_w)
        server_model = _average_server_blocks(inputs, ids, g_w)
        result = distribute(inputs, clusters, cluster_models, server_model)
        result.details.update(details)
        return result

    def _clusters(self, inputs: FederationInput, ids: list[str], features: Mapping[str, Any],
                  details: dict[str, Any]) -> dict[str, int]:
        if not self.use_clusters or not features:
            details["phase"] = "single"
            return {c: 0 for c in ids}
        if inputs.round <= self.warmup_rounds:
            details["phase"] = "warmup"
            return {c: 0 for c in ids}
        k = self.k if self.k is not None else inputs.num_domains
        vectors = clustering_features(features, self.cluster_feature)
        groups = cut_groups_for_features(inputs, ids) if self.cut_centering else None
        if groups is not None and not cut_driven(vectors, groups, self.seed):
            groups = None
        labels = cluster_clients(vectors, k, self.seed, cut_groups=groups)
        details["phase"] = "clustered"
        details["k"] = k
        details["feature"] = self.cluster_feature
        details["cut_centering"] = groups is not None
        members: dict[int, list[str]] = {}
        for c in sorted(labels, key=natural_key):
            members.setdefault(labels[c], []).append(c)
        details["members"] = {str(k_): v for k_, v in sorted(members.items())}
        return {c: labels[c] for c in ids}


def _average_server_blocks(inputs: FederationInput, ids: list[str], weights: Mapping[str, float]) -> dict:
    """The server's shared blocks: ``Σ g_i·θ_i`` over every client (own or server copy)."""
    from p2pgan.federation.base import weighted_average

    return {
        block: weighted_average([inputs.layer_copy(c, block) for c in ids], [weights[c] for c in ids])
        for block in inputs.server_blocks
    }


def _rounded(values: Mapping[str, float], digits: int = 6) -> dict[str, float]:
    return {c: round(float(v), digits) for c, v in values.items()}
