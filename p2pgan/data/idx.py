"""Readers and a writer for the MNIST IDX format, and a reader for MNIST-style CSV files.

IDX layout (big-endian): two zero bytes, a type code, the number of dimensions ``d``, then ``d``
uint32 sizes, then the values in C order. Files may be gzip-compressed; compression is detected
from the content (magic bytes ``1f 8b``), not from the file name.

Every problem with a file (missing, unreadable, corrupt gzip, bad magic, wrong rank, wrong length,
bad CSV row) raises :class:`p2pgan.errors.DataError` with a one-line message that starts with the
file's path.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from p2pgan.errors import DataError

__all__ = [
    "IDX_TYPES",
    "read_idx",
    "parse_idx",
    "read_idx_images",
    "read_idx_labels",
    "write_idx",
    "encode_idx",
    "gzip_bytes",
    "read_mnist_csv",
    "find_idx_pair",
    "IDX_SPLIT_STEMS",
]

IDX_SPLIT_STEMS = {"train": ("train",), "test": ("t10k", "test")}
"""File-name stems of each split: ``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, ..."""

# type code -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_FOR_KIND: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in IDX_TYPES.items()
}

_GZIP_MAGIC = b"\x1f\x8b"


def _fail(path: str | os.PathLike[str], problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file, transparently gunzipping it if its content is gzip."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise _fail(p, "file not found") from None
    except IsADirectoryError:
        raise _fail(p, "is a directory, expected a file") from None
    except OSError as exc:
        raise _fail(p, f"cannot read ({exc.strerror or exc})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _fail(p, f"corrupt gzip data ({detail})") from None
    return raw


def parse_idx(data: bytes, name: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian numpy array (validated)."""
    if len(data) < 4:
        raise _fail(name, f"too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise _fail(name, f"bad IDX magic 0x{data[:4].hex()} (not an IDX file)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise _fail(name, f"unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise _fail(name, "IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(name, f"truncated IDX header (needs {header_len} bytes, file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        shape = "x".join(str(d) for d in dims)
        what = "truncated" if actual < expected else "trailing bytes"
        raise _fail(
            name, f"{what}: shape {shape} needs {expected} data bytes, file has {actual}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array."""
    return parse_idx(_read_bytes(path), path)


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file: unsigned bytes, rank 3 ``[N, H, W]``."""
    arr = read_idx(path)
    if arr.dtype != np.uint8:
        raise _fail(path, f"image file must hold unsigned bytes (type 0x08), found {arr.dtype}")
    if arr.ndim != 3:
        raise _fail(path, f"image file must have 3 dimensions [N, H, W], found {arr.ndim}")
    return arr


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file: unsigned bytes, rank 1 ``[N]``."""
    arr = read_idx(path)
    if arr.dtype != np.uint8:
        raise _fail(path, f"label file must hold unsigned bytes (type 0x08), found {arr.dtype}")
    if arr.ndim != 1:
        raise _fail(path, f"label file must have 1 dimension [N], found {arr.ndim}")
    return arr


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a numpy array as uncompressed IDX bytes."""
    arr = np.asarray(array)
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {arr.ndim}")
    code = _CODE_FOR_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(f"dtype {arr.dtype} has no IDX type code")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes()


def gzip_bytes(data: bytes, level: int = 9) -> bytes:
    """Gzip with mtime 0 and no file name, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip (reproducibly, mtime 0) if ``compress`` or the name ends in .gz."""
    p = Path(path)
    if compress is None:
        compress = p.suffix == ".gz"
    data = encode_idx(array)
    if compress:
        data = gzip_bytes(data)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def find_idx_pair(directory: Path, stems: tuple[str, ...]) -> tuple[Path, Path] | None:
    """The ``<stem>-images-idx3-ubyte[.gz]`` / ``<stem>-labels-idx1-ubyte[.gz]`` pair in
    ``directory`` (``.`` also accepted for the ``-`` before ``idx``), for the first stem that has
    one; ``None`` when there is none, :class:`DataError` when one file lacks its partner."""
    for stem in stems:
        img_names = [f"{stem}-images{sep}idx3-ubyte{gz}" for sep in "-." for gz in ("", ".gz")]
        lbl_names = [f"{stem}-labels{sep}idx1-ubyte{gz}" for sep in "-." for gz in ("", ".gz")]
        images = next((directory / n for n in img_names if (directory / n).is_file()), None)
        labels = next((directory / n for n in lbl_names if (directory / n).is_file()), None)
        if images and labels:
            return images, labels
        if images or labels:
            have, missing = (images, lbl_names[0]) if images else (labels, img_names[0])
            raise _fail(have, f"found without its partner file {missing}[.gz] in {directory}")
    return None


def _is_int(field: str) -> bool:
    f = field.strip()
    return f.lstrip("+-").isdigit() and f.count("-") + f.count("+") <= 1


def read_mnist_csv(
    path: str | os.PathLike[str], height: int = 28, width: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """Read CSV rows of ``height*width`` pixel values 0-255 followed by the label (last column).

    A header line (first field not a number) is skipped. Returns ``(images uint8 [N, H, W],
    labels int64 [N])``.
    """
    text = _read_bytes(path)
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise _fail(path, "not a text CSV file (non-ASCII bytes)") from None
    start = 0
    if lines and not _is_int(lines[0].split(",", 1)[0]):
        start = 1  # header row
    ncols = height * width + 1
    body = [(i, ln) for i, ln in enumerate(lines) if i >= start and ln.strip()]
    if not body:
        raise _fail(path, "no data rows")
    for lineno, line in body:
        n = line.count(",") + 1
        if n != ncols:
            raise _fail(
                path, f"line {lineno + 1}: expected {ncols} values (pixels then label), found {n}"
            )
    try:
        table = np.loadtxt(
            io.StringIO("\n".join(ln for _, ln in body)), delimiter=",", dtype=np.int64, ndmin=2
        )
    except ValueError:
        for lineno, line in body:
            for field in line.split(","):
                if not _is_int(field):
                    raise _fail(
                        path, f"line {lineno + 1}: non-integer value {field.strip()[:20]!r}"
                    ) from None
        raise _fail(path, "unparseable CSV data") from None
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        r = int(np.argwhere((pixels < 0) | (pixels > 255))[0, 0])
        raise _fail(path, f"line {body[r][0] + 1}: pixel value outside 0..255")
    if labels.min() < 0:
        r = int(np.argmax(labels < 0))
        raise _fail(path, f"line {body[r][0] + 1}: negative label {int(labels[r])}")
    images = pixels.astype(np.uint8).reshape(-1, height, width)
    return images, labels.astype(np.int64)
