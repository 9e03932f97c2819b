"""``p2pgan scenario run|validate FILE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2pgan.config import load_scenario


def register(subparsers: argparse._SubParsersAction) -> None:
    scenario = subparsers.add_parser("scenario", help="run or validate a scenario file")
    sub = scenario.add_subparsers(dest="scenario_command", required=True)

    run = sub.add_parser("run", help="train a scenario and write its results folder")
    add_scenario_arguments(run)
    run.add_argument("--transport", choices=("memory", "http"), default=None, help="override transport.kind")
    run.add_argument("--processes", action="store_true", help="with http: every node in its own process")
    run.add_argument("--out", type=Path, default=None, help="results folder (overrides output.dir)")
    run.add_argument("--live", dest="live", action="store_true", default=None, help="force the live dashboard")
    run.add_argument("--no-live", dest="live", action="store_false", help="plain line-by-line progress")
    run.add_argument("--force", action="store_true", help="clear a previous run's results folder first")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch intra-op threads (default: torch's choice; 1 is faster for tiny models on busy machines)")
    run.set_defaults(func=run_command)

    validate = sub.add_parser("validate", help="check a scenario file without running it")
    add_scenario_arguments(validate)
    validate.set_defaults(func=validate_command)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key, e.g. --set training.rounds=3 (repeatable)")


def scenario_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "transport", None):
        overrides.append(f"transport.kind={args.transport}")
    if getattr(args, "processes", False):
        overrides.append("transport.processes=true")
    if getattr(args, "out", None):
        overrides.append(f"output.dir={args.out.resolve()}")
    return overrides


def validate_command(args: argparse.Namespace) -> int:
    from p2pgan.strategies.catalogue import strategy_for

    scenario = load_scenario(args.file, args.overrides)
    strategy_for(scenario)  # the strategy's own section, checked against its options
    print(f"{args.file}: ok ({scenario.num_clients} clients over {', '.join(scenario.domains)}; "
          f"strategy {scenario.strategy.name}; {scenario.training.rounds} rounds)")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from p2pgan.run.folder import claim_results_dir
    from p2pgan.run.processes import run_processes
    from p2pgan.run.session import run_scenario
    from p2pgan.strategies.catalogue import strategy_for
    from p2pgan.ui.progress import PlainProgress

    scenario = load_scenario(args.file, scenario_overrides(args))
    strategy_for(scenario)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    with claim_results_dir(scenario.results_dir, force=args.force, resume=False, source=str(args.file)):
        if scenario.transport.processes:
            outcome = run_processes(scenario)
        else:
            live = sys.stdout.isatty() if args.live is None else args.live
            observers = [_live_view(scenario)] if live else [PlainProgress()]
            outcome = run_scenario(scenario, observers)
    if outcome.status == "completed":
        print(f"results: {scenario.results_dir}")
        return 0
    print(f"p2pgan: run {outcome.status}: {outcome.summary.get('detail', '')} "
          f"(results so far kept in {scenario.results_dir})", file=sys.stderr)
    return outcome.error.exit_code if outcome.error is not None and hasattr(outcome.error, "exit_code") else 130


def _live_view(scenario):
    try:
        from p2pgan.ui.live import LiveView
    except ImportError:
        from p2pgan.ui.progress import PlainProgress

        return PlainProgress()
    return LiveView(scenario)
