#!/usr/bin/env python
"""Build the compact offline dataset copies shipped in ``p2pgan/data/offline/``.

Reads the full datasets from ``../shared/data`` (or ``--shared``) and writes, per domain,
``{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` plus ``manifest.json`` with sizes, class
counts, source files and sha256 of every written file. Output bytes are reproducible: selection
uses a fixed seed per domain, gzip is written with mtime 0 and no file name, JSON is sorted.

Selection, per domain and split: class-balanced (``size // 10`` per class; all of a class if it
has fewer), chosen by a numpy Generator seeded from (seed, domain), written in a seeded random
order. Test images whose pixels are identical to a selected train image are skipped, so train and
test never share an image.

Sources:
- mnist: train = ``mnist_5k.csv.gz`` (5,000 digits, disjoint from the official test split),
  test = the official 10k test IDX.
- fashion-mnist, glyphs: their own train and test IDX splits.
- kmnist: only the 10k test split is available, so it is re-split: per class, a seeded
  permutation gives the train images first and the test images from the rest (no index overlap,
  plus the pixel-duplicate check above).

Usage: ``python tools/make_offline_data.py [--shared DIR] [--out DIR] [--check]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from p2pgan.data.idx import (  # noqa: E402
    encode_idx,
    gzip_bytes,
    read_idx_images,
    read_idx_labels,
    read_mnist_csv,
)

DEFAULT_SHARED = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "p2pgan" / "data" / "offline"
NUM_CLASSES = 10
FORMAT_VERSION = 1

LICENSES = {
    "mnist": "CC BY-SA 3.0",
    "fashion-mnist": "MIT",
    "kmnist": "CC BY-SA 4.0",
    "glyphs": "rendered from free fonts under their Debian packages' licences (see glyphs/FONTS.txt.gz)",
}


def _rng(seed: int, domain: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode())])


def _idx_pair(shared: Path, domain: str, stem: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    d = shared / domain
    img, lbl = d / f"{stem}-images-idx3-ubyte.gz", d / f"{stem}-labels-idx1-ubyte.gz"
    images, labels = read_idx_images(img), read_idx_labels(lbl).astype(np.int64)
    if len(images) != len(labels):
        raise SystemExit(f"{lbl}: {len(labels)} labels for {len(images)} images")
    return images, labels, [str(img.relative_to(shared)), str(lbl.relative_to(shared))]


def _balanced(
    labels: np.ndarray,
    pool: np.ndarray,
    size: int,
    rng: np.random.Generator,
    images: np.ndarray,
    forbidden: set[bytes] | None = None,
) -> np.ndarray:
    """Pick ``size // 10`` indices per class from ``pool`` (seeded), skipping forbidden pixels."""
    per_class = size // NUM_CLASSES
    chosen = []
    for c in range(NUM_CLASSES):
        cand = pool[labels[pool] == c]
        cand = cand[rng.permutation(len(cand))]
        picked = []
        for i in cand:
            if len(picked) == per_class:
                break
            if forbidden is not None and images[i].tobytes() in forbidden:
                continue
            picked.append(i)
        chosen.extend(picked)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _select(shared: Path, domain: str, seed: int, n_train: int, n_test: int):
    rng = _rng(seed, domain)
    if domain == "mnist":
        csv = shared / "mnist" / "mnist_5k.csv.gz"
        tr_img, tr_lbl = read_mnist_csv(csv)
        te_img, te_lbl, te_src = _idx_pair(shared, domain, "t10k")
        tr_src = [str(csv.relative_to(shared))]
        method = "train from mnist_5k.csv.gz, test from the official test split"
    elif domain == "kmnist":
        img, lbl, src = _idx_pair(shared, domain, "t10k")
        tr_img, tr_lbl, te_img, te_lbl = img, lbl, img, lbl
        tr_src = te_src = src
        method = "re-split of the official 10k test split (only split available)"
    else:
        tr_img, tr_lbl, tr_src = _idx_pair(shared, domain, "train")
        te_img, te_lbl, te_src = _idx_pair(shared, domain, "t10k")
        method = "subsets of the official train and test splits"

    tr_idx = _balanced(tr_lbl, np.arange(len(tr_lbl)), n_train, rng, tr_img)
    train_pixels = {tr_img[i].tobytes() for i in tr_idx}
    if domain == "kmnist":
        te_pool = np.setdiff1d(np.arange(len(te_lbl)), tr_idx)
    else:
        te_pool = np.arange(len(te_lbl))
    te_idx = _balanced(te_lbl, te_pool, n_test, rng, te_img, forbidden=train_pixels)

    # written in a seeded random order (sources may be sorted by class)
    tr_idx = tr_idx[rng.permutation(len(tr_idx))]
    te_idx = te_idx[rng.permutation(len(te_idx))]
    return {
        "method": method,
        "train": (tr_img[tr_idx], tr_lbl[tr_idx], tr_src, len(tr_lbl)),
        "test": (te_img[te_idx], te_lbl[te_idx], te_src, len(te_lbl)),
    }


