"""What a new user meets first: `p2pgan` alone, the README's set-up lines, and what a run prints
(its preparation steps, the final metrics, the closing summary) in plain and live mode."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from p2pgan.cli import main
from p2pgan.protocol.events import FinalEvaluation, ParticipationChanged, PreparationStep, TransferEvent
from p2pgan.ui.closing import TrafficTally, closing_summary, closing_text
from p2pgan.ui.progress import PlainProgress

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "training.rounds=1", "--set", "training.max_batches_per_epoch=2"]
# One domain (one judge to train), small samples: the metrics path end to end in a few seconds.
METRICS = ["--set", "domains={mnist: 2}", "--set", "metrics.enabled=true", "--set", "metrics.score_samples=64",
           "--set", "metrics.utility_samples=64", "--set", "metrics.classifier_epochs=1",
           "--set", "metrics.utility_epochs=1"]


def test_p2pgan_alone_prints_the_help_and_succeeds(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: p2pgan ")
    for command in ("scenario", "results", "compare", "whatif", "data"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command
    assert "p2pgan scenario run scenarios/quick.yaml" in out


def test_readme_quick_start_installs_the_torch_the_project_is_tested_with():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    pinned = re.search(r"pip install torch==([0-9.]+)", quick)
    assert pinned is not None and pinned.group(1) == torch.__version__.split("+")[0]
    assert "--index-url" in quick and "CPU" in quick  # how a machine with internet gets the CPU build
    assert not re.search(r"https?://", quick)  # no package-index host named (workplace rule)
    assert "p2pgan scenario run scenarios/quick.yaml" in quick and (ROOT / "scenarios" / "quick.yaml").is_file()


def test_plain_progress_lines_for_preparation_participation_and_final_evaluation():
    out = io.StringIO()
    progress = PlainProgress(out)
    progress(PreparationStep("data mnist", "started"))
    progress(PreparationStep("data mnist", "done", "5,000 train images", 0.04))
    progress(PreparationStep("judge mnist", "started"))
    progress(PreparationStep("judge mnist", "failed", "no space left", 1.0))
    progress(ParticipationChanged(2, 5, ("c001", "c002"), ("c000",), "c000 dropped out (scripted)"))
    progress(FinalEvaluation("started", 3))
    progress(FinalEvaluation("done", 3, {"mnist": {"gen_score": 1.0}}, None, 2.5))
    assert out.getvalue().splitlines() == [
        "prepared data mnist: 5,000 train images (0.0s)",  # one line per finished step, none at its start
        "preparation step judge mnist failed: no space left",
        "round 2 step 5: c000 dropped out (scripted) (2 taking part; dropped: c000)",
        "evaluating round 3 (final metrics)...",
        "final evaluation done in 2.5s",
    ]


def test_closing_summary_says_how_far_how_long_and_where(tmp_path):
    (tmp_path / "report.html").write_text("<html></html>")
    tally = TrafficTally()
    tally(TransferEvent("m1", "c000", "server", "activation", 1, 0, "g_fwd", 1_500_000))
    tally(TransferEvent("m2", "server", "c000", "gradient", 1, 0, "g_fwd", 500_000))
    summary = {"status": "interrupted", "detail": "stopped by Ctrl-C", "rounds_completed": 2, "rounds_planned": 5,
               "wall_s": 12.25, "latency": {"sim_total_s": 95.0}}
    text = closing_text(closing_summary(summary, tmp_path, 14.0, tally.bytes), 80).plain
    lines = text.splitlines()
    assert lines[0] == "run interrupted · 2/5 rounds · wall 14.0s (training 12.2s) · simulated 1m35s"
    assert lines[1] == "traffic 2.0 MB"  # the next fact flows onto its own line at 80 columns
    assert "  stopped by Ctrl-C" in lines and f"results {tmp_path}" in lines
    assert f"report  {tmp_path / 'report.html'}" in lines
    bare = closing_text(closing_summary({"status": "failed"}, tmp_path / "none", 3.0), 80).plain
    assert bare.splitlines() == ["run failed · wall 3.0s", f"results {tmp_path / 'none'}"]


def test_plain_run_prints_preparation_steps_and_closing_summary(tmp_path):
    """A real `p2pgan scenario run` with its output on a pipe: plain lines, in order."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "P2PGAN_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "p2pgan", "scenario", "run", str(ROOT / "scenarios" / "quick.yaml"), "--out", str(out),
         *TINY], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def index(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    steps = [index(f"prepared {name}") for name in ("data mnist", "data fashion-mnist", "partition", "model costs",
                                                     "cuts")]
    assert steps == sorted(steps) and steps[-1] < index("run quick: 6 clients")
    assert re.fullmatch(r"prepared data mnist: 5,000 train images \(\d+\.\ds\)", lines[index("prepared data mnist")])
    assert re.fullmatch(r"prepared model costs: 10 blocks profiled \(\d+\.\ds\)", lines[index("prepared model costs")])
    assert lines[index("prepared cuts")].startswith("prepared cuts: policy mixed, ")
    closing = index("run completed · 1/1 rounds · wall ")
    assert closing > index("run completed in ") and "(training " in lines[closing]
    assert lines[closing + 1].startswith("traffic ") and lines[closing + 1].endswith(" MB")
    assert lines[closing + 2:] == [f"results {out}", f"report  {out / 'report.html'}"]
    assert (out / "report.html").is_file()


def test_live_run_shows_judges_final_metrics_then_the_closing_summary(tmp_path, monkeypatch):
    """`--live` with metrics: the judge's preparation step, the final metrics in the dashboard's
    last frame (which stays on screen), and the closing summary after it."""
    import p2pgan.commands.scenario as command
    from p2pgan.ui.live import LiveView

    screen = io.StringIO()
    views: list[LiveView] = []

    def live_view(scenario):
        views.append(LiveView(scenario, console=Console(file=screen, width=80, height=24, force_terminal=True,
                                                        color_system=None), refresh_per_second=20))
        return views[-1]

    monkeypatch.setattr(command, "_live_view", live_view)
    out = tmp_path / "run"
    assert main(["scenario", "run", str(ROOT / "scenarios" / "quick.yaml"), "--live", "--out", str(out), *TINY,
                 *METRICS, "--set", f"metrics.cache_dir={tmp_path / 'judges'}"]) == 0
    view = views[0]
    assert not view.running
    snap = view.snapshot()
    assert [p.name for p in snap.preparation] == ["data mnist", "partition", "model costs", "cuts", "judge mnist"]
    judge = snap.preparation[-1]
    assert judge.state == "done" and judge.detail == "trained (1 epochs), cached" and judge.seconds > 0
    assert snap.status == "completed" and snap.final_state == "done" and snap.final_round == 1
    assert [r.domain for r in snap.final_rows] == ["mnist"] and snap.final_rows[0].accuracy is not None
    text = screen.getvalue()
    last_frame = text[text.rindex("╭─ p2pgan · quick"):text.rindex("╯") + 1]
    assert "final metrics · round 1" in last_frame and "status completed" in last_frame
    assert re.search(r"│ mnist +\d+\.\d\d +\d+\.\d +\d+\.\d +\d+\.\d", last_frame)
    closing = text.index("run completed · 1/1 rounds · wall ")
    assert closing > text.rindex("╯") and f"results {out}" in text[closing:] and "report.html" in text[closing:]
