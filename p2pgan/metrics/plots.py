"""PNG outputs: generation score per round, and image grids of samples.

Plots use matplotlib's object API with the Agg canvas directly (no ``pyplot``), so nothing
touches matplotlib's global figure registry or backend choice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def plot_generation_scores(
    history: Mapping[str, Sequence[float] | Mapping[int, float]],
    path: str | os.PathLike[str],
    *,
    title: str = "Generation score per round",
    ylabel: str = "generation score",
) -> Path:
    """Line plot of a per-round score for each domain, written as PNG to ``path``.

    ``history[domain]`` is either a list (value of round 1, 2, ...) or a ``{round: value}``
    mapping (rounds may be sparse). Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for domain in sorted(history):
        series = history[domain]
        if isinstance(series, Mapping):
            rounds = sorted(series)
            values = [float(series[r]) for r in rounds]
        else:
            values = [float(v) for v in series]
            rounds = list(range(1, len(values) + 1))
        ax.plot(rounds, values, marker="o" if len(values) < 30 else None, label=str(domain))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if history:
        ax.legend(loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def image_grid(images: torch.Tensor | np.ndarray, nrow: int = 10, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images ``[N, C, H, W]`` / ``[N, H, W]`` in [-1, 1] (or uint8) into one uint8 array.

    Returns ``[H', W']`` for one channel, ``[H', W', 3]`` for three.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dtype == torch.uint8:
        arr = x.numpy()
    else:
        arr = ((x.to(torch.float32).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N,H,W] or [N,C,H,W] with C in (1,3), got {arr.shape}")
    n, c, h, w = arr.shape
    ncol = max(1, min(nrow, n))
    nrows = max(1, math.ceil(n / ncol))
    grid = np.full(
        (padding + nrows * (h + padding), padding + ncol * (w + padding), c), pad_value, dtype=np.uint8
    )
    for k in range(n):
        r, q = divmod(k, ncol)
        y0 = padding + r * (h + padding)
        x0 = padding + q * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = arr[k].transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike[str],
    nrow: int = 10,
    padding: int = 2,
    scale: int = 1,
) -> Path:
    """Write images in [-1, 1] as a PNG grid with ``nrow`` images per row (pillow).

    ``scale`` > 1 enlarges the grid with nearest-neighbour resampling. Returns the written path.
    """
    grid = image_grid(images, nrow=nrow, padding=padding)
    img = Image.fromarray(np.ascontiguousarray(grid))  # 2-D -> "L", [H,W,3] -> "RGB"
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out
