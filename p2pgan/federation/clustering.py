"""Client clustering of HuSCF-GAN (docs/design.md §1.3 step 1), made robust to cut placement (§4.5).

Feature of client *i*: ``f_i = mean_b flatten(A_i[b])`` where ``A_i`` is its activation at the
output of the server's D middle block, ``[B, C, H, W]`` (a 1-D tensor is taken as ``f_i``
itself). KMeans (``n_init=10``, fixed ``random_state``) groups the ``f_i``.

Pitfall (docs/design.md §4.5): with heterogeneous cuts, a client that runs D's movable head block locally
feeds the server different statistics than one that offloads it (different BatchNorm grouping,
different weights), so raw features can separate clients by *cut* rather than by *domain*.
Pre-processing, applied in this order, each optional:

1. ``normalize`` — scale each client's feature vector to unit L2 norm (removes per-client
   magnitude differences).
2. ``cut_groups`` — a group key per client (e.g. its cut tuple); each group's mean feature is
   subtracted from its members, removing an additive per-cut offset. This assumes every group
   mixes domains: a group holding one domain only is centred onto the origin and loses its
   domain signal. Groups with a single client are left as they are.
3. ``standardize`` (default on) — z-score every feature dimension across clients (constant
   dimensions become 0), so no single high-variance unit dominates the Euclidean distance.

Labels are canonical: clusters are numbered in the order of their smallest client id (natural
order, so ``client2`` < ``client10``), making results deterministic and comparable across runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Literal

import numpy as np
import torch

from p2pgan.ids import natural_key


def client_feature(activation: torch.Tensor) -> np.ndarray:
    """``f_i``: batch mean of the flattened activation (float64); 1-D input is returned as is."""
    a = torch.as_tensor(activation).detach().to("cpu", torch.float64)
    if a.dim() == 1:
        return a.numpy().copy()
    if a.dim() < 2:
        raise ValueError(f"expected an activation [B, ...], got shape {tuple(a.shape)}")
    return a.reshape(a.shape[0], -1).mean(dim=0).numpy()


def prepare_features(
    features: Mapping[str, torch.Tensor],
    *,
    standardize: bool = True,
    normalize: bool = False,
    cut_groups: Mapping[str, Hashable] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Client ids in natural order and their pre-processed feature matrix ``[n, D]``."""
    ids = sorted(features, key=natural_key)
    X = np.stack([client_feature(features[c]) for c in ids]) if ids else np.zeros((0, 0))
    if len(ids) and len({x.shape for x in X}) != 1:
        raise ValueError("clients disagree on the feature size")
    if normalize and len(ids):
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
    if cut_groups is not None and len(ids):
        missing = [c for c in ids if c not in cut_groups]
        if missing:
            raise ValueError(f"cut_groups lacks clients {missing}")
        groups: dict[Hashable, list[int]] = {}
        for row, c in enumerate(ids):
            groups.setdefault(cut_groups[c], []).append(row)
        X = X.copy()
        for rows in groups.values():
            if len(rows) > 1:
                X[rows] -= X[rows].mean(axis=0, keepdims=True)
    if standardize and len(ids) > 1:
        mu = X.mean(axis=0, keepdims=True)
        sd = X.std(axis=0, keepdims=True)
        X = np.where(sd > 1e-12 * (1.0 + np.abs(mu)), (X - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return ids, X


def canonical_labels(ids: list[str], raw: np.ndarray) -> dict[str, int]:
    """Renumber clusters by their smallest client id (``ids`` must be in natural order)."""
    mapping: dict[int, int] = {}
    out: dict[str, int] = {}
    for c, lab in zip(ids, raw):
        lab = int(lab)
        if lab not in mapping:
            mapping[lab] = len(mapping)
        out[c] = mapping[lab]
    return out


def _kmeans(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
    return km.labels_, float(km.inertia_)


def cluster_clients(
    features: Mapping[str, torch.Tensor],
    k: int | Literal["auto"],
    seed: int = 0,
    *,
    standardize: bool = True,
    normalize: bool = False,
    cut_groups: Mapping[str, Hashable] | None = None,
    max_auto_k: int = 8,
) -> dict[str, int]:
    """Cluster clients by their D-middle activations; returns ``{client_id: cluster}``.

    ``k``: number of clusters (the number of domains), clamped to the number of distinct
    feature vectors; ``"auto"`` picks k in ``2..min(max_auto_k, n-1)`` by the best silhouette
    score (ties → smaller k; fewer than 3 clients → one cluster). See the module docstring for
    ``standardize``, ``normalize`` and ``cut_groups``. The result is keyed in natural client-id
    order with canonical labels (cluster 0 holds the first client).
    """
    ids, X = prepare_features(features, standardize=standardize, normalize=normalize, cut_groups=cut_groups)
    n = len(ids)
    if n == 0:
        return {}
    distinct = len(np.unique(np.round(X, 12), axis=0))
    if k == "auto":
        hi = min(max_auto_k, n - 1, distinct)
        if hi < 2:
            return {c: 0 for c in ids}
        from sklearn.metrics import silhouette_score

        best: tuple[float, np.ndarray] | None = None
        for kk in range(2, hi + 1):
            labels, _ = _kmeans(X, kk, seed)
            if len(set(labels.tolist())) < 2:
                continue
            s = float(silhouette_score(X, labels))
            if best is None or s > best[0] + 1e-12:
                best = (s, labels)
        if best is None:
            return {c: 0 for c in ids}
        return canonical_labels(ids, best[1])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int or 'auto', got {k!r}")
    kk = min(k, n, distinct)
    if kk <= 1:
        return {c: 0 for c in ids}
    labels, _ = _kmeans(X, kk, seed)
    return canonical_labels(ids, labels)
