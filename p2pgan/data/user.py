"""Reading a dataset of the user's own images (a ``domains:`` entry with a ``path``).

Three layouts (``format``):

* ``folder``: one subfolder per class, named as in ``classes``, holding image files (PNG, JPEG,
  BMP, GIF, WebP, TIFF, PPM/PGM), either directly under ``path`` or under ``path/train/`` and
  ``path/test/``;
* ``npz``: a NumPy archive with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (or
  ``train_images``, ``train_labels``, ``test_images``, ``test_labels``, or only ``images`` and
  ``labels``); images ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``, uint8 0..255 or float
  0..1; labels integers ``0..len(classes)-1``;
* ``idx``: a folder with ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
  (and ``t10k-…`` or ``test-…``), as MNIST ships; images ``[N, H, W]`` or ``[N, H, W, C]``.

Images are converted to the declared ``channels`` (grey <-> RGB; an alpha channel is dropped) and
resized to ``image_size`` (non-square images are stretched). Without a test split, ``test_fraction``
of every class is held out, chosen by a fixed seed (not the scenario's: the test set and the judge
trained on the rest stay the same across runs). Every problem is a :class:`DataError` that names
the domain's key and the file.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from p2pgan.config.domains import UserDomain
from p2pgan.data.idx import IDX_SPLIT_STEMS, find_idx_pair, read_idx, read_idx_labels
from p2pgan.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "UserSource", "UserSplits", "read_user_dataset"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_NPZ_KEYS = (("x_train", "y_train", "x_test", "y_test"),
             ("train_images", "train_labels", "test_images", "test_labels"))
_HOLDOUT_SEED = 0
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
# ITU-R 601 luma, the weights PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class UserSource:
    """A :class:`UserDomain` as a hashable value (the loaded data is cached by it)."""

    name: str
    path: Path
    format: str
    image_size: int
    channels: int
    classes: tuple[str, ...]
    test_fraction: float

    @classmethod
    def of(cls, name: str, dataset: UserDomain) -> "UserSource":
        if dataset.format is None:
            raise DataError(f"domains.{name}: the dataset's format is unresolved (load the scenario through "
                            "p2pgan.config, which settles it)")
        return cls(name, Path(dataset.path), dataset.format, dataset.image_size, dataset.channels,
                   tuple(dataset.classes), float(dataset.test_fraction))

    def fail(self, where: Path | str, problem: str) -> DataError:
        return DataError(f"domains.{self.name}: {where}: {problem}")


@dataclass(frozen=True, eq=False)
class UserSplits:
    """Both splits: uint8 images ``[N, H, W]`` (grey) or ``[N, 3, H, W]`` (RGB), int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def read_user_dataset(src: UserSource) -> UserSplits:
    """Read, convert and split a user dataset (see the module doc)."""
    notes: list[str] = []
    if src.format == "folder":
        splits = _read_folder(src, notes)
    elif src.format == "npz":
        splits = _read_npz(src, notes)
    elif src.format == "idx":
        splits = _read_idx(src, notes)
    else:
        raise src.fail(src.path, f"unknown format {src.format!r} (expected folder, npz or idx)")
    if splits["test"] is None:
        splits["train"], splits["test"] = _hold_out(src, *splits["train"])
        notes.append(f"test split: {src.test_fraction:.0%} of each class held out")
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    for split, labels in (("train", y_train), ("test", y_test)):
        if len(labels) == 0:
            raise src.fail(src.path, f"the {split} split has no images")
    shape = f"{src.image_size}x{src.image_size}x{src.channels}"
    source = f"user dataset {src.path} ({src.format}; {len(y_train)}/{len(y_test)} images, {shape}"
    source += "".join(f"; {n}" for n in dict.fromkeys(notes)) + ")"
    return UserSplits(_storage(x_train), y_train, _storage(x_test), y_test, source)


def _storage(images_nchw: np.ndarray) -> np.ndarray:
    """Grey as ``[N, H, W]`` like the built-in domains; RGB as ``[N, 3, H, W]``."""
    return np.ascontiguousarray(images_nchw[:, 0] if images_nchw.shape[1] == 1 else images_nchw)


# ----------------------------------------------------------------------------- folder


