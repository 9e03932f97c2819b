"""``p2pgan data list``: where each domain's data comes from."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets")
    sub = data.add_subparsers(dest="data_command", required=True)
    listing = sub.add_parser("list", help="show each domain, its source and train/test sizes")
    listing.add_argument("--data-root", type=Path, default=None, help="folder with full datasets")
    listing.set_defaults(func=list_domains)


def list_domains(args: argparse.Namespace) -> int:
    from p2pgan.data import describe_domains

    table = Table(title="domains")
    for column in ("domain", "source", "train", "test"):
        table.add_column(column)
    for info in describe_domains(args.data_root):
        table.add_row(info.domain, info.source, str(info.train_size), str(info.test_size))
    Console().print(table)
    return 0
