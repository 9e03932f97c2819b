"""The Python API in one page: load the quick scenario, train it for a few seconds, read the results.

    python examples/api_quickstart.py [RESULTS_DIR]

Without RESULTS_DIR the run goes to a temporary folder, removed at the end. tests/test_api.py
runs this file and checks what it prints; docs/api.md explains every call.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import p2pgan

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "quick.yaml"
TINY = {
    "training.rounds": 2,
    "training.max_batches_per_epoch": 3,  # 3 iterations a round: a few seconds on a laptop CPU
    "metrics.enabled": True,  # scores and final metrics (small budgets: rough numbers)
    "metrics.every": 2,  # scored at round 2 (the last round always is)
    "metrics.score_samples": 200,
    "metrics.utility_samples": 500,
    "metrics.classifier_epochs": 1,
    "metrics.utility_epochs": 1,
}


def main(results_dir: Path) -> None:
    scenario = p2pgan.load_scenario(SCENARIO, TINY)
    print(f"scenario {scenario.name}: {scenario.num_clients} clients over {', '.join(scenario.domains)}, "
          f"{scenario.training.rounds} rounds")
    run = p2pgan.run_scenario(scenario, out=results_dir, force=True, threads=1)
    print(f"status {run.status}: {run.summary.rounds_completed} rounds in {run.summary.wall_s:.1f}s wall, "
          f"{run.summary.simulated_s:.1f}s simulated")
    for client in run.plan.clients:
        print(f"client {client.id} {client.domain} cut {''.join(map(str, client.cut))} {client.examples} examples")
    for round_ in run.rounds:
        for domain, losses in round_.losses.items():
            score = round_.metrics[domain].gen_score if domain in round_.metrics else None
            print(f"round {round_.number} {domain} d_loss={losses['d_loss']:.4f} g_loss={losses['g_loss']:.4f} "
                  f"clusters={round_.num_clusters}"
                  + (f" gen_score={score:.3f}" if score is not None else ""))
    for domain, final in run.final.items():
        print(f"final {domain} gen_score={final.gen_score:.3f} fid={final.fid:.2f} accuracy={final.accuracy:.1f}%")
    print(f"report {run.paths.report_html}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="p2pgan-api-") as folder:
            main(Path(folder) / "quick")
