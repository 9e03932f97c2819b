"""The curious server's two attacks, trained only on auxiliary data the clients do not hold.

The server knows every weight (see :mod:`p2pgan.privacy.observer`), so it can run a client's
blocks on its own labelled images and learn the way back:

* **inversion** — a small convolutional decoder maps a received tensor to the image it came from;
  it is scored by SSIM and PSNR on the clients' private images;
* **label inference** — a linear probe (softmax regression) maps a received tensor to the class;
  it is scored by accuracy against chance (the most frequent private class). The same probe
  trained on shuffled auxiliary labels is the control: it must land at chance, or the probe is
  reading something other than the tensor.

Inputs are standardised per feature with the auxiliary set's mean and spread (gradients are tiny
and activations are not; neither attack should depend on scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from p2pgan.privacy.ssim import psnr, ssim


@dataclass(frozen=True)
class Standardiser:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardiser":
        mean, std = x.mean(dim=0, keepdim=True), x.std(dim=0, keepdim=True)
        # A feature constant over the auxiliary set stays constant; do not blow it up.
        std = torch.where(std > 1e-12 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
        return cls(mean, std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class InversionDecoder(nn.Module):
    """Received tensor ``[C, H, W]`` -> image ``[channels, size, size]`` in [-1, 1].

    Convolutions at the tensor's own resolution first (keeping its channels), then bilinear
    upsampling to half and full image size with a convolution after each.
    """

    def __init__(self, in_channels: int, image_channels: int = 1, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        self.image_size = image_size
        self.lift = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.full = nn.Sequential(nn.Conv2d(width, width // 4, 3, padding=1), nn.BatchNorm2d(width // 4), nn.ReLU(),
                                  nn.Conv2d(width // 4, image_channels, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        h = self.mid(F.interpolate(h, size=(self.image_size // 2,) * 2, mode="bilinear", align_corners=False))
        return self.full(F.interpolate(h, size=(self.image_size,) * 2, mode="bilinear", align_corners=False))


def _seeded_init(module_factory, seed: int) -> nn.Module:
    """Build a module with weights drawn from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_factory()


def _fit(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn, epochs: int, generator: torch.Generator,
         lr: float, weight_decay: float = 0.0, batch_size: int = 64) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = x.shape[0]
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            optimiser.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), target[batch]).backward()
            optimiser.step()
    model.eval()


@dataclass(frozen=True)
class Inversion:
    ssim: float  # mean over the private images
    psnr: float  # dB, mean over the private images
    reconstructions: torch.Tensor  # [N, C, H, W] in [-1, 1]


def invert(aux_x: torch.Tensor, aux_images: torch.Tensor, private_x: torch.Tensor, private_images: torch.Tensor, *,
           epochs: int, seed: int) -> Inversion:
    """Train a decoder on (auxiliary tensor, auxiliary image) pairs; score it on the private ones."""
    scale = Standardiser.fit(aux_x)
    channels, size = aux_images.shape[1], aux_images.shape[-1]
    decoder = _seeded_init(lambda: InversionDecoder(aux_x.shape[1], channels, size), seed)
    generator = torch.Generator().manual_seed(seed)
    _fit(decoder, scale(aux_x), aux_images, F.mse_loss, epochs, generator, lr=2e-3)
    with torch.no_grad():
        recon = decoder(scale(private_x))
    return Inversion(float(ssim(recon, private_images).mean()), float(psnr(recon, private_images).mean()), recon)


def constant_guess(aux_images: torch.Tensor, private_images: torch.Tensor) -> tuple[float, float]:
    """(SSIM, PSNR) of guessing the auxiliary mean image for every private image: the floor."""
    guess = aux_images.mean(dim=0, keepdim=True).expand_as(private_images)
    return float(ssim(guess, private_images).mean()), float(psnr(guess, private_images).mean())


@dataclass(frozen=True)
class LabelInference:
    accuracy: float  # probe trained on true auxiliary labels, tested on the private labels
    shuffled_accuracy: float  # the control: same probe trained on shuffled auxiliary labels
    chance: float  # share of the most frequent private label


def chance_level(labels: torch.Tensor) -> float:
    return float(torch.bincount(labels).max()) / max(1, int(labels.numel()))


def _probe_accuracy(aux_x: torch.Tensor, aux_y: torch.Tensor, private_x: torch.Tensor, private_y: torch.Tensor,
                    num_classes: int, epochs: int, seed: int) -> float:
    probe = _seeded_init(lambda: nn.Linear(aux_x.shape[1], num_classes), seed)
    _fit(probe, aux_x, aux_y, F.cross_entropy, epochs, torch.Generator().manual_seed(seed), lr=1e-3, weight_decay=1e-4)
    with torch.no_grad():
        predicted = probe(private_x).argmax(dim=1)
    return float((predicted == private_y).float().mean())


def infer_labels(aux_x: torch.Tensor, aux_y: torch.Tensor, private_x: torch.Tensor, private_y: torch.Tensor, *,
                 num_classes: int, epochs: int, seed: int) -> LabelInference:
    """Linear probe on flattened, standardised tensors, with its shuffled-label control."""
    aux_flat, private_flat = aux_x.flatten(1), private_x.flatten(1)
    scale = Standardiser.fit(aux_flat)
    aux_flat, private_flat = scale(aux_flat), scale(private_flat)
    shuffled = aux_y[torch.randperm(aux_y.numel(), generator=torch.Generator().manual_seed(seed + 1))]
    return LabelInference(
        _probe_accuracy(aux_flat, aux_y, private_flat, private_y, num_classes, epochs, seed),
        _probe_accuracy(aux_flat, shuffled, private_flat, private_y, num_classes, epochs, seed),
        chance_level(private_y),
    )
