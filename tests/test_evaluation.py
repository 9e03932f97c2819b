"""Metrics during and after a run (p2pgan.evaluation): files, ordering, no effect on training.

The metrics themselves on known inputs (real images -> real-data accuracy, constant generator ->
generation score 1) are covered in tests/test_metrics.py.
"""

from __future__ import annotations

import csv
import json

import pytest

from p2pgan.config import load_scenario
from p2pgan.run.evaluation import clustering_ari, format_final_table, speaking_clusters
from p2pgan.run.session import run_scenario

METRICS = ["metrics.enabled=true", "metrics.score_samples=200", "metrics.utility_samples=300",
           "metrics.utility_epochs=1", "metrics.classifier_epochs=1"]


@pytest.fixture(scope="module")
def cache_dir(judges_dir):
    return judges_dir  # the session's judges (tests/conftest.py): each trains once


def scenario(repo_root, out, cache_dir, *extra):
    return load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "strategy.name=huscf", "training.rounds=3", "training.max_batches_per_epoch=2",
        f"output.dir={out}", f"metrics.cache_dir={cache_dir}", *METRICS, *extra])


def test_speaking_clusters_and_ari():
    clusters = {"c0": 0, "c1": 1, "c2": 1, "c3": 2, "c4": 2, "c5": 1}
    domains_of = {"c0": ("a",), "c1": ("a",), "c2": ("a",), "c3": ("b",), "c4": ("b",), "c5": ("b",)}
    # a: clusters 0 (1 client), 1 (2 clients) -> 1; b: clusters 2 (2), 1 (1) -> 2
    assert speaking_clusters(clusters, domains_of, ("a", "b")) == {"a": 1, "b": 2}
    # ties go to the lowest cluster id
    assert speaking_clusters({"c0": 1, "c1": 0}, {"c0": ("a",), "c1": ("a",)}, ("a",)) == {"a": 0}
    # a pooled client speaks for every domain it holds
    assert speaking_clusters({"c0": 0}, {"c0": ("a", "b")}, ("a", "b")) == {"a": 0, "b": 0}
    assert clustering_ari({"c0": 0}, {"c0": ("a", "b")}) is None
    assert clustering_ari({"c0": 0, "c1": 0, "c2": 1, "c3": 1},
                          {"c0": ("a",), "c1": ("a",), "c2": ("b",), "c3": ("b",)}) == 1.0


def test_run_with_metrics_writes_every_output(repo_root, tmp_path, cache_dir):
    out = tmp_path / "run"
    outcome = run_scenario(scenario(repo_root, out, cache_dir, "metrics.every=2"))
    assert outcome.status == "completed"
    # every 2 rounds, and always the last: rounds 2 and 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 3]
    assert set(records[-1]["domains"]) == {"mnist", "fashion-mnist"}
    assert records[-1]["ari"] is not None
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["round"], r["domain"]) for r in rows] == [("2", "mnist"), ("2", "fashion-mnist"),
                                                         ("3", "mnist"), ("3", "fashion-mnist")]
    assert all(1.0 - 1e-6 <= float(r["gen_score"]) <= 10.0 + 1e-6 and float(r["fid"]) >= 0 for r in rows)
    for r in (2, 3):
        assert {p.stem for p in (out / "samples" / f"round-{r}").glob("*.png")} == {"mnist", "fashion-mnist"}
    assert not (out / "samples" / "round-1").exists()
    assert (out / "gen_scores.png").stat().st_size > 0
    # the scores were in RoundAggregated's details before the results writer read it
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert "metrics" not in rounds[0]["details"]
    assert rounds[2]["details"]["metrics"]["mnist"]["gen_score"] == pytest.approx(records[-1]["domains"]["mnist"]["gen_score"])
    # final: utility, FID, ARI in final_metrics.json/csv and in summary.json
    final = json.loads((out / "final_metrics.json").read_text())
    for domain in ("mnist", "fashion-mnist"):
        row = final["domains"][domain]
        for key in ("gen_score", "fid", "accuracy", "precision", "recall", "f1", "fpr", "real_accuracy"):
            assert row[key] is not None, (domain, key)
        assert 0 <= row["accuracy"] <= 100 and row["real_accuracy"] > 50
    assert final["ari"] == records[-1]["ari"]
    assert (out / "final_metrics.csv").read_text().startswith("domain,cluster,gen_score")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["domains"]["mnist"]["accuracy"] == final["domains"]["mnist"]["accuracy"]
    assert "mnist" in format_final_table(final)
    assert "final metrics" in (out / "log.txt").read_text()


def test_metrics_do_not_change_training(repo_root, tmp_path, cache_dir):
    with_metrics = tmp_path / "on"
    without = tmp_path / "off"
    run_scenario(scenario(repo_root, with_metrics, cache_dir, "training.rounds=2", "metrics.utility=false"))
    run_scenario(scenario(repo_root, without, cache_dir, "training.rounds=2", "metrics.enabled=false"))
    assert (with_metrics / "steps.jsonl").read_text() == (without / "steps.jsonl").read_text()
    for weights in (without / "weights").glob("*.safetensors"):
        assert weights.read_bytes() == (with_metrics / "weights" / weights.name).read_bytes()
    assert not (without / "metrics.csv").exists()


def test_a_failing_evaluation_never_stops_training(repo_root, tmp_path, cache_dir, monkeypatch):
    import p2pgan.metrics

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(p2pgan.metrics, "evaluate_domain", broken)
    out = tmp_path / "broken"
    outcome = run_scenario(scenario(repo_root, out, cache_dir, "training.rounds=2"))
    assert outcome.status == "completed"
    assert "boom" in (out / "metrics_error.txt").read_text()
    assert "boom" in outcome.summary["metrics"]["note"]
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 2


def test_centralized_metrics_come_from_the_single_model(repo_root, tmp_path, cache_dir):
    out = tmp_path / "central"
    outcome = run_scenario(scenario(repo_root, out, cache_dir, "strategy.name=centralized", "training.rounds=1",
                                    "metrics.utility=false"))
    assert outcome.status == "completed"
    final = json.loads((out / "final_metrics.json").read_text())
    assert set(final["domains"]) == {"mnist", "fashion-mnist"}
    assert {row["cluster"] for row in final["domains"].values()} == {0}
    assert final["ari"] is None
