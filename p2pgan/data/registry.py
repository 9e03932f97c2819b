"""Domain registry: where each dataset comes from and how it is loaded.

Resolution order for a domain (both splits always come from the same place, so a train/test pair
is never mixed from two sources):

1. an explicit ``data_root``: ``<root>/<domain>/`` (or an alias such as ``<root>/FashionMNIST/``)
   holding IDX files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
   ``t10k-…`` or ``test-…`` for the test split; or torchvision's layout ``<root>/MNIST/raw/``,
   ``<root>/FashionMNIST/raw/``, ``<root>/KMNIST/raw/``. For ``mnist`` the train split may also be
   ``mnist_5k.csv[.gz]`` (784 pixels then the label per row).
2. system-wide copies: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
3. the compact offline copy shipped in ``p2pgan/data/offline/`` (made by
   ``tools/make_offline_data.py``; at most 5,000 train / 1,000 test images per domain,
   class-balanced), checked against its manifest's sha256.

A domain of the user's own images (a ``domains:`` entry with a ``path``) is loaded from its files
instead: ``load_domain(name, split, dataset=scenario.datasets[name])`` (see :mod:`p2pgan.data.user`).

A location counts only if it has both splits. If ``data_root`` is given but has no complete copy of
a domain, the next source is used and ``DomainData.source`` says why. Files that exist but are
malformed raise :class:`~p2pgan.errors.DataError` (no silent fallback).

Loaded data is cached per process; callers must treat the returned tensors as read-only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2pgan.config.domains import UserDomain
from p2pgan.data.idx import IDX_SPLIT_STEMS, find_idx_pair, read_idx_images, read_idx_labels, read_mnist_csv
from p2pgan.data.user import UserSource, read_user_dataset
from p2pgan.errors import DataError

__all__ = [
    "DomainSpec",
    "DomainData",
    "DomainInfo",
    "DOMAINS",
    "SPLITS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "OFFLINE_DIR",
    "SYSTEM_DIRS",
    "domain_names",
    "canonical_domain",
    "domain_spec",
    "load_domain",
    "describe_domains",
    "to_model_input",
    "clear_cache",
]

IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLITS = ("train", "test")
OFFLINE_DIR = Path(__file__).resolve().parent / "offline"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    title: str
    class_names: tuple[str, ...]
    dir_names: tuple[str, ...]  # directory names accepted under a data_root
    torchvision_name: str | None  # <root>/<name>/raw/ layout
    license: str


DOMAINS: dict[str, DomainSpec] = {
    spec.name: spec
    for spec in (
        DomainSpec(
            "mnist",
            "MNIST handwritten digits",
            tuple(str(d) for d in range(10)),
            ("mnist", "MNIST"),
            "MNIST",
            "CC BY-SA 3.0",
        ),
        DomainSpec(
            "fashion-mnist",
            "Fashion-MNIST (Zalando article images)",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            ("fashion-mnist", "fashion_mnist", "fmnist", "FashionMNIST"),
            "FashionMNIST",
            "MIT",
        ),
        DomainSpec(
            "kmnist",
            "Kuzushiji-MNIST (cursive Japanese hiragana)",
            ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
            ("kmnist", "KMNIST"),
            "KMNIST",
            "CC BY-SA 4.0",
        ),
        DomainSpec(
            "glyphs",
            "NotMNIST-like letters A-J rendered from free fonts",
            tuple("ABCDEFGHIJ"),
            ("glyphs", "notmnist", "NotMNIST"),
            None,
            "rendered from free fonts under their Debian packages' licences",
        ),
    )
}

_ALIASES = {
    "fmnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "notmnist": "glyphs",
}

# Extra system-wide locations checked after data_root and before the offline copy.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_CSV_TRAIN = {"mnist": ("mnist_5k.csv", "mnist_5k.csv.gz")}


@dataclass(frozen=True, eq=False)
class DomainData:
    """One split of one domain: uint8 images ``[N, H, W]`` (grey; 28×28 for the built-in domains)
    or ``[N, 3, H, W]`` (RGB, a user dataset), and int64 labels ``[N]``."""

    domain: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DomainInfo:
    domain: str
    source: str
    train_size: int
    test_size: int


def domain_names() -> list[str]:
    return list(DOMAINS)


def canonical_domain(domain: str) -> str:
    """Return the registry name for ``domain`` (accepts a few aliases); DataError if unknown."""
    key = str(domain).strip()
    if key in DOMAINS:
        return key
    low = key.lower()
    if low in DOMAINS:
        return low
    if low in _ALIASES:
        return _ALIASES[low]
    raise DataError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})")


def domain_spec(domain: str) -> DomainSpec:
    return DOMAINS[canonical_domain(domain)]


# ----------------------------------------------------------------------------- locating files


@dataclass(frozen=True)
class _SplitFiles:
    images: Path  # IDX images, or the CSV file when labels is None
    labels: Path | None
    sha256: tuple[str | None, str | None] = (None, None)  # expected, offline copy only


@dataclass(frozen=True)
class _Location:
    source: str
    splits: dict[str, _SplitFiles]


def _first_existing(directory: Path, names: list[str]) -> Path | None:
    for name in names:
        p = directory / name
        if p.is_file():
            return p
    return None


def _find_split(directory: Path, domain: str, split: str) -> _SplitFiles | None:
    pair = find_idx_pair(directory, IDX_SPLIT_STEMS[split])
    if pair is not None:
        return _SplitFiles(*pair)
    if split == "train" and domain in _CSV_TRAIN:
        csv = _first_existing(directory, list(_CSV_TRAIN[domain]))
        if csv:
            return _SplitFiles(csv, None)
    return None


def _candidate_dirs(spec: DomainSpec, root: Path) -> list[Path]:
    dirs = [root / name for name in spec.dir_names]
    if spec.torchvision_name:
        dirs.append(root / spec.torchvision_name / "raw")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.append(d)
    return seen


def _find_complete(spec: DomainSpec, dirs: list[Path]) -> tuple[_Location | None, list[str]]:
    notes = []
    for d in dirs:
        found = {s: _find_split(d, spec.name, s) for s in SPLITS}
        if all(found.values()):
            return _Location(str(d), found), notes  # type: ignore[arg-type]
        present = [s for s, f in found.items() if f]
        if present:
            notes.append(f"{d} has only the {present[0]} split")
    return None, notes


@functools.lru_cache(maxsize=1)
def _offline_manifest() -> dict:
    path = OFFLINE_DIR / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: offline data manifest missing (run tools/make_offline_data.py "
            "or pass a data_root with the datasets)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable offline manifest ({exc})") from None


def _offline_location(domain: str, why: str | None) -> _Location:
    manifest = _offline_manifest()
    entry = manifest.get("domains", {}).get(domain)
    if entry is None:
        raise DataError(f"{OFFLINE_DIR / 'manifest.json'}: no offline copy of domain {domain!r}")
    splits = {}
    for split in SPLITS:
        files = entry["splits"][split]["files"]
        splits[split] = _SplitFiles(
            OFFLINE_DIR / domain / files["images"]["name"],
            OFFLINE_DIR / domain / files["labels"]["name"],
            (files["images"]["sha256"], files["labels"]["sha256"]),
        )
    tr, te = (entry["splits"][s]["size"] for s in SPLITS)
    source = f"offline copy ({tr}/{te} subset in {OFFLINE_DIR})"
    if why:
        source += f"; {why}"
    return _Location(source, splits)


@functools.lru_cache(maxsize=None)
def _resolve(domain: str, root: str | None) -> _Location:
    spec = DOMAINS[domain]
    why = None
    if root is not None:
        rootp = Path(root)
        if not rootp.is_dir():
            why = f"data_root {root} does not exist"
        else:
            loc, notes = _find_complete(spec, _candidate_dirs(spec, rootp))
            if loc is not None:
                return loc
            why = f"no complete {domain} train+test files under data_root {root}"
            if notes:
                why += f" ({'; '.join(notes)})"
    for d in SYSTEM_DIRS.get(domain, ()):
        if d.is_dir():
            loc, _ = _find_complete(spec, [d])
            if loc is not None:
                src = loc.source + (f" (system copy; {why})" if why else " (system copy)")
                return _Location(src, loc.splits)
    return _offline_location(domain, why)


# ----------------------------------------------------------------------------- loading


def _check_sha(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: offline data file missing (reinstall p2pgan or rerun tools/make_offline_data.py)") from None
    if digest != expected:
        raise DataError(f"{path}: sha256 mismatch with offline manifest (file corrupt or modified)")


def _read_split(files: _SplitFiles) -> tuple[np.ndarray, np.ndarray]:
    _check_sha(files.images, files.sha256[0])
    if files.labels is None:
        images, labels = read_mnist_csv(files.images)
        label_file = files.images
    else:
        _check_sha(files.labels, files.sha256[1])
        images = read_idx_images(files.images)
        labels = read_idx_labels(files.labels).astype(np.int64)
        label_file = files.labels
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        h, w = images.shape[1:]
        raise DataError(f"{files.images}: images are {h}x{w}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(labels) != len(images):
        raise DataError(
            f"{label_file}: {len(labels)} labels for {len(images)} images in {files.images.name}"
        )
    if len(labels) == 0:
        raise DataError(f"{files.images}: no examples")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_file}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return images, labels


@functools.lru_cache(maxsize=None)
def _load_cached(domain: str, split: str, root: str | None) -> DomainData:
    loc = _resolve(domain, root)
    images, labels = _read_split(loc.splits[split])
    return DomainData(
        domain=domain,
        split=split,
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        source=loc.source,
    )


def _root_key(data_root: Path | str | None) -> str | None:
    if data_root is None:
        return None
    return str(Path(os.path.expanduser(str(data_root))).absolute())


def load_domain(domain: str, split: str, data_root: Path | str | None = None,
                dataset: UserDomain | None = None) -> DomainData:
    """Load one split (``"train"`` or ``"test"``) of a domain; see the module doc for where from.

    ``dataset``: the domain's entry when it is a dataset of the user's own files (a scenario's
    ``scenario.datasets.get(domain)``; ``None`` for a built-in domain, read from ``data_root``).
    """
    if dataset is not None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} for domain {domain} (expected train or test)")
        return _load_user(UserSource.of(str(domain), dataset), split)
    name = canonical_domain(domain)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for domain {name} (expected train or test)")
    return _load_cached(name, split, _root_key(data_root))


@functools.lru_cache(maxsize=None)
def _read_user(source: UserSource):
    return read_user_dataset(source)


@functools.lru_cache(maxsize=None)
def _load_user(source: UserSource, split: str) -> DomainData:
    splits = _read_user(source)
    images = splits.train_images if split == "train" else splits.test_images
    labels = splits.train_labels if split == "train" else splits.test_labels
    return DomainData(domain=source.name, split=split, images=torch.from_numpy(images),
                      labels=torch.from_numpy(labels), source=splits.source)


def describe_domains(data_root: Path | str | None = None) -> list[DomainInfo]:
    """Where every known domain would be loaded from, with its split sizes."""
    out = []
    for name in DOMAINS:
        train = load_domain(name, "train", data_root)
        test = load_domain(name, "test", data_root)
        out.append(DomainInfo(name, train.source, len(train), len(test)))
    return out


def clear_cache() -> None:
    """Forget loaded data and resolved locations (e.g. after files changed on disk)."""
    _load_cached.cache_clear()
    _load_user.cache_clear()
    _read_user.cache_clear()
    _resolve.cache_clear()
    _offline_manifest.cache_clear()


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[N, H, W]`` or ``[N, C, H, W]`` (C 1 or 3) → float32 ``[N, C, H, W]`` in [-1, 1]."""
    if not isinstance(images_uint8, torch.Tensor):
        images_uint8 = torch.as_tensor(np.asarray(images_uint8))
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_model_input expects uint8 images, got {images_uint8.dtype}")
    x = images_uint8
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif not (x.dim() == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"to_model_input expects [N, H, W] or [N, C, H, W] with C 1 or 3, got {tuple(x.shape)}")
    return x.to(torch.float32).div_(127.5).sub_(1.0)
