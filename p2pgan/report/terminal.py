"""Results in the terminal (rich): one run at a glance, several runs side by side."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.rule import Rule
from rich.table import Table as RichTable
from rich.text import Text

from p2pgan.report.content import FIGURES_DIR, build_document, megabytes, num, seconds
from p2pgan.report.document import Document, Note, Paragraph, Picture, Table
from p2pgan.report.load import RunRecord

MAX_TABLE_ROWS = 12  # longer tables show their first and last rows (report.md has them all)
CONFIG_NOT_COMPARED = ("output", "source")  # where a run was written, not what it did


def console_for_tables() -> Console:
    """The terminal's width on a terminal; 120 columns when piped, so numbers are never cut."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


# ----------------------------------------------------------------------------- one run


def show_run(record: RunRecord, console: Console) -> None:
    print_document(build_document(record), console)
    report = record.directory / "report.html"
    if report.is_file():
        console.print(f"report: {report} (and report.md, pictures in {FIGURES_DIR}/)")
    else:
        console.print(f"no report in this folder yet: p2pgan results report {record.directory}")


def print_document(document: Document, console: Console) -> None:
    console.print(Text(document.title, style="bold"))
    console.print(document.lead)
    for section in document.sections:
        console.print(Rule(section.title, align="left", style="cyan"))
        for block in section.blocks:
            if isinstance(block, Table):
                table, caption = _rich_table(block, console.width)
                console.print(table)
                if caption:
                    console.print(Text(caption, style="dim"))
            elif isinstance(block, Note):
                console.print(Text("note: " + block.text, style="yellow"))
            elif isinstance(block, Paragraph):
                console.print(block.text)
            elif isinstance(block, Picture):
                console.print(Text(f"picture: {block.path}", style="dim"))


def _rich_table(table: Table, width: int) -> tuple[RichTable, str]:
    """The table (a long one cut to its first and last rows) and its caption, printed below it
    at full width rather than squeezed to the table's."""
    rows = list(table.rows)
    hidden = 0
    if len(rows) > MAX_TABLE_ROWS and not table.key_value:
        keep = MAX_TABLE_ROWS // 2
        hidden = len(rows) - 2 * keep
        rows = rows[:keep] + [tuple("…" for _ in table.columns)] + rows[-keep:]
    caption = table.caption + (f" ({hidden} more rows in report.md)" if hidden else "")
    columns = list(table.columns)
    keep = list(range(len(columns)))
    if table.short_columns and _width(columns, rows) > width:
        columns = list(table.short_columns)
        if _width(columns, rows) > width:
            keep = [i for i in keep if i not in table.narrow_drop]
            caption += " (some columns left out at this width; all in report.md)"
    out = RichTable(box=box.SIMPLE_HEAD, show_header=not table.key_value, pad_edge=False)
    for i in keep:
        # numbers never break across lines; headers and text wrap at spaces
        out.add_column(columns[i], justify="right" if table.is_numeric(i) else "left",
                       style="bold" if table.key_value and i == 0 else None,
                       no_wrap=i == 0 or table.is_numeric(i), overflow="fold")
    for row in rows:
        out.add_row(*(row[i] for i in keep))
    return out, caption.strip()


