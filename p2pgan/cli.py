"""The ``p2pgan`` command line. User errors print one line and exit non-zero; no tracebacks."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from p2pgan import __version__
from p2pgan.commands import COMMAND_MODULES
from p2pgan.errors import P2PGanError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pgan", description="HuSCF-GAN split/federated cGAN simulator")
    parser.add_argument("--version", action="version", version=f"p2pgan {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"p2pgan.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"p2pgan.commands.{name}":
                continue  # a command whose module is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except P2PGanError as exc:
        print(f"p2pgan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2pgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
