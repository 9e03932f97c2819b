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

* **Released outputs.** A block output that *leaves* its segment (a message, a server block's
  exit) is held by its users anyway, so it cannot be a recipe; but where a forward's graph waits
  across other work before its backward (U-shaped: G's forward waits through the whole D step),
  a :class:`ReleasableOutputs` scope lets the engine free those outputs' storage once the
  forward is done (``release``) and refill it in place, from the BatchNorm input the graph keeps,
  when a backward first reads it. Every tensor viewing it (the message, the server's leaf, the
  slices sent down) sees the same bits again; the saved tensors' version checks still hold,
  since the refill writes through a separate alias.

A :class:`SavedTensors` scope applies both to what is saved while it is active. Weights are
checked when a recipe is used: a step between a forward and its backward would change them, and
the rebuilt tensor with them (autograd's own version check does the same for saved tensors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVE: ContextVar["SavedTensors | None"] = ContextVar("p2pgan_saved_tensors", default=None)
_RELEASABLE: ContextVar["ReleasableOutputs | None"] = ContextVar("p2pgan_releasable_outputs", default=None)


def normalize_activate(x: torch.Tensor, norm: nn.Module, act: nn.Module) -> torch.Tensor:
    """``act(norm(x))`` with an in-place ``act``; inside an offering :class:`SavedTensors` scope the
    result is kept for backward as its recipe."""
    y = norm(x)
    if norm.training and y.requires_grad:
        scope, releasable = _ACTIVE.get(), _RELEASABLE.get()
        if scope is not None and scope.offering:
            scope.add_recipe(y, _Recipe(x, norm, act), version=y._version + 1)  # once ``act`` has run
        elif releasable is not None:
            releasable.add(y, x, norm, act)
    return act(y)


class _HookScope:
    """A scope that, while entered, is its context variable's value and packs every tensor
    autograd saves through :meth:`_pack_hook` (unpacked by :func:`_unpack`)."""

    _context: ContextVar

    def __init__(self) -> None:
        self._hooks = None
        self._token = None

    def _pack_hook(self, tensor: torch.Tensor):
        raise NotImplementedError

    def __enter__(self):
        self._token = self._context.set(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_hook, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._context.reset(self._token)
        # Let go of the hooks (and the cycle through them) now, not at a later collection.
        self._hooks = self._token = None

    @classmethod
    def active(cls) -> "_HookScope | None":
        """The scope of this kind entered in the current context, if any."""
        return cls._context.get()

    @contextmanager
    def joined(self) -> Iterator["_HookScope"]:
        """This (entered) scope, active in the calling thread too: autograd's saved-tensor hooks
        and context variables are per thread, so work that another thread does on behalf of the
        entering one joins its scope there."""
        token = self._context.set(self)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack_hook, _unpack):
                yield self
        finally:
            self._context.reset(token)


class SavedTensors(_HookScope):
    """While entered, tensors saved for backward are kept as recipes or pieces where registered.

    ``offering``: whether blocks run now may register their outputs as recipes (a segment turns
    it off for its last block).
    """

    _context = _ACTIVE

    def __init__(self) -> None:
        self.offering = True
        # Keyed by address, with the storage held while the scope lives: no other tensor can
        # take that address meanwhile and be mistaken for it.
        self._recipes: dict[int, tuple[torch.UntypedStorage, _Recipe, int]] = {}
        self._pieces: dict[tuple, tuple[torch.Tensor, Sequence[torch.Tensor], list[_Refill]]] = {}
        super().__init__()

    def _pack_hook(self, tensor: torch.Tensor):
        return self._pack(tensor)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        # What the forward saved refers to recipes and pieces, not to this scope: let go of the
        # tensors held for it now, not at a later collection.
        self._recipes.clear()
        self._pieces.clear()

    def add_recipe(self, tensor: torch.Tensor, recipe: "_Recipe", version: int) -> None:
        """Keep ``tensor`` (and its views) as ``recipe`` wherever saved at ``version``."""
        storage = tensor.untyped_storage()
        self._recipes[storage.data_ptr()] = (storage, recipe, version)

    def add_pieces(self, batched: torch.Tensor, pieces: Sequence[torch.Tensor]) -> None:
        """``batched`` is ``torch.cat(pieces)``; keep it as the pieces where it is saved."""
        releasable = _RELEASABLE.get()
        refills = releasable.refills_of(pieces) if releasable is not None else []
        self._pieces[_geometry(batched)] = (batched, [p.detach() for p in pieces], refills)

    def _pack(self, tensor: torch.Tensor):
        if not tensor.numel():
            return tensor
        pieces = self._pieces.get(_geometry(tensor))
        if pieces is not None:
            return _Pieces(pieces[1], pieces[2])
        entry = self._recipes.get(tensor.untyped_storage().data_ptr())
        if entry is not None and tensor._version == entry[2]:
            return _Rebuilt(entry[1], tensor)
        releasable = _RELEASABLE.get()
        return releasable.pack(tensor) if releasable is not None else tensor


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
    def __init__(self, pieces: Sequence[torch.Tensor], refills: Sequence["_Refill"] = ()) -> None:
        self.pieces = pieces
        self.refills = refills
        """Those of the pieces' storages that may have been released meanwhile."""

    def unpack(self) -> torch.Tensor:
        for refill in self.refills:
            refill.ensure()
        return torch.cat(self.pieces)


class ReleasableOutputs(_HookScope):
    """While entered, the BatchNorm+activation outputs made outside any recipe (those that leave
    their segment) are registered; :meth:`release` then frees their storage until a backward
    reads them, which refills it in place (the same kernels on the same input: the same bits).

    Only what the forward computed inside the scope is registered, and only a training-mode
    BatchNorm's output; a step of that BatchNorm before the refill is refused, as for recipes.
    """

    _context = _RELEASABLE

    def __init__(self) -> None:
        self._refills: dict[int, _Refill] = {}
        self._released: list[_Refill] = []
        super().__init__()

    def _pack_hook(self, tensor: torch.Tensor):
        # Saved tensors outside any SavedTensors scope (a one-block segment) come here; inside
        # one, its _pack hands what it does not keep otherwise to :meth:`pack`.
        return self.pack(tensor)

    def add(self, y: torch.Tensor, x: torch.Tensor, norm: nn.Module, act: nn.Module) -> None:
        storage = y.untyped_storage()
        # Only a tensor that is its whole storage (any dense layout) can be refilled as one.
        if storage.resizable() and y.storage_offset() == 0 and y.numel() * y.element_size() == storage.nbytes():
            self._refills[storage.data_ptr()] = _Refill(y, x, norm, act)

    def pack(self, tensor: torch.Tensor):
        if not tensor.numel():
            return tensor
        refill = self._refills.get(tensor.untyped_storage().data_ptr())
        if refill is not None and tensor._version == refill.version:
            return _Refilled(refill, tensor)
        return tensor

    def refills_of(self, pieces: Sequence[torch.Tensor]) -> list["_Refill"]:
        """The registered outputs behind ``pieces`` (a concatenation kept as its pieces refills
        them before concatenating again)."""
        found = {}
        for piece in pieces:
            refill = self._refills.get(piece.untyped_storage().data_ptr()) if piece.numel() else None
            if refill is not None:
                found[id(refill)] = refill
        return list(found.values())

    def release(self, keep: Sequence[torch.Tensor] = ()) -> int:
        """Free every registered output's storage but ``keep``'s (tensors the caller still reads
        itself: anything but autograd reading a released tensor reads freed memory); each is
        refilled when a backward reads it. Returns the bytes freed."""
        kept = {t.untyped_storage().data_ptr() for t in keep}
        released = [refill for ptr, refill in self._refills.items() if ptr not in kept]
        freed = sum(refill.release() for refill in released)
        self._released.extend(r for r in released if r.released)
        self._refills.clear()
        return freed

    def restore(self) -> None:
        """Refill whatever no backward has read (a graph left without its backward): a released
        tensor must never be read as it is."""
        for refill in self._released:
            refill.ensure()
        self._released.clear()


class _Refill:
    """``act(batch_norm(x))`` as the forward computed it, released and refilled in place."""

    def __init__(self, y: torch.Tensor, x: torch.Tensor, norm: nn.Module, act: nn.Module) -> None:
        if not getattr(act, "inplace", False):
            raise ValueError(f"released outputs need an in-place activation, got {act!r}")
        self.storage = y.untyped_storage()
        self.nbytes = self.storage.nbytes()
        self.shape, self.stride, self.dtype = tuple(y.shape), y.stride(), y.dtype
        self.version = y._version + 1  # once ``act`` has run
        self.x, self.norm, self.act = x.detach(), norm, act
        self.versions = _versions(norm)
        self.released = False
        # Clients' backwards on several threads may read one refill (a server output sent to each).
        self._lock = threading.Lock()

    def release(self) -> int:
        # Not resizable any more: someone else maps it (a transport's encoder viewing it as an array).
        if (self.released or self.storage is None or self.storage.nbytes() != self.nbytes
                or not self.storage.resizable()):
            return 0
        self.storage.resize_(0)
        self.released = True
        return self.nbytes

    def ensure(self) -> None:
        if not self.released:
            return
        with self._lock:
            if self.released:
                self._refill()

    def _refill(self) -> None:
        if _versions(self.norm) != self.versions:
            raise RuntimeError("a BatchNorm's weights changed between a forward and its backward")
        norm = self.norm
        self.storage.resize_(self.nbytes)
        # A separate alias: writing through it leaves the version counter autograd checks alone.
        out = torch.empty(0, dtype=self.dtype, device=self.x.device).set_(self.storage, 0, self.shape, self.stride)
        stats = [None if s is None else s.clone() for s in (norm.running_mean, norm.running_var)]
        channels = self.x.shape[1]
        momentum = norm.momentum if norm.momentum is not None else 0.0
        with torch.no_grad():
            if out.device.type == "cpu":
                # The forward's own kernel (F.batch_norm reaches native_batch_norm on the CPU), into place.
                torch.ops.aten.native_batch_norm.out(
                    self.x, norm.weight, norm.bias, stats[0], stats[1], True, momentum, norm.eps,
                    out=out, save_mean=self.x.new_empty(channels), save_invstd=self.x.new_empty(channels))
            else:  # elsewhere F.batch_norm may take another kernel (cuDNN): run the forward's own call
                out.copy_(F.batch_norm(self.x, stats[0], stats[1], norm.weight, norm.bias, True, momentum, norm.eps))
            self.act(out)
        self.released = False
        self.x = self.storage = None  # refilled once; its storage lives as long as its tensors


class _Refilled:
    """A saved tensor whose storage a :class:`_Refill` may have released."""

    def __init__(self, refill: _Refill, tensor: torch.Tensor) -> None:
        self.refill = refill
        self.tensor = tensor

    def unpack(self) -> torch.Tensor:
        self.refill.ensure()
        return self.tensor


def _unpack(saved):
    return saved.unpack() if isinstance(saved, (_Rebuilt, _Pieces, _Refilled)) else saved
