"""``logging: {tensorboard: true}`` (p2pgan/run/tensorboard.py): the event files of a real run, read
back with TensorBoard's own reader, hold exactly what the results files hold (steps.jsonl,
rounds.jsonl, metrics.jsonl, final_metrics.json, latency.json); a resumed run's event files equal
an uninterrupted run's, with one value per step; a missing extra is a one-line ConfigError."""

from __future__ import annotations

import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import p2pgan
from p2pgan.cli import main
from p2pgan.errors import ConfigError
from p2pgan.run.checkpoint import ResumePoint, rewind_results
from p2pgan.run.session import run_scenario
from p2pgan.run.tensorboard import EVENT_FILES, TensorBoardLog, read_scalars, rewind_event_files, tensorboard_dir

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
STEPS_PER_ROUND = 2
SETTINGS = {"training.rounds": 3, "training.max_batches_per_epoch": STEPS_PER_ROUND,
            "domains": {"mnist": 1, "fashion-mnist": 1}, "metrics.enabled": True, "metrics.every": 2,
            "metrics.score_samples": 50, "metrics.utility": False, "metrics.classifier_epochs": 1,
            "logging.tensorboard": True}
LOSSES = ("d_loss", "g_loss", "d_real", "d_fake")


@pytest.fixture(scope="module")
def settings(judges_dir) -> dict:
    return {**SETTINGS, "metrics.cache_dir": str(judges_dir)}  # the session's judges (tests/conftest.py)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, settings) -> Path:
    out = tmp_path_factory.mktemp("tensorboard") / "whole"
    run = p2pgan.run_scenario(p2pgan.load_scenario(QUICK, settings), out=out)
    assert run.completed and run.paths.tensorboard == out / "tensorboard"
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_scalars(out: Path) -> dict[str, dict[int, float]]:
    """What the results files say each tag holds, at which step."""
    expected: dict[str, dict[int, float]] = defaultdict(dict)
    per_iteration: dict[int, list[dict]] = defaultdict(list)
    for line in _lines(out / "steps.jsonl"):
        iteration = (line["round"] - 1) * STEPS_PER_ROUND + line["step"] + 1
        per_iteration[iteration].append(line)
        for loss in LOSSES:
            expected[f"client/{line['node']}/{loss}"][iteration] = line[loss]
    for iteration, lines in per_iteration.items():
        for loss in LOSSES:
            expected[f"train/{loss}"][iteration] = sum(line[loss] for line in lines) / len(lines)
    for record in _lines(out / "rounds.jsonl"):
        for domain, losses in record["losses"].items():
            for loss, value in losses.items():
                expected[f"round/{domain}/{loss}"][record["round"]] = value
        expected["clusters/count"][record["round"]] = len(set(record["clusters"].values()))
    for record in _lines(out / "metrics.jsonl"):
        for domain, scores in record["domains"].items():
            expected[f"score/{domain}/gen_score"][record["round"]] = scores["gen_score"]
            expected[f"score/{domain}/fid"][record["round"]] = scores["fid"]
        if record["ari"] is not None:
            expected["score/ari"][record["round"]] = record["ari"]
    final = json.loads((out / "final_metrics.json").read_text())
    for domain, row in final["domains"].items():
        for metric, value in row.items():
            if metric != "cluster" and value is not None:
                expected[f"final/{domain}/{metric}"][final["round"]] = value
    if final["ari"] is not None:
        expected["final/ari"][final["round"]] = final["ari"]
    for entry in json.loads((out / "latency.json").read_text())["rounds"]:
        expected["latency/round_s"][entry["round"]] = entry["seconds"]
        expected["latency/federate_s"][entry["round"]] = entry["federate_s"]
    return expected


def values(scalars: dict[str, dict[int, tuple[float, float]]]) -> dict[str, dict[int, float]]:
    return {tag: {step: value for step, (_, value) in steps.items()} for tag, steps in scalars.items()}


def assert_one_value_per_step(folder: Path) -> None:
    """Read as TensorBoard reads, but keeping everything: no step written twice."""
    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    accumulator.Reload()
    for tag in accumulator.Tags()[SCALARS]:
        steps = [event.step for event in accumulator.Scalars(tag)]
        assert len(steps) == len(set(steps)), tag


def test_event_files_hold_what_the_results_files_hold(whole):
    folder = whole / "tensorboard"
    assert len(list(folder.glob(EVENT_FILES))) == 1
    written = values(read_scalars(folder))
    expected = expected_scalars(whole)
    assert "score/mnist/fid" in expected and "final/fashion-mnist/gen_score" in expected  # metrics did run
    assert set(written) == set(expected) | {"latency/simulated_s"}
    for tag, steps in expected.items():
        assert written[tag] == pytest.approx(steps, rel=1e-6), tag  # float32 in the event file
    assert sorted(written["train/g_loss"]) == list(range(1, 3 * STEPS_PER_ROUND + 1))
    estimate = written["latency/simulated_s"]  # the run's own estimate, cumulative
    assert sorted(estimate) == [1, 2, 3] and estimate[1] > 0 and estimate[1] < estimate[2] < estimate[3]
    assert_one_value_per_step(folder)
    assert json.loads((whole / "summary.json").read_text())["tensorboard"] == {"dir": str(folder)}


