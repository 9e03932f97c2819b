"""The Python API (p2pgan/api.py, docs/api.md): examples/api_quickstart.py run as a user runs it,
what it printed checked against the results folder read back as objects; scenario loading with
the ``--set`` key language and its errors; the results folder claim; a light ``import p2pgan``."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import p2pgan
from p2pgan.config.loader import load_scenario as load_file
from p2pgan.errors import ConfigError
from p2pgan.report.load import ResultsError
from p2pgan.run.results import jsonable

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
EXAMPLE = ROOT / "examples" / "api_quickstart.py"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, request, judges_dir) -> tuple[Path, str]:
    """``python examples/api_quickstart.py OUT``: its results folder and what it printed."""
    out = tmp_path_factory.mktemp("api") / "quick"
    cache = getattr(request.config, "cache", None)
    xdg = cache.mkdir("p2pgan-xdg-cache") if cache is not None else tmp_path_factory.mktemp("xdg")
    judges = xdg / "p2pgan" / "classifiers"  # where the example's run keeps its judges: the session's ones
    if judges.is_symlink():
        judges.unlink()
    if not judges.exists():  # (a real folder there is an older session's cache of the same judges)
        judges.parent.mkdir(parents=True, exist_ok=True)
        judges.symlink_to(judges_dir, target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(xdg)}  # judges trained once, kept
    done = subprocess.run([sys.executable, str(EXAMPLE), str(out)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_the_quickstart_example_prints_what_the_results_folder_holds(example_run):
    out, printed = example_run
    run = p2pgan.open_results(out)
    assert run.status == "completed" and run.completed
    assert run.summary.rounds_completed == run.summary.rounds_planned == 2
    lines = printed.splitlines()
    assert lines[0] == "scenario quick: 6 clients over mnist, fashion-mnist, 2 rounds"
    assert lines[1].startswith("status completed: 2 rounds in ")
    for client in run.plan.clients:
        assert (f"client {client.id} {client.domain} cut {''.join(map(str, client.cut))} {client.examples} examples"
                in lines)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    shown = [line for line in lines if line.startswith("round ")]
    assert len(shown) == 2 * 2  # rounds x domains
    for record in rounds:  # the objects say what the file says, and the example printed them
        round_ = run.round(record["round"])
        assert round_.losses == record["losses"] and round_.clusters == record["clusters"]
        for domain, losses in record["losses"].items():
            assert any(line.startswith(f"round {record['round']} {domain} d_loss={losses['d_loss']:.4f} "
                                       f"g_loss={losses['g_loss']:.4f} clusters={round_.num_clusters}")
                       for line in shown)
    final = json.loads((out / "final_metrics.json").read_text())["domains"]
    assert set(run.final) == set(final) == {"mnist", "fashion-mnist"}
    for domain, row in final.items():
        assert (f"final {domain} gen_score={row['gen_score']:.3f} fid={row['fid']:.2f} "
                f"accuracy={row['accuracy']:.1f}%") in lines
        assert run.final[domain].accuracy == pytest.approx(row["accuracy"])
    assert lines[-1] == f"report {out / 'report.html'}"


def test_a_run_as_objects(example_run):
    out, _ = example_run
    run = p2pgan.open_results(out)
    assert repr(run) == f"Run('quick', completed, 2/2 rounds, {str(out)!r})"
    assert run.name == "quick" and run.config["name"] == "quick" and run.config["training"]["rounds"] == 2
    plan = json.loads((out / "plan.json").read_text())
    assert [c.id for c in run.plan.clients] == [c["client_id"] for c in plan["clients"]]
    assert dict(run.plan.cuts) == {c["client_id"]: tuple(c["cut"]) for c in plan["clients"]}
    assert dict(run.plan.domains) == {"mnist": 3, "fashion-mnist": 3}
    assert run.plan.steps_per_round == 3 and run.plan.rounds == 2 and run.plan.strategy == "huscf"
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r.number for r in run.rounds] == [1, 2]
    for round_, record in zip(run.rounds, rounds):
        assert dict(round_.weights) == pytest.approx(record["details"]["weights"])
        assert round_.phase == record["details"]["phase"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [2]  # metrics.every: 2
    assert not run.round(1).metrics
    assert run.round(2).metrics["mnist"].fid == pytest.approx(metrics[0]["domains"]["mnist"]["fid"])
    latency = json.loads((out / "latency.json").read_text())
    assert [r.simulated_s for r in run.rounds] == [r["seconds"] for r in latency["rounds"]]
    assert run.summary.simulated_s == pytest.approx(latency["total_s"])
    assert run.summary.traffic_bytes and run.summary.traffic_bytes > 0
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(run.steps) == len(steps) == 2 * 3 * 6  # rounds x iterations x clients
    assert run.steps[0].node == steps[0]["node"] and run.steps[0].values["g_loss"] == steps[0]["g_loss"]
    paths = run.paths
    assert paths.report_html == out / "report.html" and paths.report_md == out / "report.md"
    assert paths.weights and all(p.is_file() and p.suffix == ".safetensors" for p in paths.weights.values())
    assert set(paths.weights) == {int(k) for k in json.loads((out / "weights" / "clusters.json").read_text())}
    assert set(paths.samples) == {"mnist", "fashion-mnist"} and all(p.is_file() for p in paths.samples.values())
    assert paths.tensorboard is None  # logging.tensorboard is off
    assert run.round(2) is run.rounds[1]
    with pytest.raises(KeyError, match="no round 3"):
        run.round(3)


def test_results_are_read_only(example_run):
    run = p2pgan.open_results(example_run[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "failed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        run.rounds[0].losses["mnist"]["d_loss"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        run.config["training"]["rounds"] = 9  # type: ignore[index]


def test_open_results_of_what_is_not_a_results_folder(tmp_path):
    with pytest.raises(ResultsError, match="no such folder"):
        p2pgan.open_results(tmp_path / "missing")
    with pytest.raises(ResultsError, match="config.json: missing"):
        p2pgan.open_results(tmp_path)


def test_overrides_use_the_key_language_of_set():
    by_mapping = p2pgan.load_scenario(QUICK, {"training.rounds": 2, "domains.*": 1, "cuts": "0110",
                                              "batch_size": 16})
    by_text = p2pgan.load_scenario(QUICK, ["training.rounds=2", "domains.*=1", "cuts=0110", "batch_size=16"])
    by_loader = load_file(QUICK, ["training.rounds=2", "domains.*=1", "cuts=0110", "batch_size=16"])
    assert jsonable(by_mapping) == jsonable(by_text) == jsonable(by_loader)
    assert by_mapping.training.rounds == 2 and by_mapping.client_counts == {"mnist": 1, "fashion-mnist": 1}
    assert by_mapping.cuts.fixed == (0, 1, 1, 0) and by_mapping.training.batch_size == 16
    # A mapping value is taken as it is (no YAML reading): a text stays a text.
    assert p2pgan.load_scenario(QUICK, {"name": "123"}).name == "123"


def test_a_scenario_given_as_a_mapping_is_the_file_it_came_from():
    raw = yaml.safe_load(QUICK.read_text())
    from_mapping = p2pgan.load_scenario(raw, {"training.rounds": 1})
    from_file = p2pgan.load_scenario(QUICK, {"training.rounds": 1})
    assert str(from_mapping.source) == "<mapping>"
    assert ({k: v for k, v in jsonable(from_mapping).items() if k != "source"}
            == {k: v for k, v in jsonable(from_file).items() if k != "source"})
    assert raw["training"]["rounds"] == 3  # the caller's mapping is left as it was
    # The cut shorthands of a file work in a mapping too.
    assert p2pgan.load_scenario({**raw, "cuts": [0, 1, 1, 0]}).cuts.fixed == (0, 1, 1, 0)


def test_an_unknown_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as override:
        p2pgan.load_scenario(QUICK, {"training.roundz": 2})
    assert override.value.source == str(QUICK) and "training.roundz" in str(override.value)
    assert "training.rounds" in str(override.value)  # the valid keys near it
    raw = yaml.safe_load(QUICK.read_text())
    raw["training"]["roundz"] = 2
    with pytest.raises(ConfigError) as in_mapping:
        p2pgan.load_scenario(raw, source="my-experiment")
    assert str(in_mapping.value).startswith("my-experiment:training.roundz: unknown key (expected one of: rounds")
    with pytest.raises(ConfigError, match="<mapping>:training.rounds: .*greater than or equal to 1"):
        p2pgan.load_scenario(raw | {"training": {"rounds": 0}})
    with pytest.raises(ConfigError, match="override must look like key.path=value"):
        p2pgan.load_scenario(QUICK, ["training.rounds"])
    with pytest.raises(TypeError, match="a file path or a mapping"):
        p2pgan.load_scenario(3)  # type: ignore[arg-type]


def test_run_scenario_claims_the_results_folder_as_scenario_run_does(tmp_path):
    scenario = p2pgan.load_scenario(QUICK, {"training.rounds": 1})
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        (folder / "notes.txt").write_text("not a results folder")
    with pytest.raises(ConfigError, match="run_scenario:out: results folder .* is not empty"):
        p2pgan.run_scenario(scenario, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="does not look like a p2pgan results folder"):
        p2pgan.run_scenario(scenario, out=tmp_path / "b", force=True)
    for folder in (tmp_path / "a", tmp_path / "b"):  # nothing cleared, nothing written
        assert (folder / "notes.txt").read_text() == "not a results folder"
        assert not (folder / "config.json").exists()
    with pytest.raises(ConfigError, match="run_scenario:threads: expected a whole number >= 1"):
        p2pgan.run_scenario(scenario, out=tmp_path / "new", threads=0)
    processes = p2pgan.load_scenario(QUICK, {"transport.kind": "http", "transport.processes": True})
    with pytest.raises(ConfigError, match="transport.processes: observers see the events of this process"):
        p2pgan.run_scenario(processes, out=tmp_path / "new", observers=[print])
    with pytest.raises(TypeError, match="takes a Scenario"):
        p2pgan.run_scenario(str(QUICK))  # type: ignore[arg-type]


def test_import_p2pgan_stays_light_and_the_api_loads_on_first_use():
    code = "import sys, p2pgan.errors, p2pgan; print(sorted({'torch', 'p2pgan.api', 'p2pgan.run'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert p2pgan.load_scenario.__module__ == "p2pgan.api" and "run_scenario" in dir(p2pgan)
    with pytest.raises(AttributeError, match="has no attribute 'runn'"):
        p2pgan.runn  # noqa: B018
    # The run machinery keeps its package name: ``p2pgan.run`` is not shadowed by the API.
    importlib.import_module("p2pgan.run.session")
    assert re.fullmatch(r"p2pgan\.run", p2pgan.run.__name__) and p2pgan.run.session.run_scenario
