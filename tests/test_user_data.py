"""Your own data as a domain: folder / npz / IDX datasets, their one-line errors, and a 32×32×3 run
end to end (judge trained on it, labelled samples, report)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2pgan.cli import main
from p2pgan.config import load_scenario
from p2pgan.data import clear_cache, load_domain, partition_clients, to_model_input
from p2pgan.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "own-data.yaml"
SHIPPED = ROOT / "p2pgan" / "resources" / "data" / "shapes32"


def _tool():
    spec = importlib.util.spec_from_file_location("make_example_dataset", ROOT / "tools" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()
CLASSES = list(TOOL.CLASSES)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()  # tmp_path datasets reuse names; never serve one test's data to another
    yield
    clear_cache()


def _scenario(tmp_path: Path, entry: dict, extra: str = "", others: str = "") -> Path:
    """A scenario file in ``tmp_path`` with one user domain ``shapes`` (its YAML written as JSON)."""
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\nseed: 1\ndomains: {{{others}shapes: {json.dumps(entry)}}}\n"
                    "training: {rounds: 1, batch_size: 8}\ncuts: [0, 0, 0, 0]\n" + extra)
    return path


def _entry(path, **over) -> dict:
    return {"clients": 2, "path": str(path), "image_size": 32, "channels": 3, "classes": CLASSES, **over}


def _load(path: Path, split: str):
    scenario = load_scenario(path)
    return load_domain("shapes", split, scenario.data.root, scenario.datasets.get("shapes"))


# ----------------------------------------------------------------------------- the shipped example


def test_shipped_example_is_what_the_tool_writes_and_small():
    assert TOOL.check_folder(SHIPPED, TOOL.make_dataset()) == []
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert len(files) == 400 and sum(p.stat().st_size for p in files) < 1_000_000


def test_folder_dataset_loads_with_class_names_and_shape():
    scenario = load_scenario(SCENARIO)
    entry = scenario.datasets["shapes"]
    assert entry.path == SHIPPED.resolve() and entry.format == "folder"  # relative to the scenario file
    assert tuple(entry.classes) == tuple(CLASSES) and scenario.num_clients == 3
    spec = scenario.model_spec
    assert (spec.image_channels, spec.image_size, spec.num_classes) == (3, 32, 10)
    train = load_domain("shapes", "train", dataset=entry)
    test = load_domain("shapes", "test", dataset=entry)
    assert train.images.shape == (300, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (100, 3, 32, 32)
    assert train.labels.bincount().tolist() == [30] * 10 and test.labels.bincount().tolist() == [10] * 10
    assert "user dataset" in train.source and "300/100 images, 32x32x3" in train.source
    # Pixels are the tool's exactly (PNG is lossless): label i is classes[i], files in name order.
    x_train, y_train = TOOL.make_dataset()["train"]
    assert torch.equal(train.images, torch.from_numpy(x_train.transpose(0, 3, 1, 2)))
    assert torch.equal(train.labels, torch.from_numpy(y_train))
    assert to_model_input(train.images[:2]).shape == (2, 3, 32, 32)
    parts = partition_clients(scenario.client_counts, {"shapes": train.labels}, "non-iid", 1, cap_total=None)
    assert [p.domain for p in parts] == ["shapes"] * 3 and all(p.size > 0 for p in parts)


# ----------------------------------------------------------------------------- npz and idx


def test_npz_dataset_with_and_without_a_test_split(tmp_path):
    data = TOOL.make_dataset(train_per_class=5, test_per_class=2, seed=4)
    TOOL.write_npz(tmp_path / "a.npz", data)
    train = _load(_scenario(tmp_path, _entry("a.npz")), "train")  # format guessed from the suffix
    assert torch.equal(train.images, torch.from_numpy(data["train"][0].transpose(0, 3, 1, 2)))
    assert len(_load(_scenario(tmp_path, _entry("a.npz")), "test")) == 20

    # images + labels only, float in [0, 1], channels first: the split is held out per class.
    x, y = data["train"]
    np.savez(tmp_path / "b.npz", images=x.transpose(0, 3, 1, 2) / 255.0, labels=y)
    path = _scenario(tmp_path, _entry("b.npz", format="npz", test_fraction=0.4))
    train, test = _load(path, "train"), _load(path, "test")
    assert (len(train), len(test)) == (30, 20) and test.labels.bincount().tolist() == [2] * 10
    assert "40% of each class held out" in train.source
    both = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 50  # every image in exactly one split


def test_idx_dataset_grey_28_resized_and_mixed_with_mnist(tmp_path):
    data = TOOL.make_dataset(train_per_class=3, test_per_class=2, seed=5)
    TOOL.write_idx_files(tmp_path / "idx", data)  # RGB 32×32, MNIST file names
    path = _scenario(tmp_path, _entry("idx", image_size=28, channels=1), others="mnist: 1, ")
    scenario = load_scenario(path)
    assert scenario.datasets["shapes"].format == "idx" and scenario.num_clients == 3
    train = _load(path, "train")
    assert train.images.shape == (30, 28, 28)  # grey is stored like the built-in domains
    assert "converted RGB to grey" in train.source and "resized from 32x32" in train.source
    assert load_domain("mnist", "train").images.shape[1:] == train.images.shape[1:]


def test_folder_images_of_other_sizes_and_modes_are_converted(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for c, name in enumerate(["dark", "light"]):
            (tmp_path / "f" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (64, 48), 40 + 150 * c).save(tmp_path / "f" / split / name / f"{i}.png")
    path = _scenario(tmp_path, _entry("f", classes=["dark", "light"]))
    train = _load(path, "train")
    assert train.images.shape == (4, 3, 32, 32) and train.labels.tolist() == [0, 0, 1, 1]
    assert int(train.images[0].float().mean()) == 40 and int(train.images[3].float().mean()) == 190
    assert "resized from 64x48" in train.source and "converted grey to RGB" in train.source
    assert load_scenario(path).model_spec.num_classes == 2


def test_scenario_snapshot_round_trips_a_user_domain():
    from p2pgan.run.processes import load_snapshot, scenario_snapshot

    scenario = load_scenario(SCENARIO)
    again = load_snapshot(*scenario_snapshot(scenario))
    assert again.datasets == scenario.datasets and again.model_spec == scenario.model_spec


# ----------------------------------------------------------------------------- one-line errors


CONFIG_ERRORS = {
    "missing-path": (dict(path="nowhere"), ":domains.shapes.path: dataset not found"),
    "unknown-key": (dict(colour=1), ":domains.shapes.colour: unknown key (expected one of: clients, path"),
    "missing-key": (dict(image_size=None), ":domains.shapes.image_size: required key is missing"),
    "bad-size": (dict(image_size=64), ":domains.shapes.image_size: Input should be 28 or 32"),
    "bad-channels": (dict(channels=2), ":domains.shapes.channels:"),
    "bad-format": (dict(format="png"), ":domains.shapes.format:"),
    "format-vs-path": (dict(format="npz"), ":domains.shapes.format: npz needs an .npz file"),
    "not-npz-file": (dict(path="s.yaml"), ":domains.shapes.path:"),
    "repeated-class": (dict(classes=["a", "a"]), ":domains.shapes.classes: class names must differ"),
    "zero-clients": (dict(clients=0), ":domains.shapes.clients:"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_bad_dataset_entry_is_one_line_naming_the_key(case, tmp_path, capsys):
    over, expected = CONFIG_ERRORS[case]
    entry = {k: v for k, v in {**_entry(SHIPPED), **over}.items() if v is not None}
    path = _scenario(tmp_path, entry)
    assert main(["scenario", "validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{path}{expected}" in lines[0], lines


def test_mixing_shapes_or_using_a_builtin_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"domains\.shapes: its 32x32x3 images with 10 classes differ from "
                                          r"mnist's 28x28x1 images with 10 classes"):
        load_scenario(_scenario(tmp_path, _entry(SHIPPED), others="mnist: 2, "))
    path = tmp_path / "b.yaml"
    path.write_text(f"name: t\ndomains: {{mnist: {json.dumps(_entry(SHIPPED))}}}\n")
    with pytest.raises(ConfigError, match=r"domains\.mnist: mnist is a built-in domain"):
        load_scenario(path)


def _folder_error(tmp_path: Path, build) -> str:
    root = tmp_path / "f"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (i, 0, 0)).save(root / name / f"{i}.png")
    build(root)
    with pytest.raises(DataError) as info:
        _load(_scenario(tmp_path, _entry("f", classes=["a", "b"])), "train")
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith("domains.shapes: ")
    return message


def test_bad_folder_contents_are_one_line_data_errors(tmp_path):
    import shutil

    assert "no subfolder for class 'b'" in _folder_error(tmp_path / "1", lambda r: shutil.rmtree(r / "b"))
    assert "not a class" in _folder_error(tmp_path / "2", lambda r: (r / "c").mkdir())
    assert "cannot read the image" in _folder_error(tmp_path / "3", lambda r: (r / "a" / "x.png").write_text("no"))


def test_bad_npz_contents_are_one_line_data_errors(tmp_path):
    cases = {
        "keys": (dict(pixels=np.zeros((4, 32, 32), np.uint8)), "expected arrays x_train"),
        "label": (dict(images=np.zeros((4, 32, 32), np.uint8), labels=np.array([0, 1, 2, 12])),
                  "label 12 outside 0..9"),
        "count": (dict(images=np.zeros((4, 32, 32), np.uint8), labels=np.array([0, 1])), "4 images but 2 labels"),
        "shape": (dict(images=np.zeros((4, 7, 32, 32), np.uint8), labels=np.arange(4)), "images must be [N, H, W]"),
        "range": (dict(images=np.full((4, 32, 32), 300.0), labels=np.arange(4)), "pixel values must lie in 0..255"),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError) as info:
            _load(_scenario(tmp_path, _entry(f"{name}.npz")), "train")
        assert expected in str(info.value) and str(info.value).startswith("domains.shapes: "), (name, info.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        _load(_scenario(tmp_path, _entry("junk.npz")), "train")


# ----------------------------------------------------------------------------- end to end


def test_32x32x3_user_dataset_run_end_to_end(tmp_path):
    from p2pgan.run.session import run_scenario

    out = tmp_path / "run"
    scenario = load_scenario(SCENARIO, [
        f"output.dir={out}", f"metrics.cache_dir={tmp_path / 'cache'}", "training.rounds=2", "training.local_epochs=1",
        "metrics.every=1", "metrics.score_samples=100", "metrics.utility_samples=200", "metrics.classifier_epochs=3",
        "metrics.utility_epochs=1"])
    outcome = run_scenario(scenario)
    assert outcome.status == "completed", outcome.summary.get("detail")
    final = outcome.summary["metrics"]["domains"]["shapes"]
    assert final["real_accuracy"] > 30  # the judge trained on the 32×32×3 images (chance: 10%)
    assert final["gen_score"] >= 1 and final["fid"] is not None and final["accuracy"] is not None
    assert "user dataset" in outcome.summary["environment"]["data_sources"]["shapes"]
    for grid in (out / "samples" / "shapes.png", out / "samples" / "round-2" / "shapes.png"):
        with Image.open(grid) as img:  # 10 rows of 4 RGB 32×32 samples, 2 px padding
            assert img.mode == "RGB" and img.size == (2 + 4 * 34, 2 + 10 * 34)
    report = (out / "report.md").read_text()
    assert "report-figures/samples-shapes.png" in report and "user dataset" in report
    assert (out / "report-figures" / "samples-shapes.png").is_file() and (out / "report.html").stat().st_size > 10_000
    from p2pgan.report.load import load_run

    assert load_run(out).info.class_names["shapes"] == tuple(CLASSES)  # the labelled grid's row names
