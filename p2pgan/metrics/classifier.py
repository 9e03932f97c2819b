"""The small evaluation CNN of docs/design.md §1.5 and a disk cache for its trained weights.

Architecture (``ARCH_VERSION``): ``conv(32, 3x3, pad 1) -> ReLU -> maxpool 2 -> conv(64, 3x3,
pad 1) -> ReLU -> maxpool 2 -> flatten -> fc128 -> ReLU -> fc(num_classes)``. The fc128 output
(after its ReLU) is the penultimate feature used for the Fréchet distance.

Training is deterministic given ``seed``: weights are initialised inside
:func:`torch.random.fork_rng` (so the global RNG is neither read nor advanced) and mini-batch order
comes from a private :class:`torch.Generator`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Bump when the architecture or the training recipe changes: it is part of the cache key.
ARCH_VERSION = "cnn-v1"

#: Learning rate of the Adam optimiser used for every classifier.
LEARNING_RATE = 1e-3


def as_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return float32 images in [-1, 1] shaped ``[N, C, H, W]``.

    uint8 input (``[N, H, W]`` or ``[N, C, H, W]``, values 0..255) is mapped with
    ``x / 127.5 - 1`` (the same mapping as :func:`p2pgan.data.to_model_input`); float input is
    assumed to be in [-1, 1] already and only gets a channel axis if it lacks one.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 127.5 - 1.0
    else:
        x = x.to(torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images shaped [N,H,W] or [N,C,H,W], got {tuple(x.shape)}")
    return x


class DomainClassifier(nn.Module):
    """conv32-3 → pool → conv64-3 → pool → fc128 → fc10 (docs/design.md §1.5)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        side = image_size // 4
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the (ReLU'd) fc128 output, ``[N, 128]``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))

    # -- batched inference helpers (eval mode, no grad; the module's mode is restored) --------
    @torch.no_grad()
    def _batched(self, fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            x = as_model_input(images)
            outs = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            if not outs:
                return torch.empty(0)
            return torch.cat(outs)
        finally:
            self.train(was_training)

    def penultimate(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Penultimate (fc128) features of ``images`` computed in batches: ``[N, 128]``."""
        return self._batched(self.features, images, batch_size)

    def logits(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return self._batched(self.forward, images, batch_size)

    def probs(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class probabilities p(y|x), ``[N, num_classes]``."""
        return torch.softmax(self.logits(images, batch_size), dim=1)

    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return self.logits(images, batch_size).argmax(dim=1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
        """Top-1 accuracy as a fraction in [0, 1]."""
        pred = self.predict(images, batch_size)
        return float((pred == torch.as_tensor(labels)).float().mean())


def new_classifier(
    seed: int, num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> DomainClassifier:
    """A freshly initialised classifier whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DomainClassifier(num_classes, in_channels, image_size)


def train_classifier(
    images_float: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    num_classes: int = 10,
    lr: float = LEARNING_RATE,
) -> DomainClassifier:
    """Train a :class:`DomainClassifier` with Adam + cross-entropy; deterministic given ``seed``.

    ``images_float``: ``[N, C, H, W]`` (or ``[N, H, W]``) in [-1, 1] (uint8 is converted too).
    Returns the model in eval mode.
    """
    x = as_model_input(images_float)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot train a classifier on zero images")
    model = new_classifier(seed, num_classes, x.shape[1], x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Disk cache
# ---------------------------------------------------------------------------------------------


def classifier_cache_key(
    domain: str,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    seed: int,
    epochs: int,
    batch_size: int,
    num_classes: int = 10,
) -> str:
    """SHA-256 over (architecture version, recipe, domain, real train bytes, labels, seed, epochs)."""
    h = hashlib.sha256()
    h.update(f"{ARCH_VERSION}|lr={LEARNING_RATE}|{domain}|seed={seed}|epochs={epochs}".encode())
    h.update(f"|bs={batch_size}|classes={num_classes}|".encode())
    img = torch.as_tensor(images).contiguous()
    lab = torch.as_tensor(labels).to(torch.int64).contiguous()
    h.update(f"{img.dtype}|{tuple(img.shape)}|{tuple(lab.shape)}|".encode())
    h.update(img.numpy().tobytes())
    h.update(lab.numpy().tobytes())
    return h.hexdigest()


class ClassifierCache:
    """Trained domain classifiers on disk, keyed by :func:`classifier_cache_key`.

    Files are ``<cache_dir>/<domain>-<key[:24]>.pt`` holding a ``state_dict`` written with
    :func:`torch.save` (atomically, via a temporary file) and read back with
    ``torch.load(..., weights_only=True)``: only local files this cache wrote are ever loaded.
    ``hits``/``trained`` count cache hits and trainings (for tests and logs).
    """

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.trained = 0

    def path_for(self, domain: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", domain)
        return self.cache_dir / f"{safe}-{key[:24]}.pt"

    def get_or_train(
        self,
        domain: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        epochs: int,
        batch_size: int = 128,
        seed: int = 0,
        num_classes: int = 10,
    ) -> DomainClassifier:
        """Load the cached classifier for this exact data/recipe, or train and store it.

        ``images`` are the real train images (uint8 or float in [-1, 1]); the key hashes them as
        given, so pass the same representation every time.
        """
        key = classifier_cache_key(domain, images, labels, seed, epochs, batch_size, num_classes)
        path = self.path_for(domain, key)
        x = as_model_input(images)
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                model = DomainClassifier(num_classes, x.shape[1], x.shape[-1])
                model.load_state_dict(state)
                model.eval()
                self.hits += 1
                return model
            except Exception:  # corrupt/incompatible file: retrain and overwrite
                pass
        model = train_classifier(x, labels, epochs, batch_size, seed, num_classes)
        self.trained += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return model