def test_a_resumed_run_writes_the_same_scalars_once(whole, settings, tmp_path):
    """The uninterrupted run cut back to its round-1 checkpoint and resumed: its event files held
    rounds 2-3 and the final scalars; afterwards they equal the uninterrupted run's."""
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    before = read_scalars(resumed / "tensorboard")
    assert max(before["train/d_loss"]) == 3 * STEPS_PER_ROUND and "final/mnist/fid" in before
    rewind_results(resumed, 1)
    scenario = p2pgan.load_scenario(QUICK, {**settings, "output.dir": str(resumed)})
    outcome = run_scenario(scenario, resume=ResumePoint(resumed, 1))
    assert outcome.status == "completed"
    folder = resumed / "tensorboard"
    assert len(list(folder.glob(EVENT_FILES))) == 1
    assert_one_value_per_step(folder)
    written, reference = values(read_scalars(folder)), values(read_scalars(whole / "tensorboard"))
    assert set(written) == set(reference)
    for tag, steps in reference.items():
        assert written[tag] == pytest.approx(steps, rel=1e-6), tag
    # Round 1's scalars were kept from the first run (their wall times), not written again.
    kept = read_scalars(folder)["train/d_loss"]
    assert kept[1][0] == before["train/d_loss"][1][0] and kept[3][0] > before["train/d_loss"][3][0]


def _write(folder: Path, tag: str, points: dict[int, float]) -> None:
    writer = SummaryWriter(log_dir=str(folder))
    for step, value in points.items():
        writer.add_scalar(tag, value, global_step=step)
    writer.close()


def test_a_rewind_cut_short_can_be_repeated(tmp_path):
    """A rewind killed after writing its new file but before removing the old ones leaves both;
    the next rewind keeps one value per step (the newest file's)."""
    _write(tmp_path, "train/d_loss", {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})
    _write(tmp_path, "train/d_loss", {1: 1.5, 2: 2.5})
    _write(tmp_path, "round/mnist/d_loss", {1: 10.0, 2: 20.0})
    _write(tmp_path, "final/mnist/fid", {2: 99.0})
    writers = []

    def open_writer():
        writers.append(SummaryWriter(log_dir=str(tmp_path)))
        return writers[-1]

    rewind_event_files(tmp_path, 1, 2, open_writer)  # after round 1 of 2-iteration rounds
    writers[0].close()
    assert len(list(tmp_path.glob(EVENT_FILES))) == 1
    assert values(read_scalars(tmp_path)) == {"train/d_loss": {1: 1.5, 2: 2.5}, "round/mnist/d_loss": {1: 10.0}}


def test_a_fresh_run_replaces_the_event_files_in_its_folder(tmp_path):
    _write(tmp_path, "stale/x", {1: 1.0})
    (tmp_path / "notes.txt").write_text("kept")
    TensorBoardLog(tmp_path, 2, {}, tmp_path, bus=None, fresh=False)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob(EVENT_FILES))) == 1  # a resumed run's folder is left to its rewind
    TensorBoardLog(tmp_path, 2, {}, tmp_path, bus=None, fresh=True)  # type: ignore[arg-type]
    assert not list(tmp_path.glob(EVENT_FILES)) and (tmp_path / "notes.txt").read_text() == "kept"


def test_logging_section_paths_and_keys(tmp_path):
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(QUICK.read_text() + "logging:\n  tensorboard: true\n  dir: tb\n")
    scenario = p2pgan.load_scenario(scenario_file, {"output.dir": str(tmp_path / "out")})
    assert tensorboard_dir(scenario) == tmp_path / "tb"  # relative to the scenario file, as every path
    default = p2pgan.load_scenario(QUICK, {"logging.tensorboard": True, "output.dir": str(tmp_path / "out")})
    assert tensorboard_dir(default) == tmp_path / "out" / "tensorboard"
    assert p2pgan.load_scenario(QUICK).logging.tensorboard is False
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"quick.yaml:logging.dir: .* is a file \(expected a folder\)"):
        p2pgan.load_scenario(QUICK, {"logging.dir": str(tmp_path / "file")})
    with pytest.raises(ConfigError, match=r"logging.tensorbord: unknown key .*valid under logging: tensorboard, dir"):
        p2pgan.load_scenario(QUICK, {"logging.tensorbord": True})


def test_without_the_extra_tensorboard_true_is_one_line_at_validate(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: find_spec answers None
    with pytest.raises(ConfigError) as refused:
        p2pgan.load_scenario(QUICK, {"logging.tensorboard": True})
    assert str(refused.value) == (f"{QUICK}:logging.tensorboard: needs the optional extra: "
                                  "pip install -e '.[tensorboard]'")
    assert p2pgan.load_scenario(QUICK, {"logging.tensorboard": False}).logging.tensorboard is False
    assert main(["scenario", "validate", str(QUICK), "--set", "logging.tensorboard=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logging.tensorboard: needs the optional extra" in err
