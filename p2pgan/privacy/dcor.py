"""Distance correlation (Székely, Rizzo & Bakirov 2007), in float64.

``dCor(X, Y)`` is 0 iff X and Y are independent (in the population) and 1 when Y is a similarity
transform of X (rotation, scaling, shift). It sees non-linear dependence that Pearson's r misses.

Two estimators over the sample distance matrices ``a_kl = |x_k - x_l|``, ``b_kl = |y_k - y_l|``:

* :func:`distance_correlation` — the original V-statistic with double-centred matrices
  ``A = a - row mean - column mean + grand mean``; ``dCov² = mean(A * B)``. It is biased upwards:
  for independent high-dimensional vectors it tends to 1 (Székely & Rizzo 2013), so it must not
  be read as leakage for wide activations.
* :func:`bias_corrected_distance_correlation` — the U-centred estimator (Székely & Rizzo 2014,
  "Partial distance correlation with methods for dissimilarities"); ≈ 0 for independent samples
  in any dimension, exactly 1 for identical ones. The audit reports this one.

Both are O(n²) in time and memory; callers cap n (:func:`capped`).
"""

from __future__ import annotations

import math

import torch


def _distances(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def _double_centred(a: torch.Tensor) -> torch.Tensor:
    return a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()


def _u_centred(a: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    rows = a.sum(dim=1, keepdim=True) / (n - 2)
    cols = a.sum(dim=0, keepdim=True) / (n - 2)
    total = a.sum() / ((n - 1) * (n - 2))
    out = a - rows - cols + total
    out.fill_diagonal_(0.0)
    return out


def _check(x: torch.Tensor, y: torch.Tensor, minimum: int) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < minimum:
        raise ValueError(f"need at least {minimum} samples, got {x.shape[0]}")


def _ratio(xy: float, xx: float, yy: float) -> float:
    if xx <= 0.0 or yy <= 0.0:
        return 0.0  # a constant sample carries no information about the other
    value = xy / math.sqrt(xx * yy)
    return math.copysign(math.sqrt(abs(value)), value)


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """The V-statistic dCor of samples ``x`` [n, ...] and ``y`` [n, ...], in [0, 1]."""
    _check(x, y, 2)
    a, b = _double_centred(_distances(x)), _double_centred(_distances(y))
    return _ratio(float((a * b).mean()), float((a * a).mean()), float((b * b).mean()))


def bias_corrected_distance_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """The U-centred dCor (signed square root of the unbiased dCor²; may be slightly < 0)."""
    _check(x, y, 4)
    a, b = _u_centred(_distances(x)), _u_centred(_distances(y))
    return _ratio(float((a * b).sum()), float((a * a).sum()), float((b * b).sum()))


def capped(n: int, cap: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most ``cap`` of ``n`` samples, drawn without replacement."""
    if n <= cap:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:cap].sort().values
