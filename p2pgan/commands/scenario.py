"""``p2pgan scenario run|validate FILE`` and ``p2pgan scenario resume RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from p2pgan.config import load_scenario
from p2pgan.config.keys import KeyValues
from p2pgan.config.loader import check_output_path
from p2pgan.errors import ConfigError, P2PGanError


MAX_THREADS = 4096


def register(subparsers: argparse._SubParsersAction) -> None:
    scenario = subparsers.add_parser("scenario", help="run or validate a scenario file")
    sub = scenario.add_subparsers(dest="scenario_command", required=True)

    run = sub.add_parser("run", help="train a scenario and write its results folder")
    add_scenario_arguments(run)
    run.add_argument("--transport", choices=("memory", "http"), default=None, help="override transport.kind")
    run.add_argument("--processes", action="store_true", help="with http: every node in its own process")
    run.add_argument("--out", type=Path, default=None, help="results folder (overrides output.dir)")
    add_display_arguments(run)
    run.add_argument("--force", action="store_true", help="clear a previous run's results folder first")
    run.set_defaults(func=run_command)

    resume = sub.add_parser("resume", help="continue an interrupted run from its last complete checkpoint")
    resume.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's results folder")
    add_display_arguments(resume)
    resume.set_defaults(func=resume_command)

    validate = sub.add_parser("validate", help="check a scenario file without running it")
    add_scenario_arguments(validate)
    validate.set_defaults(func=validate_command)


def add_display_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live", dest="live", action="store_true", default=None, help="force the live dashboard")
    parser.add_argument("--no-live", dest="live", action="store_false", help="plain line-by-line progress")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (default: 1 for a small model, else every core, "
                             "whatever the load, so that a seed repeats; P2PGAN_THREADS=N pins it)")


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key, e.g. --set training.rounds=3 (repeatable)")


def scenario_overrides(args: argparse.Namespace) -> list[str | KeyValues]:
    overrides: list[str | KeyValues] = list(args.overrides)
    if getattr(args, "transport", None):
        overrides.append(f"transport.kind={args.transport}")
    if getattr(args, "processes", False):
        overrides.append("transport.processes=true")
    if getattr(args, "out", None):
        # Checked before resolving (a NUL byte), and passed as a path, not as YAML text ("a #b").
        check_output_path(args.out, "output.dir", source=str(args.file))
        overrides.append(KeyValues.of("output.dir", str(args.out.resolve())))
    return overrides


def validate_command(args: argparse.Namespace) -> int:
    from p2pgan.commands.checks import check_runnable

    scenario = load_scenario(args.file, args.overrides)
    checked = check_runnable(scenario)  # what run checks before it claims a folder: the same lines
    _print_notes(checked.notes)
    print(f"{args.file}: ok ({scenario.num_clients} clients over {', '.join(scenario.domains)}; "
          f"strategy {scenario.strategy.name}; {scenario.training.rounds} rounds; "
          f"{min(checked.sizes.values())}..{max(checked.sizes.values())} examples per client)")
    for found in checked.sources:
        print(f"  {found.domain}: {found.examples} train images from {found.source}")
    return 0


def _print_notes(notes) -> None:
    for note in notes:
        print(f"p2pgan: note: {note}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    from p2pgan.commands.checks import check_runnable
    from p2pgan.run.folder import claim_results_dir

    _check_threads(args)
    scenario = load_scenario(args.file, scenario_overrides(args))
    _print_notes(check_runnable(scenario).notes)
    _set_threads(args, scenario)
    with claim_results_dir(scenario.results_dir, force=args.force, resume=False, source=str(args.file)):
        return _train(scenario, args, None)


def resume_command(args: argparse.Namespace) -> int:
    """Continue a run from its last complete checkpoint, with the scenario it was started with."""
    from p2pgan.run.checkpoint import find_resume_point, rewind_results
    from p2pgan.run.folder import claim_results_dir
    from p2pgan.run.processes import wait_for_previous_nodes
    from p2pgan.run.results import load_run_config
    from p2pgan.strategies.catalogue import strategy_for

    run_dir = args.run_dir
    _check_threads(args)
    with claim_results_dir(run_dir, force=False, resume=True, key="RUN_DIR", source="scenario resume"):
        scenario = load_run_config(run_dir)
        strategy_for(scenario)
        _refuse_completed(run_dir, scenario)
        point = find_resume_point(run_dir, scenario.training.rounds)
        wait_for_previous_nodes(run_dir)  # a killed coordinator's node processes notice and stop
        _set_threads(args, scenario)
        rewind_results(run_dir, point.round)
        print(f"resuming {scenario.name} after round {point.round} of {scenario.training.rounds} ({run_dir})",
              flush=True)
        return _train(scenario, args, point)


def _refuse_completed(run_dir: Path, scenario) -> None:
    """A completed run has nothing to resume. With a process per node the coordinator's verdict
    counts: node processes can finish the training after their coordinator was killed."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return
    coordinator = summary.get("coordinator")
    if scenario.transport.processes and not (isinstance(coordinator, dict) and coordinator.get("status") == "completed"):
        return
    raise P2PGanError(f"{run_dir}: the run completed (summary.json); nothing to resume")


