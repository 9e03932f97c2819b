"""``p2pgan node serve|secret``: run one node as its own process (one host or several).

``p2pgan node serve --scenario FILE --node ID --peers PEERS.yaml [--secret-file KEY]`` runs one
node of a multi-host run (see docs/multihost.md). ``--control stdio`` is the internal mode used
by ``p2pgan scenario run FILE --transport http --processes``: the scenario, the secret and the
peer table then come from the coordinator over stdin.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from p2pgan.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    node = subparsers.add_parser("node", help="run one node as its own process (multi-process / multi-host)")
    sub = node.add_subparsers(dest="node_command", required=True)

    serve = sub.add_parser("serve", help="run one node (server or client) of a scenario over http")
    serve.add_argument("--scenario", type=Path, default=None, help="scenario YAML (the same file on every host)")
    serve.add_argument("--node", required=True, help="node id: server, c000, c001, ...")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key (use the same overrides on every host)")
    serve.add_argument("--peers", type=Path, default=None,
                       help="YAML mapping every node id to http://HOST:PORT (the same file on every host)")
    serve.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help="address to bind (default: this node's entry in --peers), e.g. 0.0.0.0:8700")
    serve.add_argument("--secret-file", type=Path, default=None,
                       help="file with the run secret in hex, mode 0600 (default: $P2PGAN_SECRET_FILE, "
                            "else $P2PGAN_SECRET)")
    serve.add_argument("--wait-s", type=float, default=300.0,
                       help="how long to wait for the peers to come up before giving up (default 300)")
    serve.add_argument("--control", choices=("stdio",), default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=serve_command)

    secret = sub.add_parser("secret", help="create a new run secret file (hex, mode 0600) to copy to every host")
    secret.add_argument("file", type=Path)
    secret.set_defaults(func=secret_command)


def serve_command(args: argparse.Namespace) -> int:
    from p2pgan.config.loader import check_duration
    from p2pgan.run import processes as multiprocess

    check_duration(args.wait_s, "--wait-s", source="node serve")
    if args.control == "stdio":
        _exit_now(multiprocess.serve_controlled(args.node))
    if args.scenario is None:
        raise ConfigError("node serve", "--scenario", "required (the scenario file every node runs)")
    if args.peers is None:
        raise ConfigError("node serve", "--peers", "required: a YAML file mapping every node id to http://HOST:PORT")
    from p2pgan.commands.checks import check_runnable
    from p2pgan.config import load_scenario
    from p2pgan.ids import SERVER_ID
    from p2pgan.ui.progress import PlainProgress

    scenario = load_scenario(args.scenario, [*args.overrides, "transport.kind=http"])
    checked = check_runnable(scenario)  # as `scenario run` does, before this node binds its port
    for note in checked.notes if args.node == SERVER_ID else ():
        print(f"p2pgan: note: {note}", file=sys.stderr, flush=True)
    code = multiprocess.serve_standalone(scenario, args.node, args.peers, _listen(args.listen), args.secret_file,
                                         args.wait_s, server_progress=PlainProgress)
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Everything is written and flushed by now; skip interpreter teardown (seconds with torch)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("node serve", "--listen", f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def secret_command(args: argparse.Namespace) -> int:
    from p2pgan.run.processes import write_secret

    write_secret(args.file)
    print(f"{args.file}: new run secret (mode 0600); copy it to every host of the run, never commit it")
    return 0
