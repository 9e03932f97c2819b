#!/usr/bin/env python
"""Write the tiny example dataset of the user-data feature: 32×32 RGB synthetic shapes, 10 classes.

Each class is one shape in its own colour (a red circle, a green square, ...) drawn at a jittered
position, size and shade on a dark, randomly tinted background. Everything is drawn from one seeded
numpy Generator and written without timestamps, so the same arguments give the same bytes.

The shipped copy, ``p2pgan/resources/data/shapes32/`` (used by ``scenarios/own-data.yaml``), is::

    python tools/make_example_dataset.py            # folder layout: train/<class>/NNN.png, test/...

Other layouts of the same images, for trying the ``npz`` and ``idx`` formats::

    python tools/make_example_dataset.py --format npz --out /tmp/shapes32.npz
    python tools/make_example_dataset.py --format idx --out /tmp/shapes32-idx
    python tools/make_example_dataset.py --check    # the shipped copy matches what this writes
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from p2pgan.data.idx import write_idx  # noqa: E402

DEFAULT_OUT = ROOT / "p2pgan" / "resources" / "data" / "shapes32"
CLASSES = ("circle", "square", "triangle", "diamond", "plus", "ring", "hbar", "vbar", "cross", "frame")
COLOURS = ((220, 40, 40), (40, 190, 60), (50, 90, 230), (235, 210, 40), (210, 50, 200),
           (40, 210, 220), (245, 140, 30), (235, 235, 235), (140, 70, 220), (150, 230, 60))
SUPERSAMPLE = 2  # drawn at 2x and downsampled: smooth edges, still small PNGs


def draw_shape(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``label`` (``size`` × ``size``)."""
    big = size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(0, 50, size=3))
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in COLOURS[label])
    r = big * rng.uniform(0.24, 0.36)  # half the shape's extent
    cx, cy = (big / 2 + rng.uniform(-0.12, 0.12) * big for _ in range(2))
    box = (cx - r, cy - r, cx + r, cy + r)
    stroke = max(2, int(r * 0.35))
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif name == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif name == "plus":
        draw.rectangle((cx - r, cy - stroke / 2, cx + r, cy + stroke / 2), fill=colour)
        draw.rectangle((cx - stroke / 2, cy - r, cx + stroke / 2, cy + r), fill=colour)
    elif name == "ring":
        draw.ellipse(box, outline=colour, width=stroke)
    elif name == "hbar":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=colour)
    elif name == "vbar":
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=colour)
    elif name == "cross":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=stroke)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=stroke)
    else:  # frame
        draw.rectangle(box, outline=colour, width=stroke)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def make_split(per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class: uint8 ``[N, size, size, 3]`` and int64 labels, class by class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            images.append(np.asarray(draw_shape(label, size, rng), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def make_dataset(train_per_class: int = 30, test_per_class: int = 10, seed: int = 0, size: int = 32):
    """``{"train": (images, labels), "test": (images, labels)}``; the two splits use different seeds."""
    return {"train": make_split(train_per_class, seed, size), "test": make_split(test_per_class, seed + 1, size)}


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def folder_files(dataset) -> dict[str, bytes]:
    """The folder layout as ``{relative path: bytes}``: ``<split>/<class>/<NNN>.png``."""
    files = {}
    for split, (images, labels) in dataset.items():
        counters = [0] * len(CLASSES)
        for image, label in zip(images, labels):
            files[f"{split}/{CLASSES[label]}/{counters[label]:03d}.png"] = png_bytes(image)
            counters[label] += 1
    return files


def write_folder(out: Path, dataset) -> Path:
    for rel, data in folder_files(dataset).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out


def write_npz(out: Path, dataset) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = dataset["train"], dataset["test"]
    np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return out


def write_idx_files(out: Path, dataset) -> Path:
    """MNIST's file names; images ``[N, H, W, 3]`` (IDX allows any rank), labels unsigned bytes."""
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = dataset[split]
        write_idx(out / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(out / f"{stem}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return out


def check_folder(out: Path, dataset) -> list[str]:
    """Differences between ``out`` and what :func:`write_folder` would write (empty: identical)."""
    expected = folder_files(dataset)
    found = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    problems = [f"missing {rel}" for rel in sorted(set(expected) - found)]
    problems += [f"unexpected {rel}" for rel in sorted(found - set(expected))]
    problems += [f"differs {rel}" for rel in sorted(set(expected) & found) if (out / rel).read_bytes() != expected[rel]]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    parser.add_argument("--format", choices=("folder", "npz", "idx"), default="folder")
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare the folder at --out instead of writing")
    args = parser.parse_args(argv)
    dataset = make_dataset(args.train_per_class, args.test_per_class, args.seed, args.size)
    if args.check:
        problems = check_folder(args.out, dataset)
        for line in problems[:20]:
            print(line)
        print(f"{args.out}: {'ok' if not problems else f'{len(problems)} differences'}")
        return 1 if problems else 0
    writer = {"folder": write_folder, "npz": write_npz, "idx": write_idx_files}[args.format]
    out = writer(args.out, dataset)
    n = sum(len(labels) for _, labels in dataset.values())
    print(f"wrote {n} images of {len(CLASSES)} classes ({args.format}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
