"""The conditional GAN of docs/design.md §1.1 as ordered lists of blocks.

Nothing here knows about clients or servers: a network is a list of named blocks plus a
:class:`CutLayout` saying how many blocks at each end are pinned to the client and how many may
move. The segmenter (:mod:`p2pgan.model.segments`) turns a cut into segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from p2pgan.model.recompute import normalize_activate


@dataclass(frozen=True)
class ModelSpec:
    """Size of the cGAN. ``width`` scales every hidden channel count."""

    width: float = 1.0
    z_dim: int = 100
    num_classes: int = 10
    image_channels: int = 1
    image_size: int = 28

    def channels(self, base: int) -> int:
        return max(1, int(round(base * self.width)))

    @property
    def base_size(self) -> int:
        """Spatial size of G's first feature map (two stride-2 upsamplings reach the image)."""
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {self.image_size}")
        return self.image_size // 4


@dataclass(frozen=True)
class CutLayout:
    """How the blocks of one network may be split: pinned and movable counts at each end."""

    fixed_head: int
    movable_head: int
    movable_tail: int
    fixed_tail: int


class Block(nn.Module):
    """One ``layer -> norm -> activation`` unit. Label-consuming blocks set ``needs_labels``.

    Activations after a BatchNorm run in place on its output, which nothing else reads (BatchNorm's
    backward needs its input): the same numbers, one tensor per block less. A LeakyReLU out of
    place keeps its input for backward on top of its output (the next layer's saved input), so in
    place D's graphs are a third smaller; a ReLU saves its output either way, and in place skips
    one allocation per block. ``norm -> activation`` goes through
    :func:`~p2pgan.model.recompute.normalize_activate`, so a segment may keep its output as the
    recipe that rebuilds it.
    """

    needs_labels = False

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D401
        raise NotImplementedError


class SequentialBlock(Block):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(x)


class LabelledProjection(Block):
    """G's head: label embedding concatenated to z, projected to the first feature map."""

    needs_labels = True

    def __init__(self, spec: ModelSpec, out_channels: int) -> None:
        super().__init__()
        self.out_shape = (out_channels, spec.base_size, spec.base_size)
        features = out_channels * spec.base_size**2
        self.embed = nn.Embedding(spec.num_classes, spec.num_classes)
        self.linear = nn.Linear(spec.z_dim + spec.num_classes, features)
        self.norm = nn.BatchNorm1d(features)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.cat([x, self.embed(labels)], dim=1)
        h = normalize_activate(self.linear(h), self.norm, self.act)
        return h.view(h.shape[0], *self.out_shape)


class LabelChannelConv(Block):
    """D's head: the label as an extra image channel, then a strided conv."""

    needs_labels = True

    def __init__(self, spec: ModelSpec, out_channels: int) -> None:
        super().__init__()
        self.image_shape = (1, spec.image_size, spec.image_size)
        self.embed = nn.Embedding(spec.num_classes, spec.image_size**2)
        self.conv = nn.Conv2d(spec.image_channels + 1, out_channels, 4, 2, 1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        label_plane = self.embed(labels).view(x.shape[0], *self.image_shape)
        return normalize_activate(self.conv(torch.cat([x, label_plane], dim=1)), self.norm, self.act)


class Classifier(Block):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.linear(x.flatten(1)))


class ConvNormBlock(SequentialBlock):
    """``conv -> BatchNorm -> activation`` (``body.0``, ``body.1``, ``body.2``)."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        conv, norm, act = self.body
        return normalize_activate(conv(x), norm, act)


def _up(cin: int, cout: int, kernel: int, stride: int) -> ConvNormBlock:
    pad = 1
    return ConvNormBlock(nn.ConvTranspose2d(cin, cout, kernel, stride, pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _down(cin: int, cout: int, kernel: int, stride: int) -> ConvNormBlock:
    return ConvNormBlock(nn.Conv2d(cin, cout, kernel, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


# Both networks: one pinned block at each end, one movable block at each end, the rest server.
REFERENCE_LAYOUT = CutLayout(fixed_head=1, movable_head=1, movable_tail=1, fixed_tail=1)


@dataclass(frozen=True)
class NetworkDef:
    name: str  # "G" or "D"
    block_names: tuple[str, ...]
    layout: CutLayout


GENERATOR = NetworkDef("G", ("g0", "g1", "g2", "g3", "g4"), REFERENCE_LAYOUT)
DISCRIMINATOR = NetworkDef("D", ("d0", "d1", "d2", "d3", "d4"), REFERENCE_LAYOUT)
NETWORKS = (GENERATOR, DISCRIMINATOR)


def build_generator_blocks(spec: ModelSpec) -> dict[str, Block]:
    c256, c128, c64 = spec.channels(256), spec.channels(128), spec.channels(64)
    return {
        "g0": LabelledProjection(spec, c256),
        "g1": _up(c256, c128, 4, 2),
        "g2": _up(c128, c128, 3, 1),
        "g3": _up(c128, c64, 4, 2),
        "g4": SequentialBlock(nn.ConvTranspose2d(c64, spec.image_channels, 3, 1, 1), nn.Tanh()),
    }


def build_discriminator_blocks(spec: ModelSpec) -> dict[str, Block]:
    c64, c128, c256 = spec.channels(64), spec.channels(128), spec.channels(256)
    final = (spec.image_size // 4 + 2 - 4) // 2 + 1  # spatial size after d3's stride-2 conv
    return {
        "d0": LabelChannelConv(spec, c64),
        "d1": _down(c64, c128, 4, 2),
        "d2": _down(c128, c128, 3, 1),
        "d3": _down(c128, c256, 4, 2),
        "d4": Classifier(c256 * final * final),
    }


def _init_dcgan(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


CHANNELS_LAST_BLOCKS: frozenset[str] = frozenset({"g1", "g2", "g3", "g4", "d0", "d1", "d2", "d3"})
"""The blocks built in ``channels_last``: every convolution, the format the CPU runs fastest.

Measured on the 2-core development machine, one thread, iterations interleaved with the
contiguous variant (``tools/bench_step.py --interleave``, docs/design.md §4.3): a cohort
iteration 1.18x faster at 12 clients, width 0.25, batch 32 and 1.09x at 16 clients, width 1,
batch 64 than in the contiguous format. The format is part of the block, not of an
engine: a convolution whose weight is ``channels_last`` runs the ``channels_last`` kernel
whatever the format of its input or of its output's gradient (the same bits for a tensor that
arrived contiguous over a wire and one passed in memory), so every engine, transport and the
tests' single-process references run the same kernels and stay equal bit for bit. Another
device re-places blocks in its own formats (:func:`p2pgan.engine.execution.place_blocks`)."""


def build_initial_blocks(spec: ModelSpec, seed: int,
                         channels_last: frozenset[str] = CHANNELS_LAST_BLOCKS) -> dict[str, Block]:
    """Every block of G and D, initialised from ``seed`` alone, the ``channels_last`` ones in that
    memory format (the values do not depend on it).

    Every node calls this with the scenario seed and keeps the blocks it owns, so all copies
    start equal without any node sending weights, and the global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks = {**build_generator_blocks(spec), **build_discriminator_blocks(spec)}
        for block in blocks.values():
            block.apply(_init_dcgan)
    for name in channels_last:
        blocks[name].to(memory_format=torch.channels_last)
    return blocks


def network_of(block_name: str) -> NetworkDef:
    for net in NETWORKS:
        if block_name in net.block_names:
            return net
    raise KeyError(block_name)