def _width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Columns a table needs on one line: widest header or cell per column, plus padding."""
    return sum(max([len(c)] + [len(r[i]) for r in rows]) + 2 for i, c in enumerate(columns))


# ----------------------------------------------------------------------------- several runs


@dataclass(frozen=True)
class ComparedRow:
    label: str
    values: tuple[float | str | None, ...]
    text: tuple[str, ...]
    better: str | None = None  # "high" | "low": the best value gets highlighted


def run_labels(records: Sequence[RunRecord]) -> list[str]:
    """Short unique names: the folder name, with its parent where two folders share a name."""
    names = [r.directory.name for r in records]
    if len(set(names)) == len(names):
        return names
    return [f"{r.directory.parent.name}/{r.directory.name}" for r in records]


def comparison_rows(records: Sequence[RunRecord]) -> list[ComparedRow]:
    def row(label: str, get: Callable[[RunRecord], Any], fmt: Callable[[Any], str] = str,
            better: str | None = None) -> ComparedRow:
        values = tuple(get(r) for r in records)
        return ComparedRow(label, values, tuple("–" if v is None else fmt(v) for v in values), better)

    rows = [
        row("scenario", lambda r: r.info.name),
        row("strategy", lambda r: r.info.strategy),
        row("seed", lambda r: r.info.seed),
        row("status", lambda r: r.status),
        row("rounds", lambda r: f"{r.rounds_completed}/{r.info.rounds_planned}"),
        row("clients", lambda r: r.info.num_clients),
    ]
    domains = list(dict.fromkeys(d for r in records for d in r.domains))
    for domain in domains:
        def final(key: str, d: str = domain) -> Callable[[RunRecord], float | None]:
            return lambda r: getattr(r.final.domains[d], key) if r.final and d in r.final.domains else None

        rows += [
            row(f"{domain} generation score", final("gen_score"), lambda v: num(v), "high"),
            row(f"{domain} FID", final("fid"), lambda v: num(v, 1), "low"),
            row(f"{domain} accuracy %", final("accuracy"), lambda v: num(v), "high"),
            row(f"{domain} macro F1 %", final("f1"), lambda v: num(v), "high"),
        ]
    rows += [
        row("clustering ARI (last round)", lambda r: r.rounds[-1].ari if r.rounds else None, lambda v: num(v),
            "high"),
        row("simulated total", lambda r: r.timing.sim_total_s, seconds, "low"),
        row("simulated per iteration", lambda r: r.timing.sim_s_per_iteration, seconds, "low"),
        row("wall clock, training", lambda r: r.timing.wall_s, seconds),
        row("traffic total", lambda r: r.traffic.total_bytes if r.traffic else None, megabytes, "low"),
        row("traffic per round", lambda r: r.traffic.per_round_bytes if r.traffic else None, megabytes, "low"),
    ]
    return rows


def config_differences(records: Sequence[RunRecord]) -> dict[str, tuple[str, ...]]:
    """Scenario keys whose values differ between the runs (dotted paths), with each run's value."""
    flat = [_flatten({k: v for k, v in r.config.items() if k not in CONFIG_NOT_COMPARED}) for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: tuple(str(f.get(k, "–")) for f in flat) for k in keys if len({str(f.get(k)) for f in flat}) > 1}


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping):
            out.update(_flatten(item, path + "."))
        else:
            out[path] = item
    return out


def show_comparison(records: Sequence[RunRecord], console: Console) -> None:
    labels = run_labels(records)
    table = RichTable(title=f"{len(records)} runs side by side", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")
    for row in comparison_rows(records):
        best = _best(row)
        table.add_row(row.label, *(Text(t, style="bold green" if i in best else "") for i, t in enumerate(row.text)))
    console.print(table)
    console.print(Text("green: the best value of a row (higher score, accuracy, F1, ARI; lower FID, time, traffic)",
                       style="dim"))
    differences = config_differences(records)
    if differences:
        diff = RichTable(title="scenario keys that differ", box=box.SIMPLE_HEAD, pad_edge=False)
        diff.add_column("key", style="bold")
        for label in labels:
            diff.add_column(label, overflow="fold")
        for key, values in differences.items():
            diff.add_row(key, *values)
        console.print(diff)
    else:
        console.print("the runs' scenarios are identical (apart from where they were written)")


def _best(row: ComparedRow) -> set[int]:
    numbers = [(i, v) for i, v in enumerate(row.values) if isinstance(v, (int, float))]
    if row.better is None or len(numbers) < 2:
        return set()
    target = (max if row.better == "high" else min)(v for _, v in numbers)
    if all(v == target for _, v in numbers):
        return set()
    return {i for i, v in numbers if v == target}


def comparison_plot_path(out: Path) -> Path:
    """``--out``: a ``.png`` file, or a folder to hold ``comparison.png``."""
    return out if out.suffix.lower() == ".png" else out / "comparison.png"
