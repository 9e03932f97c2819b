"""``p2pgan results show|compare|report``: read results folders that runs wrote.

* ``show RUN_DIR``: what ran and how it went, at a glance (the report's tables in the terminal);
* ``compare RUN_DIR...``: several runs side by side, plus the scenario keys that differ; ``--out``
  also writes one comparison picture. A folder holding results folders (``p2pgan compare``'s
  output) stands for all of them;
* ``report RUN_DIR...``: (re)write ``report.md`` and ``report.html`` in each folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from p2pgan.config.loader import check_output_path
from p2pgan.report.figures import comparison_figure, save_figure
from p2pgan.report.load import ResultsError, find_run_dirs, load_run
from p2pgan.report.terminal import (comparison_plot_path, console_for_tables, run_labels, show_comparison,
                                    show_run)
from p2pgan.report.write import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("results", help="show, compare or report results folders")
    sub = parser.add_subparsers(dest="results_command", required=True)

    show = sub.add_parser("show", help="one run at a glance")
    show.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a results folder")
    show.set_defaults(func=show_command)

    compare = sub.add_parser("compare", help="several runs side by side")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                         help="results folders (a folder of results folders counts as all of them)")
    compare.add_argument("--out", type=Path, default=None, metavar="PATH",
                         help="also write the comparison picture: a .png file, or a folder for comparison.png")
    compare.set_defaults(func=compare_command)

    report = sub.add_parser("report", help="(re)write report.md and report.html in results folders")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="results folders")
    report.set_defaults(func=report_command)


def show_command(args: argparse.Namespace) -> int:
    show_run(load_run(args.run_dir), console_for_tables())
    return 0


def compare_command(args: argparse.Namespace) -> int:
    if args.out is not None:  # before the folders are read, not after
        check_output_path(comparison_plot_path(args.out), "--out", source="results compare", kind="file")
    folders = find_run_dirs(list(args.run_dirs))
    if len(folders) < 2:
        raise ResultsError(f"{folders[0] if folders else args.run_dirs[0]}: results compare needs at least two "
                           "results folders (for one run: p2pgan results show RUN_DIR)")
    records = [load_run(folder) for folder in folders]
    console = console_for_tables()
    show_comparison(records, console)
    if args.out is not None:
        path = comparison_plot_path(args.out)
        try:
            save_figure(comparison_figure(records, run_labels(records)), path)
        except OSError as exc:
            raise ResultsError(f"{path}: cannot write the picture ({exc.strerror or exc})") from None
        console.print(f"wrote {path}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    for folder in find_run_dirs(list(args.run_dirs)):
        markdown, html = write_report(folder)
        print(f"wrote {markdown} and {html}")
    return 0
