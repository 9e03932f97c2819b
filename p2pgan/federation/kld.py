r"""KLD-based aggregation weights of HuSCF-GAN (docs/design.md §1.3, steps 2 and 3). Pure functions.

Notation: client *i* sends activations ``A_i`` of shape ``[B, C, H, W]`` (the server's D middle
output on the last real-data pass of the round).

1. **Distributions.** ``t_i = mean_b A_i[b]`` reshaped to ``[C, H·W]``;
   ``P_i[c, :] = softmax(t_i[c, :])`` — one distribution over the ``H·W`` positions per channel.
2. **Scores.** For client *i* in a set ``S`` (its cluster, or every client for the global score):

   .. math::  Q_i = \frac{1}{|S|-1} \sum_{j \in S, j \neq i} P_j

   .. math::  \mathrm{KLD}_i = \frac{1}{C} \sum_c \sum_h Q_i[c,h]\,
              \bigl(\log(Q_i[c,h] + \varepsilon) - \log(P_i[c,h] + \varepsilon)\bigr),
              \quad \varepsilon = 10^{-9}

   i.e. the mean over channels of ``KL(Q_i ‖ P_i)``: how far client *i* is from the rest of its set.
   A set of one has no "others"; its score is defined as 0.
3. **Weights.** With ``n_i`` the local dataset size and ``α = 1`` by default:

   .. math::  w_i = \frac{n_i \exp(-\alpha\,\mathrm{KLD}_i)}{\sum_{j \in S} n_j \exp(-\alpha\,\mathrm{KLD}_j)}

   A one-member set gets weight 1. With equal scores the weights reduce to ``n_i / Σ n_j``.

Everything is computed in float64 and the returned tensors are float64. Row order is always the
caller's order (pass clients in client-id order; nothing here depends on arrival order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

EPS = 1e-9


def client_distribution(activation: torch.Tensor) -> torch.Tensor:
    """``P_i`` for one client: batch mean of ``[B, C, H, W]`` → ``[C, H·W]`` → softmax over H·W.

    A ``[C, H, W]`` tensor is taken as an already-averaged batch.
    """
    a = torch.as_tensor(activation).detach().to("cpu", torch.float64)
    if a.dim() == 4:
        a = a.mean(dim=0)
    if a.dim() != 3:
        raise ValueError(f"expected an activation [B, C, H, W] (or [C, H, W]), got {tuple(a.shape)}")
    return torch.softmax(a.reshape(a.shape[0], -1), dim=1)


def client_distributions(activations: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Stack ``P_i`` for every client, in the mapping's iteration order: ``[n, C, H·W]``.

    All clients must share ``C, H, W`` (batch sizes may differ).
    """
    if not activations:
        raise ValueError("no activations given")
    ps = [client_distribution(a) for a in activations.values()]
    shapes = {tuple(p.shape) for p in ps}
    if len(shapes) != 1:
        raise ValueError(f"clients disagree on the activation shape: {sorted(shapes)}")
    return torch.stack(ps)


def kl_divergence(q: torch.Tensor, p: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``KL(q ‖ p)`` along the last axis with ``eps`` inside both logs."""
    return (q * (torch.log(q + eps) - torch.log(p + eps))).sum(dim=-1)


def kld_scores(P: torch.Tensor, members: Sequence[int] | None = None, eps: float = EPS) -> torch.Tensor:
    """``KLD_i`` for each row index in ``members`` (all rows if ``None``), in that order.

    ``P``: ``[n, C, H·W]`` from :func:`client_distributions`. ``Q_i`` is the mean of the other
    members' ``P_j``; ``KLD_i`` is the channel mean of ``KL(Q_i ‖ P_i)``. One member → ``[0.]``.
    """
    P = torch.as_tensor(P).to(torch.float64)
    if P.dim() != 3:
        raise ValueError(f"expected P shaped [n, C, H*W], got {tuple(P.shape)}")
    idx = list(range(P.shape[0])) if members is None else [int(m) for m in members]
    if len(set(idx)) != len(idx):
        raise ValueError(f"duplicate members: {idx}")
    if not idx:
        return torch.zeros(0, dtype=torch.float64)
    S = P[idx]  # [m, C, HW]
    m = S.shape[0]
    if m == 1:
        return torch.zeros(1, dtype=torch.float64)
    total = S.sum(dim=0, keepdim=True)
    Q = (total - S) / (m - 1)  # leave-one-out mean of the others
    return kl_divergence(Q, S, eps).mean(dim=1)


def kld_weights(sizes: Sequence[float] | torch.Tensor, klds: Sequence[float] | torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``w_i = n_i·exp(−α·KLD_i) / Σ_j n_j·exp(−α·KLD_j)``; a single member gets ``[1.]``.

    Evaluated in log space (``log n_i − α·KLD_i`` minus its max) so large scores cannot
    underflow every weight to zero. Sizes must be positive.
    """
    n = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1)
    k = torch.as_tensor(klds, dtype=torch.float64).reshape(-1)
    if n.shape != k.shape:
        raise ValueError(f"{n.numel()} sizes but {k.numel()} KLD scores")
    if n.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    if n.numel() == 1:
        return torch.ones(1, dtype=torch.float64)
    if (n <= 0).any():
        raise ValueError("dataset sizes must be positive")
    logits = torch.log(n) - alpha * k
    return torch.softmax(logits, dim=0)


def client_weights(
    activations: Mapping[str, torch.Tensor],
    sizes: Mapping[str, float],
    clusters: Mapping[str, int] | None = None,
    alpha: float = 1.0,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]:
    """Convenience wrapper for a whole round, keyed by client id.

    Returns ``(cluster_weights, global_weights, cluster_klds, global_klds)``. Cluster weights sum
    to 1 within each cluster (all clients form one cluster when ``clusters`` is ``None``); global
    weights sum to 1 over every client. Clients are processed in the order of ``activations``.
    """
    ids = list(activations)
    P = client_distributions(activations)
    n = [float(sizes[c]) for c in ids]
    g_kld = kld_scores(P)
    g_w = kld_weights(n, g_kld, alpha)
    labels = {c: 0 for c in ids} if clusters is None else {c: int(clusters[c]) for c in ids}
    c_w: dict[str, float] = {}
    c_kld: dict[str, float] = {}
    for lab in sorted(set(labels.values())):
        members = [i for i, c in enumerate(ids) if labels[c] == lab]
        k = kld_scores(P, members)
        w = kld_weights([n[i] for i in members], k, alpha)
        for pos, i in enumerate(members):
            c_w[ids[i]] = float(w[pos])
            c_kld[ids[i]] = float(k[pos])
    return (
        {c: c_w[c] for c in ids},
        {c: float(g_w[i]) for i, c in enumerate(ids)},
        {c: c_kld[c] for c in ids},
        {c: float(g_kld[i]) for i, c in enumerate(ids)},
    )
