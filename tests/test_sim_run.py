"""A real quick run priced by the latency extension: results files, identical run to run."""

from __future__ import annotations

import csv
import json


from p2pgan.cli import main

SMALL = ["--set", "training.rounds=2", "--set", "training.max_batches_per_epoch=2", "--set", "metrics.enabled=false"]
FILES = ("latency.json", "latency_iterations.csv", "latency_nodes.csv")


def run(repo_root, out, *extra):
    return main(["scenario", "run", str(repo_root / "scenarios" / "quick.yaml"), "--no-live", "--out", str(out),
                 *SMALL, *extra])


def test_quick_run_reports_simulated_latency_identically_run_to_run(repo_root, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    topology = str(repo_root / "topologies" / "paper-edge.yaml")
    assert run(repo_root, first, "--set", f"topology={topology}") == 0
    assert run(repo_root, second, "--set", f"topology={topology}") == 0
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    latency = json.loads((first / "latency.json").read_text())
    assert latency["topology"] == "paper-edge"
    rounds = latency["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["seconds"] > r["federate_s"] > 0 for r in rounds)
    iterations = latency["iterations"]
    assert len(iterations) == 4 and all(i["seconds"] > 0 for i in iterations)
    nodes = latency["nodes"]
    assert set(nodes) == {"server", *(f"c{i:03d}" for i in range(6))}
    assert all(n["bytes_sent"] > 0 and n["bytes_received"] > 0 for n in nodes.values())
    assert sum(n["bytes_sent"] for n in nodes.values()) == sum(n["bytes_received"] for n in nodes.values())

    per_node = list(csv.DictReader((first / "latency_nodes.csv").open()))
    assert {row["profile"] for row in per_node if row["node"] != "server"} <= {f"device{i}" for i in range(1, 8)}
    summary = json.loads((first / "summary.json").read_text())
    assert summary["latency"]["sim_s_per_iteration"] > 0 and summary["latency"]["wall_s_per_iteration"] > 0
