"""Tests for p2pgan.data: IDX/CSV I/O, the domain registry, offline copies and partitioners."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow running without an installed package
    sys.path.insert(0, str(ROOT))

from p2pgan.data import (
    EXCLUSION_TABLE,
    SIZE_RATIO_TABLE,
    ClientPartition,
    DomainData,
    describe_domains,
    domain_names,
    load_domain,
    partition_clients,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_mnist_csv,
    to_model_input,
    write_idx,
)
from p2pgan.data import registry
from p2pgan.data.idx import encode_idx, gzip_bytes
from p2pgan.data.partition import apportion
from p2pgan.errors import DataError

SHARED = ROOT.parent / "shared" / "data"
DOMAINS = ["mnist", "fashion-mnist", "kmnist", "glyphs"]


# ----------------------------------------------------------------------------- IDX / CSV


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx_images(path)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)


def test_idx_round_trip_other_types_and_gzip_detection(tmp_path):
    for arr in (np.arange(12, dtype=np.int32).reshape(3, 4), np.linspace(0, 1, 5, dtype=np.float64)):
        p = write_idx(tmp_path / "x.bin", arr, compress=True)  # gz content, name without .gz
        np.testing.assert_array_equal(read_idx(p), arr)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    p = write_idx(tmp_path / "l-idx1-ubyte", labels)
    np.testing.assert_array_equal(read_idx_labels(p), labels)


def test_gzip_is_reproducible():
    data = encode_idx(np.arange(100, dtype=np.uint8))
    assert gzip_bytes(data) == gzip_bytes(data)
    assert gzip.decompress(gzip_bytes(data)) == data


def _good_idx() -> bytes:
    return encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "too short"),
        (b"\x12\x34\x08\x03" + _good_idx()[4:], "magic"),
        (b"\x00\x00\x07\x03" + _good_idx()[4:], "type code"),
        (_good_idx()[:10], "truncated"),
        (_good_idx()[:-1], "truncated"),
        (_good_idx() + b"\x00", "trailing"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (gzip_bytes(_good_idx())[:-8], "gzip"),
    ],
)
def test_malformed_idx_raises_dataerror_naming_file(tmp_path, content, needle):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(content)
    with pytest.raises(DataError) as exc:
        read_idx_images(p)
    msg = str(exc.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_idx_wrong_rank_and_missing_file(tmp_path):
    p = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="3 dimensions"):
        read_idx_images(p)
    q = write_idx(tmp_path / "imgs", np.zeros((2, 3, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="1 dimension"):
        read_idx_labels(q)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


def _csv_rows(n: int, rng) -> list[str]:
    rows = []
    for i in range(n):
        px = rng.integers(0, 256, 784)
        rows.append(",".join(map(str, px)) + f",{i % 10}")
    return rows


def test_csv_reader(tmp_path):
    rng = np.random.default_rng(1)
    rows = _csv_rows(5, rng)
    p = tmp_path / "m.csv.gz"
    p.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    images, labels = read_mnist_csv(p)
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4] and labels.dtype == np.int64
    assert images[2].ravel().tolist() == [int(v) for v in rows[2].split(",")[:-1]]
    # header line is skipped
    q = tmp_path / "h.csv"
    q.write_text("\n".join([",".join(f"p{i}" for i in range(784)) + ",label"] + rows))
    assert read_mnist_csv(q)[0].shape == (5, 28, 28)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r[:1] + [r[1] + ",0"] + r[2:], "line 2: expected 785 values"),
        (lambda r: r[:2] + [r[2].replace(",", ",x", 1)] + r[3:], "line 3: non-integer"),
        (lambda r: r[:1] + ["300" + r[1][r[1].index(","):]] + r[2:], "line 2: pixel value outside"),
        (lambda r: [], "no data rows"),
    ],
)
def test_malformed_csv_raises_dataerror(tmp_path, mutate, needle):
    rows = mutate(_csv_rows(3, np.random.default_rng(2)))
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(rows))
    with pytest.raises(DataError) as exc:
        read_mnist_csv(p)
    assert str(p) in str(exc.value) and needle in str(exc.value)


# ----------------------------------------------------------------------------- registry / offline


@pytest.mark.parametrize("domain", DOMAINS)
def test_offline_copies_load(domain):
    assert domain in domain_names()
    train, test = load_domain(domain, "train"), load_domain(domain, "test")
    for d, n in ((train, 5000), (test, 1000)):
        assert isinstance(d, DomainData) and d.domain == domain
        assert d.images.dtype == torch.uint8 and d.images.shape == (n, 28, 28)
        assert d.labels.dtype == torch.int64 and d.labels.shape == (n,) and len(d) == n
        assert int(d.labels.min()) == 0 and int(d.labels.max()) == 9
        assert torch.bincount(d.labels, minlength=10).tolist() == [n // 10] * 10
        assert "offline" in d.source
        assert d.images.float().std() > 10  # real images, not blanks
    # no identical image in both splits
    train_px = {bytes(x) for x in train.images.reshape(len(train), -1).numpy()}
    assert not any(bytes(x) in train_px for x in test.images.reshape(len(test), -1).numpy())


def test_offline_manifest_matches_files():
    manifest = json.loads((registry.OFFLINE_DIR / "manifest.json").read_text())
    total = 0
    for domain in DOMAINS:
        entry = manifest["domains"][domain]
        for split, n in (("train", 5000), ("test", 1000)):
            info = entry["splits"][split]
            assert info["size"] == n and sum(info["class_counts"]) == n
            for f in info["files"].values():
                data = (registry.OFFLINE_DIR / domain / f["name"]).read_bytes()
                total += len(data)
                assert hashlib.sha256(data).hexdigest() == f["sha256"]
    assert total < 8_000_000


def test_unknown_domain_and_split():
    with pytest.raises(DataError, match="mnist, fashion-mnist, kmnist, glyphs"):
        load_domain("cifar10", "train")
    with pytest.raises(DataError, match="split"):
        load_domain("mnist", "val")
    assert load_domain("fmnist", "test").domain == "fashion-mnist"


def test_to_model_input():
    x = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    y = to_model_input(x)
    assert y.dtype == torch.float32 and y.shape == (1, 1, 2, 2)
    assert y.min() == -1.0 and y.max() == 1.0
    assert to_model_input(load_domain("mnist", "test").images[:3]).shape == (3, 1, 28, 28)
    with pytest.raises(TypeError):
        to_model_input(x.float())


def _write_tree(directory: Path, n_train: int, n_test: int, test_stem: str, gz: bool, seed: int):
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    for stem, n in (("train", n_train), (test_stem, n_test)):
        write_idx(directory / f"{stem}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{stem}-labels-idx1-ubyte{sfx}", (np.arange(n) % 10).astype(np.uint8))


def test_data_root_domain_dir_layout(tmp_path):
    _write_tree(tmp_path / "kmnist", 30, 20, "t10k", gz=True, seed=3)
    train = load_domain("kmnist", "train", tmp_path)
    test = load_domain("kmnist", "test", tmp_path)
    assert (len(train), len(test)) == (30, 20)
    assert train.source == str(tmp_path / "kmnist")
    assert train.images.shape == (30, 28, 28) and train.labels.tolist()[:3] == [0, 1, 2]


def test_data_root_torchvision_layout(tmp_path):
    _write_tree(tmp_path / "FashionMNIST" / "raw", 40, 10, "t10k", gz=False, seed=4)
    _write_tree(tmp_path / "MNIST" / "raw", 11, 12, "t10k", gz=True, seed=5)
    info = {i.domain: i for i in describe_domains(tmp_path)}
    assert (info["fashion-mnist"].train_size, info["fashion-mnist"].test_size) == (40, 10)
    assert info["fashion-mnist"].source == str(tmp_path / "FashionMNIST" / "raw")
    assert (info["mnist"].train_size, info["mnist"].test_size) == (11, 12)
    # domains absent from the root fall back to the offline copy and say so
    assert "offline" in info["glyphs"].source and str(tmp_path) in info["glyphs"].source
    assert info["glyphs"].train_size == 5000


def test_data_root_partial_domain_falls_back(tmp_path):
    _write_tree(tmp_path / "glyphs", 0, 10, "test", gz=True, seed=6)
    (tmp_path / "glyphs" / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "glyphs" / "train-labels-idx1-ubyte.gz").unlink()
    d = load_domain("glyphs", "test", tmp_path)
    assert len(d) == 1000 and "offline" in d.source and "only the test split" in d.source


def test_data_root_mnist_csv_train(tmp_path):
    rows = _csv_rows(20, np.random.default_rng(7))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist_5k.csv").write_text("\n".join(rows))
    rng = np.random.default_rng(8)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    assert len(load_domain("mnist", "train", tmp_path)) == 20
    assert len(load_domain("mnist", "test", tmp_path)) == 10


def test_data_root_malformed_raises(tmp_path):
    _write_tree(tmp_path / "kmnist", 10, 10, "t10k", gz=False, seed=9)
    write_idx(tmp_path / "kmnist" / "t10k-labels-idx1-ubyte", np.full(10, 12, dtype=np.uint8))
    with pytest.raises(DataError, match="label 12"):
        load_domain("kmnist", "test", tmp_path)
    write_idx(tmp_path / "kmnist" / "train-images-idx3-ubyte", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="32x32"):
        load_domain("kmnist", "train", tmp_path)


def test_system_dir_used_for_fashion(tmp_path, monkeypatch):
    _write_tree(tmp_path / "sys", 15, 5, "t10k", gz=True, seed=10)
    monkeypatch.setitem(registry.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "sys",))
    registry.clear_cache()
    try:
        d = load_domain("fashion-mnist", "train")
        assert len(d) == 15 and str(tmp_path / "sys") in d.source
    finally:
        monkeypatch.undo()
        registry.clear_cache()


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared datasets not present")
def test_offline_copy_is_what_the_tool_selects():
    spec = importlib.util.spec_from_file_location("make_offline_data", ROOT / "tools" / "make_offline_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    manifest = json.loads((registry.OFFLINE_DIR / "manifest.json").read_text())
    for domain in ("mnist", "kmnist"):
        sel = tool._select(SHARED, domain, manifest["seed"], manifest["max_train"], manifest["max_test"])
        for split in ("train", "test"):
            images, labels = sel[split][0], sel[split][1]
            d = load_domain(domain, split)
            np.testing.assert_array_equal(d.images.numpy(), images)
            np.testing.assert_array_equal(d.labels.numpy(), labels)
            data = gzip_bytes(encode_idx(labels.astype(np.uint8)))
            assert hashlib.sha256(data).hexdigest() == manifest["domains"][domain]["splits"][split]["files"]["labels"]["sha256"]


# ----------------------------------------------------------------------------- partitions


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 10).astype(np.int64)


def _check_common(parts: list[ClientPartition], mix: dict[str, int], labels: dict[str, np.ndarray]):
    assert [p.client_id for p in parts] == [f"c{i:03d}" for i in range(sum(mix.values()))]
    assert [p.domain for p in parts] == [d for d, n in mix.items() for _ in range(n)]
    for domain in mix:
        mine = [p for p in parts if p.domain == domain]
        allidx = np.concatenate([p.indices for p in mine])
        assert len(np.unique(allidx)) == len(allidx), "indices overlap across clients"
        assert allidx.min() >= 0 and allidx.max() < len(labels[domain])
        for p in mine:
            assert p.size >= 1 and p.indices.dtype == np.int64
            assert not np.isin(labels[domain][p.indices], p.excluded_labels).any()


def test_partition_iid():
    labels = {"mnist": _labels(5000), "glyphs": _labels(5000, 1)}
    mix = {"mnist": 10, "glyphs": 7}
    parts = partition_clients(mix, labels, "iid", seed=1)
    _check_common(parts, mix, labels)
    for p in parts:
        assert p.excluded_labels == () and p.size_ratio == 1.0
    sizes = Counter(p.domain for p in parts)
    assert sizes == {"mnist": 10, "glyphs": 7}
    assert {p.size for p in parts if p.domain == "mnist"} == {500}
    assert {p.size for p in parts if p.domain == "glyphs"} <= {714, 715}
    # the whole train set is used when the cap does not bind
    assert sum(p.size for p in parts if p.domain == "mnist") == 5000


def test_partition_iid_cap():
    labels = {"a": _labels(60000), "b": _labels(60000, 1)}
    parts = partition_clients({"a": 10, "b": 10}, labels, "iid", seed=0)
    assert all(p.size == 60000 // 20 for p in parts)  # chunk 6000, capped at 3000


@pytest.mark.parametrize("kind", ["non-iid", "highly-non-iid"])
def test_partition_table_statistics(kind):
    n = 400
    labels = {"mnist": _labels(120_000)}
    mix = {"mnist": n}
    parts = partition_clients(mix, labels, kind, seed=123)
    _check_common(parts, mix, labels)
    # exclusion-count frequencies ≈ normalised probabilities
    table = EXCLUSION_TABLE[kind]
    z = sum(table.values())
    freq = Counter(len(p.excluded_labels) for p in parts)
    assert set(freq) <= set(table)
    for k, prob in table.items():
        q = prob / z
        assert abs(freq[k] / n - q) < 4 * (q * (1 - q) / n) ** 0.5, (k, freq[k] / n, q)
    # excluded labels chosen uniformly: every label excluded about equally often
    lab_freq = Counter(c for p in parts for c in p.excluded_labels)
    mean = sum(lab_freq.values()) / 10
    assert all(abs(lab_freq[c] - mean) < 0.3 * mean for c in range(10))
    # size ratios: exact shares (largest remainder) per domain
    ratio_counts = Counter(p.size_ratio for p in parts)
    for ratio, share in SIZE_RATIO_TABLE[kind]:
        assert ratio_counts[float(ratio)] == round(share * n)
    # caps respected: chunk = 300, base cap = 60000 // 400 = 150
    base = 60000 // n
    for p in parts:
        assert p.size <= int(base * p.size_ratio + 1e-9)
    if kind == "highly-non-iid":
        assert {p.size for p in parts if p.size_ratio < 0.2} == {25}


def test_partition_ratio_shares_per_domain_small():
    labels = {"mnist": _labels(5000), "fashion-mnist": _labels(5000, 1)}
    parts = partition_clients({"mnist": 10, "fashion-mnist": 10}, labels, "non-iid", seed=5)
    for d in labels:
        c = Counter(p.size_ratio for p in parts if p.domain == d)
        assert c == {2 / 3: 3, 1.0: 7}
    parts = partition_clients({"mnist": 10}, labels, "highly-non-iid", seed=5)
    assert Counter(p.size_ratio for p in parts) == {1 / 6: 2, 1 / 3: 3, 1.0: 5}
    assert apportion(3, [0.2, 0.3, 0.5]) == [1, 1, 1]
    assert apportion(2, [0.3, 0.7]) == [1, 1]


def test_partition_cap_total_none_scales_to_data():
    labels = {"mnist": _labels(5000)}
    parts = partition_clients({"mnist": 10}, labels, "highly-non-iid", seed=2, cap_total=None)
    for p in parts:
        assert p.size <= int(500 * p.size_ratio + 1e-9)
    assert min(p.size for p in parts) <= 500 // 6


def test_partition_determinism_and_domain_independence():
    labels = {"mnist": _labels(5000), "kmnist": _labels(5000, 2), "glyphs": _labels(5000, 3)}
    for kind, alpha in (("iid", None), ("non-iid", None), ("highly-non-iid", None), ("dirichlet", 0.5)):
        a = partition_clients({"mnist": 8, "kmnist": 8}, labels, kind, seed=7, alpha=alpha)
        b = partition_clients({"mnist": 8, "kmnist": 8}, labels, kind, seed=7, alpha=alpha)
        c = partition_clients({"mnist": 8, "kmnist": 8}, labels, kind, seed=8, alpha=alpha)
        assert a == b
        assert a != c
        # adding a domain leaves the other domains' draws alone (caps do not bind here)
        d = partition_clients({"mnist": 8, "kmnist": 8, "glyphs": 4}, labels, kind, seed=7, alpha=alpha)
        assert a == d[:16]


def test_partition_dirichlet_alpha():
    labels = {"mnist": _labels(5000)}

    def skew(alpha):
        parts = partition_clients({"mnist": 10}, labels, "dirichlet", seed=3, alpha=alpha)
        _check_common(parts, {"mnist": 10}, labels)
        hists = np.stack([np.bincount(labels["mnist"][p.indices], minlength=10) / p.size for p in parts])
        return np.abs(hists - 0.1).sum(axis=1).mean(), parts

    s_big, parts_big = skew(1000.0)
    s_small, parts_small = skew(0.05)
    assert s_big < 0.1 and all(p.excluded_labels == () for p in parts_big)
    assert s_small > 0.8 and any(len(p.excluded_labels) >= 3 for p in parts_small)
    for p in parts_small:
        present = set(np.unique(labels["mnist"][p.indices]).tolist())
        assert set(p.excluded_labels) == set(range(10)) - present
    assert sum(p.size for p in parts_big) == 5000


def test_partition_errors():
    labels = {"mnist": _labels(5000)}
    with pytest.raises(ValueError, match="partition kind"):
        partition_clients({"mnist": 2}, labels, "sorted", seed=0)
    with pytest.raises(ValueError, match="alpha"):
        partition_clients({"mnist": 2}, labels, "dirichlet", seed=0)
    with pytest.raises(ValueError, match="no train labels"):
        partition_clients({"kmnist": 2}, labels, "iid", seed=0)
    with pytest.raises(ValueError, match="at least one"):
        partition_clients({"mnist": 20}, {"mnist": _labels(10)}, "iid", seed=0)
    # clients of 1 example each with labels excluded -> some client ends up empty
    with pytest.raises(ValueError, match="no examples left"):
        partition_clients({"mnist": 50}, {"mnist": _labels(50)}, "highly-non-iid", seed=0)


def test_partition_accepts_torch_labels_from_registry():
    train = load_domain("glyphs", "train")
    parts = partition_clients({"glyphs": 5}, {"glyphs": train.labels}, "non-iid", seed=0)
    _check_common(parts, {"glyphs": 5}, {"glyphs": train.labels.numpy()})
