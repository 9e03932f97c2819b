"""What an honest-but-curious server receives from one client, per cut.

The server follows the protocol (docs/design.md §1.1) and keeps every tensor a client sends up:

* ``g_forward`` — the G-head activation (output of g0, or of g1 when ``g_head = 1``), computed from
  the client's noise and its *private conditioning labels*;
* ``d_fake`` / ``d_real`` — the D-head activation (output of d0, or of d1 when ``d_head = 1``) of
  the fake and of the **real** batch (with the label channel), and the gradient of the D loss with
  respect to the D-tail input (output of d3, or of d2 when ``d_tail = 1``);
* ``g_step`` — the same D-tail input gradient for the generator loss, and the gradient with
  respect to the G-tail input (output of g3, or of g2 when ``g_tail = 1``).

The G step also re-sends the D-head activation of the fake batch; in this snapshot (no optimizer
step between passes) it equals the ``d_fake`` one, so it is measured once. What the server sends
down it computed itself, so it adds nothing. The server also knows every weight: all nodes build
the initial blocks from the scenario seed, and client blocks travel to it for federated averaging.

Every tensor any cut could send is computed in one pass of the real blocks (each run as a
:class:`~p2pgan.model.segments.Segment`, in training mode, per batch, as on the client), and
:func:`received_keys` uses :func:`~p2pgan.model.segments.split_client` to pick the ones a given
cut sends. A block the server runs normalises over the client's batch alone here, not over every
client's concatenated batch: the server's view of one client, in isolation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, Block
from p2pgan.model.segments import ClientCut, Segment, split_client

PHASES = ("g_forward", "d_fake", "d_real", "g_step")


@dataclass(frozen=True, order=True)
class TensorKey:
    """One kind of tensor a client sends: in which phase, what it is, and at which block's output."""

    phase: str
    tensor: str  # g_head_activation | d_head_activation | d_tail_gradient | g_tail_gradient
    block: str  # the block whose output it is (activation) or whose output it is the gradient of

    @property
    def name(self) -> str:
        return f"{self.phase}/{self.tensor}@{self.block}"

    @property
    def from_real_images(self) -> bool:
        """Computed from the client's real images (so an inversion can aim at them)."""
        return self.phase == "d_real"


def received_keys(cut: ClientCut) -> tuple[TensorKey, ...]:
    """The tensors a client with ``cut`` sends up in one iteration, in protocol order."""
    split = split_client(cut)
    g, d = split.generator, split.discriminator
    g_head_out, g_tail_in = g.head[-1], g.server[-1]
    d_head_out, d_tail_in = d.head[-1], d.server[-1]
    return (
        TensorKey("g_forward", "g_head_activation", g_head_out),
        TensorKey("d_fake", "d_head_activation", d_head_out),
        TensorKey("d_fake", "d_tail_gradient", d_tail_in),
        TensorKey("d_real", "d_head_activation", d_head_out),
        TensorKey("d_real", "d_tail_gradient", d_tail_in),
        TensorKey("g_step", "d_tail_gradient", d_tail_in),
        TensorKey("g_step", "g_tail_gradient", g_tail_in),
    )


def keys_for(cuts: Iterable[ClientCut]) -> tuple[TensorKey, ...]:
    """Every distinct tensor the given cuts send, sorted."""
    return tuple(sorted({key for cut in cuts for key in received_keys(cut)}))


@dataclass(frozen=True)
class Observation:
    """What the server holds after one pass over ``images``: tensors ``[N, ...]`` per key."""

    images: torch.Tensor  # [N, 1, H, W] in [-1, 1]
    labels: torch.Tensor  # [N] int64
    tensors: dict[TensorKey, torch.Tensor]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _chain(blocks: Mapping[str, Block], names: tuple[str, ...], x: torch.Tensor,
           labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``names`` in order, one segment per block, keeping every block's output."""
    outputs = {}
    for name in names:
        x = Segment({name: blocks[name]})(x, labels)
        outputs[name] = x
    return outputs


def _gradients(loss: torch.Tensor, outputs: Mapping[str, torch.Tensor],
               wanted: Iterable[str]) -> dict[str, torch.Tensor]:
    names = [n for n in wanted if n in outputs]
    grads = torch.autograd.grad(loss, [outputs[n] for n in names], retain_graph=True)
    return dict(zip(names, grads))


def _observe_batch(blocks: Mapping[str, Block], images: torch.Tensor, labels: torch.Tensor, z: torch.Tensor,
                   keys: tuple[TensorKey, ...]) -> dict[TensorKey, torch.Tensor]:
    g_names, d_names = GENERATOR.block_names, DISCRIMINATOR.block_names
    g_out = _chain(blocks, g_names, z, labels)
    fake = g_out[g_names[-1]]
    passes = {
        # phase: (BCE target of D's score, every D block's output on that pass's input)
        "d_fake": (0.0, _chain(blocks, d_names, fake.detach(), labels)),
        "d_real": (1.0, _chain(blocks, d_names, images, labels)),
        "g_step": (1.0, _chain(blocks, d_names, fake, labels)),
    }
    found: dict[TensorKey, torch.Tensor] = {}
    for key in keys:
        if key.tensor == "g_head_activation":
            found[key] = g_out[key.block]
        elif key.tensor == "d_head_activation":
            found[key] = passes[key.phase][1][key.block]
    for phase, (target, d_out) in passes.items():
        wanted = [k for k in keys if k.phase == phase and k.tensor.endswith("gradient")]
        if not wanted:
            continue
        score = d_out[d_names[-1]]
        loss = F.binary_cross_entropy(score, torch.full_like(score, target))
        pool = {**d_out, **(g_out if phase == "g_step" else {})}
        grads = _gradients(loss, pool, [k.block for k in wanted])
        for key in wanted:
            found[key] = grads[key.block]
    return {key: value.detach().clone() for key, value in found.items()}


def observe(blocks: Mapping[str, Block], images: torch.Tensor, labels: torch.Tensor, keys: Iterable[TensorKey], *,
            z_dim: int, batch_size: int, generator: torch.Generator) -> Observation:
    """Play one client's iteration over ``images`` (float ``[N, 1, H, W]`` in [-1, 1]) in batches.

    Batches are near-equal (never a lone sample, which training-mode BatchNorm cannot normalise).
    Blocks are put in training mode; their BatchNorm running statistics move as in a training
    pass, their weights do not (nothing steps).
    """
    keys = tuple(keys)
    for block in blocks.values():
        block.train()
    n = int(labels.shape[0])
    chunks = max(1, -(-n // batch_size))
    if n // chunks < 2:
        raise ValueError(f"need at least 2 samples per batch, got {n} samples")
    parts: dict[TensorKey, list[torch.Tensor]] = {key: [] for key in keys}
    for batch in torch.tensor_split(torch.arange(n), chunks):
        z = torch.randn(len(batch), z_dim, generator=generator)
        with torch.enable_grad():
            found = _observe_batch(blocks, images[batch], labels[batch], z, keys)
        for key in keys:
            parts[key].append(found[key])
    return Observation(images, labels, {key: torch.cat(parts[key]) for key in keys})