def build(shared: Path, out: Path, seed: int, n_train: int, n_test: int, write: bool = True) -> dict:
    manifest: dict = {
        "format": FORMAT_VERSION,
        "generator": "tools/make_offline_data.py",
        "seed": seed,
        "max_train": n_train,
        "max_test": n_test,
        "domains": {},
    }
    blobs: dict[Path, bytes] = {}
    for domain in ("mnist", "fashion-mnist", "kmnist", "glyphs"):
        sel = _select(shared, domain, seed, n_train, n_test)
        entry = {"method": sel["method"], "license": LICENSES[domain], "splits": {}}
        for split in ("train", "test"):
            images, labels, src, source_size = sel[split]
            files = {}
            for kind, arr in (("images", images), ("labels", labels.astype(np.uint8))):
                name = f"{split}-{kind}-{'idx3' if kind == 'images' else 'idx1'}-ubyte.gz"
                data = gzip_bytes(encode_idx(arr))
                blobs[out / domain / name] = data
                files[kind] = {
                    "name": name,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            entry["splits"][split] = {
                "size": int(len(labels)),
                "class_counts": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
                "source_files": src,
                "source_size": int(source_size),
                "files": files,
            }
        if domain == "glyphs" and (shared / "glyphs" / "FONTS.txt").is_file():
            data = gzip_bytes((shared / "glyphs" / "FONTS.txt").read_bytes())
            blobs[out / domain / "FONTS.txt.gz"] = data
            entry["attribution"] = {
                "name": "FONTS.txt.gz",
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        manifest["domains"][domain] = entry
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    blobs[out / "manifest.json"] = text.encode()
    if write:
        for path, data in blobs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    manifest["_total_bytes"] = sum(len(b) for b in blobs.values())
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="full datasets (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--check", action="store_true", help="verify --out matches what would be written")
    args = ap.parse_args(argv)
    if not args.shared.is_dir():
        print(f"error: {args.shared}: not a directory (pass --shared)", file=sys.stderr)
        return 2
    manifest = build(args.shared, args.out, args.seed, args.train_size, args.test_size, write=not args.check)
    if args.check:
        current = args.out / "manifest.json"
        expected = dict(manifest)
        expected.pop("_total_bytes")
        ok = current.is_file() and json.loads(current.read_text()) == expected
        for domain, entry in expected["domains"].items():
            for split in entry["splits"].values():
                for f in split["files"].values():
                    p = args.out / domain / f["name"]
                    ok = ok and p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == f["sha256"]
        print("offline data up to date" if ok else "offline data differs from a fresh build")
        return 0 if ok else 1
    for domain, entry in manifest["domains"].items():
        sizes = "/".join(str(entry["splits"][s]["size"]) for s in ("train", "test"))
        print(f"{domain:14s} {sizes:>10s}  {entry['method']}")
    print(f"wrote {args.out} ({manifest['_total_bytes'] / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
