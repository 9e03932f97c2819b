"""`p2pgan compare`: same scenario under several strategies, one side-by-side table."""

from __future__ import annotations

import csv
import json

from p2pgan.cli import main
from p2pgan.commands.compare import format_table


def test_compare_runs_each_strategy_and_writes_a_table(repo_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(repo_root / "scenarios" / "quick.yaml"), "--strategies", "huscf,fedavg-gan",
                 "--out", str(out), "--quiet",
                 "--set", "training.rounds=1", "--set", "training.max_batches_per_epoch=2",
                 "--set", "metrics.enabled=true", "--set", "metrics.score_samples=100",
                 "--set", "metrics.utility_samples=200", "--set", "metrics.utility_epochs=1",
                 "--set", "metrics.classifier_epochs=1", "--set", f"metrics.cache_dir={tmp_path / 'judges'}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("huscf", "fedavg-gan"):
        assert (out / name / "final_metrics.json").is_file()
        config = json.loads((out / name / "config.json").read_text())
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
    plans = [json.loads((out / r["strategy"] / "plan.json").read_text())["clients"] for r in runs]
    assert [c["num_examples"] for c in plans[0]] == [c["num_examples"] for c in plans[1]]


def test_compare_rejects_unknown_strategies_and_disabled_metrics(repo_root, capsys):
    quick = str(repo_root / "scenarios" / "quick.yaml")
    assert main(["compare", quick, "--strategies", "huscf,nope"]) != 0
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(["compare", quick, "--strategies", "huscf"]) != 0  # quick.yaml disables metrics
    assert "metrics.enabled" in capsys.readouterr().err


def test_table_shows_latency_when_summaries_have_it():
    results = [{"strategy": "huscf", "status": "completed", "summary": {
        "wall_s": 3.0, "latency": {"sim_s_per_iteration": 1.25},
        "metrics": {"ari": 1.0, "domains": {"mnist": {"accuracy": 90.0, "f1": 89.0, "gen_score": 8.5, "fid": 12.0}}}}}]
    table = format_table(results)
    assert "sim s/iter" in table and "1.250" in table and "| mnist | huscf | 90.00 | 89.00 | 8.500 | 12.0 | 1.00 |" in table
