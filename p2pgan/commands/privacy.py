"""``p2pgan privacy FILE``: what an honest-but-curious server can infer from each cut's messages.

Audits the cuts the scenario uses (``--all-cuts``: all 16) on its domains, model width and seed,
with the blocks every node builds from the seed (the first iteration's view), or with
``--weights RUN_DIR`` the trained weights a finished run wrote (``privacy: {enabled: true}`` audits
them at the end of the run itself). Writes privacy.json, privacy.csv, privacy.md and
one PNG per cut under ``--out`` (default: the scenario's results folder + ``/privacy``), and prints
the per-cut table. See docs/privacy.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from p2pgan.commands.cuts import table_console
from p2pgan.config import Scenario, load_scenario
from p2pgan.config.loader import check_output_path
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut
from p2pgan.privacy.audit import audit_initial, audit_trained
from p2pgan.privacy.files import write_audit
from p2pgan.config.privacy import PrivacyOptions, parse_privacy_options
from p2pgan.privacy.report import print_audit
from p2pgan.privacy.weights import load_run_weights
from p2pgan.run.prepare import scenario_cuts
from p2pgan.sim.pricing import client_ids_for

# Strategies that keep every block on the client (nothing but parameters travels) or follow
# another protocol than the U-shaped split the audit plays.
NOT_SPLIT = {"fedavg-gan": "keeps every block on the client: only parameters travel",
             "centralized": "keeps every block on the client: only parameters travel",
             "md-gan": "runs G on the server and sends images down (docs/strategies.md)"}

# Command-line flags and the privacy: keys they set.
FLAGS = {"samples": "samples", "aux_samples": "aux_samples", "decoder_epochs": "decoder_epochs",
         "probe_epochs": "probe_epochs"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("privacy", help="measure what a curious server can infer from each cut")
    parser.add_argument("file", type=Path, help="scenario YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: <results>/privacy)")
    parser.add_argument("--all-cuts", action="store_true", help="audit all 16 cuts, not only the scenario's")
    parser.add_argument("--samples", type=int, default=None, metavar="N", help="private images per domain")
    parser.add_argument("--aux-samples", type=int, default=None, metavar="N", help="attacker's images per domain")
    parser.add_argument("--decoder-epochs", type=int, default=None, metavar="N", help="inversion decoder epochs")
    parser.add_argument("--probe-epochs", type=int, default=None, metavar="N", help="label probe epochs")
    parser.add_argument("--weights", type=Path, default=None, metavar="RUN_DIR",
                        help="audit the trained weights of a finished run of this scenario (its results folder)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads")
    parser.set_defaults(func=privacy_command)


def privacy_options(scenario: Scenario, args: argparse.Namespace) -> PrivacyOptions:
    """The scenario's ``privacy:`` section with the command-line flags on top (validated once)."""
    base = scenario.privacy
    raw = dataclasses.asdict(base)
    raw.update({key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag) is not None})
    if args.all_cuts:
        raw["all_cuts"] = True
    return parse_privacy_options(raw, str(args.file))


def audited_cuts(scenario: Scenario) -> tuple[ClientCut, ...]:
    """The distinct cuts the scenario's clients use (fixed, per client, a policy, or searched)."""
    costs = profile_model(scenario.model_spec) if scenario.cuts.search is not None else None
    plan = scenario_cuts(scenario, client_ids_for(scenario.num_clients), costs)
    return tuple(sorted(set(plan.values()), key=ClientCut.as_tuple))


def privacy_command(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.file, args.overrides)
    options = privacy_options(scenario, args)
    if args.threads is not None:
        if not 1 <= args.threads <= 4096:
            raise ConfigError("privacy", "--threads", f"expected a whole number 1..4096, got {args.threads}")
        torch.set_num_threads(args.threads)
    if scenario.strategy.name in NOT_SPLIT and not options.all_cuts:
        raise P2PGanError(f"{args.file}: strategy {scenario.strategy.name} {NOT_SPLIT[scenario.strategy.name]}; "
                          "nothing the split audit plays (use --all-cuts to audit the split cuts anyway)")
    cuts = () if options.all_cuts else audited_cuts(scenario)
    out_dir = args.out if args.out is not None else scenario.results_dir / "privacy"
    check_output_path(out_dir, "--out", source="privacy")  # before the audit trains its attackers

    def progress(line: str) -> None:
        print(f"privacy: {line}", file=sys.stderr, flush=True)

    spec, domains = scenario.model_spec, list(scenario.domains)
    common = dict(scenario=scenario.name, seed=scenario.seed, batch_size=scenario.training.batch_size,
                  data_root=scenario.data.root, progress=progress)
    if args.weights is not None:
        trained = load_run_weights(args.weights, domains)
        result = audit_trained({}, spec, domains, cuts, options, domain_weights=trained, **common)
    else:
        result = audit_initial(spec, domains, cuts, options, **common)
    try:
        files = write_audit(result, out_dir)
    except OSError as exc:
        raise ConfigError("privacy", "--out", f"cannot write into {out_dir} ({exc.strerror or exc})") from None
    print_audit(table_console(), result)
    print(f"results: {files['md'].parent}")
    return 0