def _read_folder(src: UserSource, notes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    subdirs = _subfolders(src, src.path)
    if {"train", "test"} <= subdirs and not {"train", "test"} & set(src.classes):
        return {split: _read_class_folders(src, src.path / split, notes) for split in ("train", "test")}
    return {"train": _read_class_folders(src, src.path, notes), "test": None}


def _subfolders(src: UserSource, folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    except OSError as exc:
        raise src.fail(folder, f"cannot list the folder ({exc.strerror or exc})") from None


def _read_class_folders(src: UserSource, folder: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    present = _subfolders(src, folder)
    missing = [c for c in src.classes if c not in present]
    if missing:
        raise src.fail(folder, f"no subfolder for class {missing[0]!r} (expected one per class: "
                               f"{', '.join(src.classes)})")
    extra = sorted(present - set(src.classes))
    if extra:
        raise src.fail(folder / extra[0], f"a subfolder that is not a class (classes: {', '.join(src.classes)})")
    images, labels = [], []
    for label, name in enumerate(src.classes):
        files = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise src.fail(folder / name, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images.extend(_read_image(src, f, notes) for f in files)
        labels.extend([label] * len(files))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_image(src: UserSource, path: Path, notes: list[str]) -> np.ndarray:
    """One image file as uint8 ``[C, S, S]`` in the declared shape."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = "L" if src.channels == 1 else "RGB"
            if img.mode != mode:
                if mode == "L" and img.mode not in _GREY_MODES | {"P"}:
                    notes.append("converted RGB to grey")
                elif mode == "RGB" and img.mode in _GREY_MODES:
                    notes.append("converted grey to RGB")
                img = img.convert(mode)
            if img.size != (src.image_size, src.image_size):
                notes.append(f"resized from {img.width}x{img.height}")
                img = img.resize((src.image_size, src.image_size), Image.Resampling.LANCZOS)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise src.fail(path, f"cannot read the image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# ----------------------------------------------------------------------------- arrays (npz, idx)


def _read_npz(src: UserSource, notes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    try:
        with np.load(src.path, allow_pickle=False) as archive:
            keys = set(archive.files)
            for names in _NPZ_KEYS:
                if set(names) <= keys:
                    arrays = [archive[k] for k in names]
                    return {"train": _arrays(src, arrays[0], arrays[1], names[0], notes),
                            "test": _arrays(src, arrays[2], arrays[3], names[2], notes)}
            if {"images", "labels"} <= keys:
                return {"train": _arrays(src, archive["images"], archive["labels"], "images", notes), "test": None}
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise src.fail(src.path, f"not a readable .npz archive ({exc})") from None
    raise src.fail(src.path, f"expected arrays x_train, y_train, x_test, y_test (or train_images, ..., or "
                             f"images, labels); found {', '.join(sorted(keys)) or 'none'}")


def _read_idx(src: UserSource, notes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for split in ("train", "test"):
        try:
            pair = find_idx_pair(src.path, IDX_SPLIT_STEMS[split])
            out[split] = None if pair is None else (read_idx(pair[0]), read_idx_labels(pair[1]))
        except DataError as exc:
            raise DataError(f"domains.{src.name}: {exc}") from None
        if out[split] is not None:
            images, labels = out[split]  # type: ignore[misc]
            out[split] = _arrays(src, images, labels, pair[0].name, notes)  # type: ignore[index]
    if out["train"] is None:
        raise src.fail(src.path, "no train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz]")
    return out


def _arrays(src: UserSource, images: np.ndarray, labels: np.ndarray, what: str,
            notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    where = f"{src.path} [{what}]"
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise src.fail(where, f"labels must be a 1-D array of integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(src.classes)):
        bad = int(labels.min() if labels.min() < 0 else labels.max())
        raise src.fail(where, f"label {bad} outside 0..{len(src.classes) - 1} (classes lists "
                              f"{len(src.classes)} names)")
    x = _as_nchw(src, np.asarray(images), where)
    if len(x) != len(labels):
        raise src.fail(where, f"{len(x)} images but {len(labels)} labels")
    return _to_shape(src, x, notes), labels.astype(np.int64)


def _as_nchw(src: UserSource, x: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 ``[N, C, H, W]`` with C in 1, 3, 4."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3, 4)):
        raise src.fail(where, f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1, 3 or 4; "
                              f"got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.size == 0:
        raise src.fail(where, f"images must be numbers, got {x.dtype}")
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
        raise src.fail(where, f"pixel values must lie in 0..255 (or 0..1 as floats), found {low:g}..{high:g}")
    scale = 255.0 if np.issubdtype(x.dtype, np.floating) and high <= 1.0 else 1.0
    return np.rint(x.astype(np.float64) * scale).astype(np.uint8)


def _to_shape(src: UserSource, x: np.ndarray, notes: list[str]) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> the declared channels and ``image_size`` square."""
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] != src.channels:
        if src.channels == 1:
            x = np.rint(np.tensordot(x.astype(np.float64), _LUMA, axes=([1], [0])))[:, None].astype(np.uint8)
            notes.append("converted RGB to grey")
        else:
            x = np.repeat(x, 3, axis=1)
            notes.append("converted grey to RGB")
    size = src.image_size
    if x.shape[2:] != (size, size):
        notes.append(f"resized from {x.shape[3]}x{x.shape[2]}")
        t = F.interpolate(torch.from_numpy(x).to(torch.float32), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        x = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(x)


# ----------------------------------------------------------------------------- held-out test split


def _hold_out(src: UserSource, images: np.ndarray, labels: np.ndarray):
    """``test_fraction`` of every class (at least one example of a class with two or more) as test."""
    rng = np.random.default_rng([_HOLDOUT_SEED, zlib.crc32(src.name.encode())])
    test_mask = np.zeros(len(labels), dtype=bool)
    for label in range(len(src.classes)):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(len(members) * src.test_fraction)))
        test_mask[rng.permutation(members)[:count]] = True
    train, test = ~test_mask, test_mask
    return (images[train], labels[train]), (images[test], labels[test])
