"""What a forward keeps for its backward, kept smaller: the same numbers from fewer bytes.

Autograd keeps, per ``conv -> BatchNorm -> activation`` block, the BatchNorm's input ``x`` (its
backward needs it) and the activation's output ``r`` (the activation's backward needs its sign,
the next layer's backward needs it whole). Two ways to keep less, both exact:

* **Rebuilt activations.** ``r`` is ``act(batch_norm(x))`` with the batch's own statistics, so a
  block inside a segment (whose output feeds the next block in the same forward) can keep it as
  that recipe and rebuild it when the backward first asks: the same kernels on the same ``x``
  with the same weights give the same bits. It costs one BatchNorm and one activation forward
  per block in the backward and saves one activation-sized tensor per block until then. A
  segment's last block does not offer its output: that one leaves the segment (a message, the
  network's result) and is held anyway.
* **Concatenations as pieces.** A batched block's input, the concatenation of its users'
  tensors, is kept as those tensors (held anyway) and concatenated again for the backward.

A :class:`SavedTensors` scope applies both to what is saved while it is active. Weights are
checked when a recipe is used: a step between a forward and its backward would change them, and
the rebuilt tensor with them (autograd's own version check does the same for saved tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVE: ContextVar["SavedTensors | None"] = ContextVar("p2pgan_saved_tensors", default=None)


def normalize_activate(x: torch.Tensor, norm: nn.Module, act: nn.Module) -> torch.Tensor:
    """``act(norm(x))`` with an in-place ``act``; inside an offering :class:`SavedTensors` scope the
    result is kept for backward as its recipe."""
    y = norm(x)
    scope = _ACTIVE.get()
    if scope is not None and scope.offering and norm.training and y.requires_grad:
        scope.add_recipe(y, _Recipe(x, norm, act), version=y._version + 1)  # once ``act`` has run
    return act(y)


class SavedTensors:
    """While entered, tensors saved for backward are kept as recipes or pieces where registered.

    ``offering``: whether blocks run now may register their outputs as recipes (a segment turns
    it off for its last block).
    """

    def __init__(self) -> None:
        self.offering = True
        # Keyed by address, with the storage held while the scope lives: no other tensor can
        # take that address meanwhile and be mistaken for it.
        self._recipes: dict[int, tuple[torch.UntypedStorage, _Recipe, int]] = {}
        self._pieces: dict[tuple, tuple[torch.Tensor, Sequence[torch.Tensor]]] = {}
        self._hooks = None
        self._token = None

    def __enter__(self) -> "SavedTensors":
        self._token = _ACTIVE.set(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        _ACTIVE.reset(self._token)
        # What the forward saved refers to recipes and pieces, not to this scope: let go of the
        # tensors held for it (and of the cycle through the hooks) now, not at a later collection.
        self._hooks = self._token = None
        self._recipes.clear()
        self._pieces.clear()

    def add_recipe(self, tensor: torch.Tensor, recipe: "_Recipe", version: int) -> None:
        """Keep ``tensor`` (and its views) as ``recipe`` wherever saved at ``version``."""
        storage = tensor.untyped_storage()
        self._recipes[storage.data_ptr()] = (storage, recipe, version)

    def add_pieces(self, batched: torch.Tensor, pieces: Sequence[torch.Tensor]) -> None:
        """``batched`` is ``torch.cat(pieces)``; keep it as the pieces where it is saved."""
        self._pieces[_geometry(batched)] = (batched, [p.detach() for p in pieces])

    def _pack(self, tensor: torch.Tensor):
        if not tensor.numel():
            return tensor
        pieces = self._pieces.get(_geometry(tensor))
        if pieces is not None:
            return _Pieces(pieces[1])
        entry = self._recipes.get(tensor.untyped_storage().data_ptr())
        if entry is not None and tensor._version == entry[2]:
            return _Rebuilt(entry[1], tensor)
        return tensor


def _geometry(tensor: torch.Tensor) -> tuple:
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())


class _Recipe:
    """``act(batch_norm(x))`` as the forward computed it, rebuilt once for all who saved it."""

    def __init__(self, x: torch.Tensor, norm: nn.Module, act: nn.Module) -> None:
        if not getattr(act, "inplace", False):
            raise ValueError(f"rebuilt activations need an in-place activation, got {act!r}")
        self.x, self.norm, self.act = x.detach(), norm, act
        self.versions = _versions(norm)
        self.users = 0
        self._tensor: torch.Tensor | None = None

    def rebuilt(self) -> torch.Tensor:
        if self._tensor is None:
            if _versions(self.norm) != self.versions:
                raise RuntimeError("a BatchNorm's weights changed between a forward and its backward")
            norm = self.norm
            # The forward's own call: batch statistics, the same running-statistics path (on
            # copies, so the module's own are not updated twice).
            stats = [None if s is None else s.clone() for s in (norm.running_mean, norm.running_var)]
            with torch.no_grad():
                y = F.batch_norm(self.x, stats[0], stats[1], norm.weight, norm.bias, True,
                                 norm.momentum if norm.momentum is not None else 0.0, norm.eps)
                self._tensor = self.act(y)
        return self._tensor

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._tensor = None


def _versions(norm: nn.Module) -> tuple[int, ...]:
    return tuple(p._version for p in (norm.weight, norm.bias) if p is not None)


class _Rebuilt:
    """A saved tensor that is a view of a recipe's result."""

    def __init__(self, recipe: _Recipe, tensor: torch.Tensor) -> None:
        recipe.users += 1
        self.recipe = recipe
        self.geometry = (tuple(tensor.shape), tensor.stride(), tensor.storage_offset())

    def unpack(self) -> torch.Tensor:
        size, stride, offset = self.geometry
        out = self.recipe.rebuilt().as_strided(size, stride, offset)
        self.recipe.release()
        return out


class _Pieces:
    def __init__(self, pieces: Sequence[torch.Tensor]) -> None:
        self.pieces = pieces

    def unpack(self) -> torch.Tensor:
        return torch.cat(self.pieces)


def _unpack(saved):
    return saved.unpack() if isinstance(saved, (_Rebuilt, _Pieces)) else saved