def _set_threads(args: argparse.Namespace, scenario) -> None:
    """``--threads``, else the scenario's default (p2pgan/run/threads.py): a resume gets the same
    count as the run it continues, so it computes the same numbers."""
    import torch

    from p2pgan.run.threads import threads_for

    _check_threads(args)
    torch.set_num_threads(args.threads if args.threads is not None else threads_for(scenario))


def _check_threads(args: argparse.Namespace) -> None:
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise ConfigError(f"scenario {args.scenario_command}", "--threads",
                          f"expected a whole number 1..{MAX_THREADS}, got {args.threads}")


def _train(scenario, args: argparse.Namespace, resume) -> int:
    """Run (or continue) ``scenario`` in the results folder the caller has claimed, then print the
    closing summary (after the live view has stopped)."""
    from p2pgan.run.launch import launch
    from p2pgan.ui.closing import TrafficTally
    from p2pgan.ui.progress import PlainProgress

    started = getattr(args, "started", None) or time.perf_counter()  # set by the CLI's entry point
    live = sys.stdout.isatty() if args.live is None else args.live
    display = _live_view(scenario) if live else PlainProgress()
    tally = TrafficTally()
    try:
        # Node processes print their own lines; the coordinator's preparation is shown here.
        outcome = launch(scenario, [display, tally], resume, coordinator_progress=PlainProgress())
    finally:
        stop = getattr(display, "stop", None)
        if stop is not None:  # a live view that never saw the run end (preparation failed) lets go
            stop()
    _print_closing(display, outcome.summary, scenario.results_dir, time.perf_counter() - started, tally.bytes)
    if outcome.status == "completed":
        return 0
    print(f"p2pgan: run {outcome.status}: {outcome.summary.get('detail', '')} "
          f"(results so far kept in {scenario.results_dir}; {_next_step(scenario.results_dir)})", file=sys.stderr)
    return outcome.error.exit_code if outcome.error is not None and hasattr(outcome.error, "exit_code") else 130


def _next_step(results_dir: Path) -> str:
    """What a person can do after a run that did not complete: resume only where a round left a
    complete checkpoint, otherwise start again (a resume would only say there is nothing to resume)."""
    from p2pgan.run.checkpoint import complete_rounds

    if complete_rounds(results_dir):
        return f"continue with `p2pgan scenario resume {results_dir}`"
    return "no round completed a checkpoint, so start it again with --force"


def _print_closing(display, summary, results_dir: Path, wall_s: float, traffic_bytes: int) -> None:
    from p2pgan.ui.closing import closing_summary, closing_text

    closing = closing_summary(summary, results_dir, wall_s, traffic_bytes)
    console = getattr(display, "console", None)
    if console is not None:
        console.print(closing_text(closing, console.width), soft_wrap=True)
    else:
        print(closing_text(closing).plain, flush=True)


def _live_view(scenario):
    try:
        from p2pgan.ui.live import LiveView
    except ImportError:
        from p2pgan.ui.progress import PlainProgress

        return PlainProgress()
    return LiveView(scenario)
