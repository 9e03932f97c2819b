"""`p2pgan compare`: same scenario under several strategies and seeds, one side-by-side table."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from p2pgan.cli import main
from p2pgan.commands.compare import RunJob, format_table, stat_rows
from p2pgan.config.keys import KeyValues
from p2pgan.report.load import load_run

TINY = ["--set", "domains={mnist: 3}", "--set", "training.rounds=1", "--set", "training.max_batches_per_epoch=2",
        "--set", "metrics.score_samples=50", "--set", "metrics.utility_samples=100",
        "--set", "metrics.classifier_epochs=1", "--set", "metrics.utility_epochs=1"]
"""A one-domain, one-round run with the smallest metric budgets: the numbers mean nothing, the
plumbing is real."""


@pytest.fixture(scope="module")
def judges(judges_dir):
    """The session's judge-classifier cache (tests/conftest.py): each domain's judge trains once."""
    return judges_dir


def test_compare_runs_each_strategy_and_writes_a_table(repo_root, tmp_path, capsys, judges):
    out = tmp_path / "cmp"
    code = main(["compare", str(repo_root / "scenarios" / "quick.yaml"), "--strategies", "huscf,fedavg-gan",
                 "--out", str(out), "--quiet",
                 "--set", "training.rounds=1", "--set", "training.max_batches_per_epoch=2",
                 "--set", "metrics.enabled=true", "--set", "metrics.score_samples=100",
                 "--set", "metrics.utility_samples=200", "--set", "metrics.utility_epochs=1",
                 "--set", "metrics.classifier_epochs=1", "--set", f"metrics.cache_dir={judges}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("huscf", "fedavg-gan"):
        run = out / name / "seed-7"  # one folder per strategy and seed (quick.yaml's seed: 7)
        assert (run / "final_metrics.json").is_file()
        config = json.loads((run / "config.json").read_text())
        assert config["strategy"]["name"] == name and config["seed"] == 7
    assert "| mnist | huscf |" in printed and "| fashion-mnist | fedavg-gan |" in printed
    table = (out / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("`p2pgan compare ") and "--strategies huscf,fedavg-gan" in table
    assert "acc %" in table and "FID" in table
    with (out / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["domain"], r["strategy"]) for r in rows] == [
        ("mnist", "huscf"), ("mnist", "fedavg-gan"), ("fashion-mnist", "huscf"), ("fashion-mnist", "fedavg-gan")]
    assert all(r["accuracy"] and r["gen_score"] and r["fid"] for r in rows)
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    # same data for both: the same partitions
    plans = [json.loads((out / r["strategy"] / f"seed-{r['seed']}" / "plan.json").read_text())["clients"] for r in runs]
    assert [c["num_examples"] for c in plans[0]] == [c["num_examples"] for c in plans[1]]
    # the results folder is claimed: a second comparison into it is refused unless --force
    assert main(["compare", str(repo_root / "scenarios" / "quick.yaml"), "--strategies", "huscf",
                 "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_compare_seeds_gives_mean_and_std_a_traffic_column_and_a_plot(repo_root, tmp_path, capsys, judges):
    quick = str(repo_root / "scenarios" / "quick.yaml")
    out = tmp_path / "seeds"
    argv = ["compare", quick, "--seeds", "1,2", "--threads", "1", "--quiet", *TINY, "--set", f"metrics.cache_dir={judges}"]
    assert main([*argv, "--strategies", "huscf,fedavg-gan", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "metrics.enabled is false" in printed and "turned on" in printed  # quick.yaml has them off
    with (out / "comparison.csv").open() as handle:
        per_seed = list(csv.DictReader(handle))
    assert {(r["strategy"], r["seed"]) for r in per_seed} == {(s, n) for s in ("huscf", "fedavg-gan") for n in ("1", "2")}
    with (out / "comparison_stats.csv").open() as handle:
        stats = {(r["domain"], r["strategy"]): r for r in csv.DictReader(handle)}
    assert set(stats) == {("mnist", "huscf"), ("mnist", "fedavg-gan")}
    for (domain, strategy), row in stats.items():
        mine = [r for r in per_seed if r["domain"] == domain and r["strategy"] == strategy]
        assert row["n"] == "2" and len(mine) == 2
        for key in ("accuracy", "f1", "gen_score", "fid", "wall_s", "sim_s_per_iter"):
            values = [float(r[key]) for r in mine]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-9), key
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-9), key
        cell = f"{statistics.fmean(float(r['accuracy']) for r in mine):.2f} ± " \
               f"{statistics.stdev(float(r['accuracy']) for r in mine):.2f}"
        assert f"| {domain} | {strategy} | {cell} |" in printed
    # traffic: each run's bytes, as its results folder records them
    for r in per_seed:
        folder = out / r["strategy"] / f"seed-{r['seed']}"
        assert int(r["traffic_bytes"]) == load_run(folder).traffic.total_bytes > 0
    assert "traffic MB" in printed and "sim s/iter" in printed and "| seeds |" in printed
    md = (out / "comparison.md").read_text()
    assert "## Per seed" in md and "--seeds 1,2" in md
    import matplotlib.image

    picture = matplotlib.image.imread(out / "comparison.png")
    assert picture.shape[0] > 300 and picture.shape[1] > 600

    # --jobs 2: the same runs in two worker processes give the same numbers
    parallel = tmp_path / "parallel"
    assert main([*argv, "--strategies", "huscf", "--jobs", "2", "--out", str(parallel)]) == 0
    capsys.readouterr()
    with (parallel / "comparison.csv").open() as handle:
        again = list(csv.DictReader(handle))
    numbers = ("domain", "strategy", "seed", "accuracy", "f1", "gen_score", "fid", "ari", "sim_s_per_iter",
               "traffic_bytes", "status")
    assert [{k: r[k] for k in numbers} for r in again] == [{k: r[k] for k in numbers} for r in per_seed
                                                           if r["strategy"] == "huscf"]


def test_compare_errors_are_one_line_with_one_prefix(repo_root, tmp_path, capsys):
    quick = str(repo_root / "scenarios" / "quick.yaml")
    for argv, words in ((["--strategies", "huscf,nope"], "unknown strategy 'nope'"),
                        (["--strategies", "huscf", "--seeds", "1,x"], "--seeds"),
                        (["--strategies", "huscf", "--seeds", "1,1"], "listed twice"),
                        (["--strategies", "huscf", "--jobs", "0"], "--jobs"),
                        (["--strategies", "huscf", "--set", "training.batchsize=3"], "training.batch_size")):
        assert main(["compare", quick, "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.count("p2pgan:") == 1 and words in err, err
        assert "--strategies:--strategies" not in err


def test_table_shows_latency_when_summaries_have_it():
    results = [{"strategy": "huscf", "status": "completed", "summary": {
        "wall_s": 3.0, "latency": {"sim_s_per_iteration": 1.25},
        "metrics": {"ari": 1.0, "domains": {"mnist": {"accuracy": 90.0, "f1": 89.0, "gen_score": 8.5, "fid": 12.0}}}}}]
    table = format_table(results)
    assert "sim s/iter" in table and "1.250" in table and "| mnist | huscf | 90.00 | 89.00 | 8.500 | 12.0 | 1.00 |" in table


def test_statistics_skip_runs_that_did_not_complete():
    def run(seed, accuracy, status="completed", traffic=2_000_000):
        metrics = {"domains": {"mnist": {"accuracy": accuracy}}} if accuracy is not None else {}
        return {"strategy": "huscf", "seed": seed, "status": status, "detail": "" if status == "completed" else "boom",
                "traffic_bytes": traffic, "summary": {"wall_s": 1.0, "metrics": metrics}}

    results = [run(1, 90.0), run(2, 80.0), run(3, None, "failed", None)]
    (row,) = [r for r in stat_rows(results) if r["domain"] == "mnist"]
    assert row["accuracy"].mean == 85.0 and row["accuracy"].std == pytest.approx(50 ** 0.5) and row["accuracy"].n == 2
    assert row["traffic_mb"].mean == 2.0 and row["traffic_mb"].std == 0.0
    assert row["status"] == "2/3 completed (seed 3 failed: boom)"
    table = format_table(results)
    assert "| mnist | huscf | 85.00 ± 7.07 |" in table and "| - | huscf |" in table


def test_a_run_job_is_the_scenario_under_its_strategy_seed_and_folder(repo_root, tmp_path):
    quick = repo_root / "scenarios" / "quick.yaml"
    job = RunJob(quick, ("strategy.clusters=2", KeyValues.of("transport.kind", "http")), "fedavg-gan", 3,
                 tmp_path / "fedavg-gan" / "seed-3")
    scenario = job.scenario()
    assert (scenario.strategy.name, scenario.seed, scenario.transport.kind) == ("fedavg-gan", 3, "http")
    assert scenario.results_dir == tmp_path / "fedavg-gan" / "seed-3"
    assert "clusters" not in scenario.strategy.options  # a huscf option fedavg-gan does not take
