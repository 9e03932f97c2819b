"""The ``p2pgan`` command line. User errors print one line and exit non-zero; no tracebacks."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from collections.abc import Sequence

from p2pgan import __version__
from p2pgan.commands import COMMAND_MODULES
from p2pgan.errors import P2PGanError
from p2pgan.runtime import default_threads, keep_freed_memory, passive_thread_waits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pgan", description="HuSCF-GAN split/federated cGAN simulator",
                                     epilog="Start with: p2pgan scenario run scenarios/quick.yaml; "
                                            "p2pgan COMMAND --help for each command.")
    parser.add_argument("--version", action="version", version=f"p2pgan {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"p2pgan.commands.{name}").register(subparsers)
    return parser


def _install_stop_signals() -> dict[int, object]:
    """Ctrl-C and SIGTERM stop a run cleanly (results kept), even when started from a shell or a
    parent that ignored SIGINT for its background children. Returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # a run's closing summary counts its wall time from here
    passive_thread_waits()  # before build_parser imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    if args.command is None:  # `p2pgan` alone (or with only --debug): what it can do
        parser.print_help()
        return 0
    previous = _install_stop_signals()
    keep_freed_memory()
    if getattr(args, "threads", None) is None:
        import torch

        torch.set_num_threads(default_threads())
    try:
        return int(args.func(args) or 0)
    except P2PGanError as exc:
        print(f"p2pgan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2pgan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"p2pgan: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
