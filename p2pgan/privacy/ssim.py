"""Image similarity: SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) and PSNR, for images in [-1, 1].

SSIM uses the paper's settings: an 11x11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03 and
the data range L of the images (2 for [-1, 1]); the map is averaged over the valid region (no
padding), per image. PSNR is ``10·log10(L² / MSE)`` per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DATA_RANGE = 2.0  # images live in [-1, 1]
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
PSNR_CAP_DB = 100.0  # identical images would give infinity


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise ValueError(f"expected images [N, H, W] or [N, C, H, W], got {tuple(x.shape)}")
    return x


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """SSIM per image ``[N]`` between two batches of the same shape (channels averaged)."""
    x, y = _as_batch(x), _as_batch(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    n, c, h, w = x.shape
    size = min(WINDOW, h, w)
    window = _gaussian_window(size, SIGMA)
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(n, c, -1).mean(dim=(1, 2))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """PSNR in dB per image ``[N]`` (capped at 100 dB for identical images)."""
    x, y = _as_batch(x), _as_batch(y)
    mse = ((x - y) ** 2).flatten(1).mean(dim=1)
    floor = data_range**2 / 10 ** (PSNR_CAP_DB / 10)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def mean_or_nan(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan
