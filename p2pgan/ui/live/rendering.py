"""Pure rendering: ``render(snapshot) -> rich renderable``; no state, no clock, no I/O.

Sections are laid out as pre-formatted :class:`rich.text.Text` blocks with column widths taken
from their contents rather than as ``rich.table.Table`` objects: a frame costs about a tenth as
much to draw, which is what keeps the refresh thread's share of the CPU negligible.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from p2pgan.ui.live.state import HEALTH_D_WINS, HEALTH_G_COLLAPSE, HEALTH_OK, Snapshot

MAX_NODE_ROWS = 12
"""Client rows shown at once when the terminal height is unknown; more clients are paged."""
PAGE_SECONDS = 4.0
"""Each page of the node table is shown this long (pages follow the snapshot's wall clock)."""
WIDE = 200
"""From this console width on, the health and federation sections sit side by side."""
FIXED_LINES = 24
"""Lines the dashboard needs besides node rows, per-domain rows and log lines (to fit a terminal)."""
SPARK = "▁▂▃▄▅▆▇█"
SPARK_POINTS = 24
GAP = "  "

_STATE_STYLE = {"computing": "bold green", "sending": "cyan", "waiting": "yellow", "idle": "dim",
                "done": "dim green"}
_HEALTH_STYLE = {HEALTH_OK: "green", HEALTH_D_WINS: "bold yellow", HEALTH_G_COLLAPSE: "bold red"}
_LOG_STYLE = {"error": "bold red", "warning": "yellow", "round": "cyan", "info": "dim"}
_STATUS_STYLE = {"running": "bold green", "completed": "bold blue", "interrupted": "bold yellow",
                 "failed": "bold red"}

Cell = "str | Text"


# -- small formatters ------------------------------------------------------------------------


def sparkline(values, points: int = SPARK_POINTS) -> str:
    values = [v for v in list(values)[-points:] if v is not None and math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return SPARK[len(SPARK) // 2] * len(values)
    scale = (len(SPARK) - 1) / (hi - lo)
    return "".join(SPARK[int(round((v - lo) * scale))] for v in values)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def cut_text(cut: tuple[int, ...] | None) -> str:
    return "-" if cut is None else "(" + ",".join(str(c) for c in cut) + ")"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grid(title: str | Text, headers: Sequence[str], rows: Sequence[Sequence[Cell]], align: str) -> Text:
    """A titled text table: one column per header, ``align`` is '<' or '>' per column."""
    widths = [cell_len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], cell.cell_len if isinstance(cell, Text) else cell_len(cell))
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append_text(title if isinstance(title, Text) else Text(title, style="bold"))
    out.append("\n")
    out.append(GAP.join(h.ljust(w) if a == "<" else h.rjust(w) for h, w, a in zip(headers, widths, align)).rstrip(),
               style="bold dim")
    for row in rows:
        out.append("\n")
        for i, (cell, width, a) in enumerate(zip(row, widths, align)):
            if i:
                out.append(GAP)
            pad = " " * (width - (cell.cell_len if isinstance(cell, Text) else cell_len(cell)))
            if a == ">":
                out.append(pad)
            if isinstance(cell, Text):
                out.append_text(cell)
            else:
                out.append(cell)
            if a == "<" and i < len(row) - 1:
                out.append(pad)
    return out


class _Bars:
    """Progress bars sized to the console width at render time."""

    def __init__(self, rows: Sequence[tuple[str, int, int, str]]) -> None:
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        label_w = max(len(r[0]) for r in self.rows)
        right_w = max(len(r[3]) for r in self.rows)
        bar_w = max(10, options.max_width - label_w - right_w - 2)
        for label, done, total, right in self.rows:
            filled = int(bar_w * done / total) if total else 0
            line = Text(no_wrap=True, overflow="crop", end="\n")
            line.append(label.ljust(label_w) + " ")
            line.append("━" * filled, style="bar.finished" if done >= total else "bar.complete")
            line.append("━" * (bar_w - filled), style="bar.back")
            line.append(" " + right.ljust(right_w))
            yield line


class _SideBySide:
    """Two renderables in columns when the console is wide enough, stacked otherwise."""

    def __init__(self, left: RenderableType, right: RenderableType, min_width: int = WIDE, blank: bool = True) -> None:
        self.left, self.right, self.min_width, self.blank = left, right, min_width, blank

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if options.max_width >= self.min_width:
            both = Table.grid(expand=True, padding=(0, 3))
            both.add_column(ratio=1)
            both.add_column(ratio=1)
            both.add_row(self.left, self.right)
            yield both
        else:
            yield self.left
            if self.blank:
                yield Text("")
            yield self.right


# -- sections ---------------------------------------------------------------------------------


def header(s: Snapshot) -> Text:
    line = Text.assemble(
        ("scenario ", "dim"), (s.scenario, "bold"), ("   strategy ", "dim"), s.strategy,
        ("   transport ", "dim"), s.transport, ("   seed ", "dim"), str(s.seed),
        ("   clients ", "dim"), str(len(s.clients)), ("   status ", "dim"), (s.status, _STATUS_STYLE.get(s.status, "")),
        no_wrap=True, overflow="ellipsis",
    )
    if s.detail:
        line.append(f" ({s.detail})", style="dim")
    line.append("\nresults ", style="dim")
    line.append(s.results_dir)
    return line


def _bar(label: str, done: int, total: int, eta: float | None, stopped: bool) -> tuple[str, int, int, str]:
    total = max(total, 1)
    done = min(max(done, 0), total)
    state = "done" if done >= total else ("stopped" if stopped else f"ETA {duration(eta)}")
    return label, done, total, f"{done:>3}/{total:<3} {100 * done / total:3.0f}%  {state}"


def progress(s: Snapshot) -> RenderableType:
    spr, spe = max(s.steps_per_round, 1), max(s.steps_per_epoch, 1)
    stopped = s.status != "running"
    total = s.total_steps
    done = min(s.steps_done, total)
    # Position inside the current round; a finished round shows full until aggregation is done.
    current_round = s.rounds if s.rounds_done >= s.rounds else min(s.rounds_done + 1, s.rounds)
    in_round = min(max(done - (current_round - 1) * spr, 0), spr)
    epochs_done = in_round // spe
    iters_done = spe if in_round >= spr else in_round - epochs_done * spe
    step_s = s.step_s if s.step_s is not None else (s.elapsed_s / done if done else None)
    # The run's ETA uses the average pace so far, which includes aggregation and warm-up.
    eta_run = s.elapsed_s * (total - done) / done if done else None
    # Iteration-level ETAs count down between iterations (never below zero).
    eta_round = max((spr - in_round) * step_s - s.since_step_s, 0.0) if step_s is not None else None
    eta_epoch = max((spe - iters_done) * step_s - s.since_step_s, 0.0) if step_s is not None else None
    bars = _Bars([
        _bar("rounds", s.rounds_done, s.rounds, eta_run, stopped),
        _bar(f"epochs (r{current_round})", epochs_done, s.local_epochs, eta_round, stopped),
        _bar("iterations", iters_done, spe, eta_epoch, stopped),
    ])
    clock = Text.assemble(("wall ", "dim"), (duration(s.elapsed_s), "bold"), no_wrap=True, overflow="ellipsis")
    if s.step_s is not None:
        clock.append(f"   {s.step_s:.2f} s/iteration", style="dim")
    if s.simulated_s is not None:
        wall = s.sim_wall_s if s.sim_wall_s else s.elapsed_s
        ratio = s.simulated_s / wall if wall else float("nan")
        clock.append("   simulated ", style="dim")
        clock.append(duration(s.simulated_s), style="bold magenta")
        clock.append(f"   sim/wall ×{ratio:.2f}" if math.isfinite(ratio) else "   sim/wall -", style="magenta")
    else:
        clock.append("   simulated - (no latency engine)", style="dim")
    clock.append(f"   traffic {human_bytes(s.bytes_total)}", style="dim")
    return Group(bars, clock)


def node_table(s: Snapshot, page: int | None = None, max_rows: int = MAX_NODE_ROWS) -> Text:
    clients = s.clients
    servers = tuple(n for n in s.nodes if n.role != "client")
    max_rows = max(1, max_rows)
    pages = max(1, math.ceil(len(clients) / max_rows))
    if page is None:  # rotate while running; a finished run rests on the first page
        page = int(s.elapsed_s // PAGE_SECONDS) % pages if s.status == "running" else 0
    page %= pages
    shown = clients[page * max_rows:(page + 1) * max_rows]
    title = Text("nodes", style="bold")
    if pages > 1:
        title.append(f" · clients {page * max_rows + 1}–{page * max_rows + len(shown)} of {len(clients)} "
                     f"(page {page + 1}/{pages})", style="dim")
    rows: list[list[Cell]] = []
    for row in (*servers, *shown):
        node = Text(row.node_id, style="bold" if row.role != "client" else "")
        if row.health != HEALTH_OK:
            node.append(" !", style=_HEALTH_STYLE[row.health])
        rows.append([node, row.domain or "-", row.profile or "-", cut_text(row.cut),
                     Text(row.state, style=_STATE_STYLE.get(row.state, "")), human_bytes(row.sent),
                     human_bytes(row.received), f"{row.flops / 1e9:.1f}"])
    if pages > 1:
        states = Counter(c.state for c in clients)
        summary = " ".join(f"{state} {count}" for state, count in sorted(states.items()))
        rows.append([Text(f"all {len(clients)}", style="italic"), "", "", "", Text(summary, style="italic"),
                     human_bytes(sum(c.sent for c in clients)), human_bytes(sum(c.received for c in clients)),
                     f"{sum(c.flops for c in clients) / 1e9:.1f}"])
    return grid(title, ("node", "domain", "profile", "cut", "state", "sent", "received", "GFLOP"), rows, "<<<<<>>>")


def health_table(s: Snapshot) -> Text:
    rows: list[list[Cell]] = []
    for d in s.domains:
        status = Text(d.health, style=_HEALTH_STYLE[d.health])
        if d.unhealthy:
            status.append(" " + ",".join(d.unhealthy[:3]) + ("…" if len(d.unhealthy) > 3 else ""), style="dim")
        rows.append([d.domain, _loss(d.latest.get("d_real")), _loss(d.latest.get("d_fake")),
                     _loss(d.latest.get("d_loss")), _loss(d.latest.get("g_loss")), status,
                     Text(sparkline(d.d_history), style="blue"), Text(sparkline(d.g_history), style="magenta")])
    title = Text.assemble(("training health", "bold"), (" · per domain, latest iteration", "dim"))
    return grid(title, ("domain", "D-real", "D-fake", "D", "G", "health", "D history", "G history"), rows,
                "<>>>><<<")


def federation_table(s: Snapshot) -> Text:
    title = Text.assemble(("federation", "bold"), (f" · {s.rounds_done}/{s.rounds} rounds aggregated", "dim"))
    if s.rounds_done:
        title.append(f" · {s.num_clusters} cluster{'s' if s.num_clusters != 1 else ''}", style="dim")
    if s.ari is not None:
        title.append(f" · ARI vs domains {s.ari:.2f}", style="dim")
    rows: list[list[Cell]] = []
    for d in s.domains:
        membership = " ".join(f"#{c}×{n}" for c, n in d.membership) or "-"
        history = " ".join(f"r{r}:#{c}" for r, c in d.cluster_history[-6:]) or "-"
        if d.gen_scores:
            score = f"{d.gen_scores[-1][1]:.2f}"
            per_round = Text(sparkline([v for _, v in d.gen_scores]), style="green")
            per_round.append(" " + " ".join(f"r{r}:{v:.2f}" for r, v in d.gen_scores[-4:]))
        else:
            score, per_round = "-", Text("(no metrics yet)", style="dim")
        rows.append([d.domain, str(d.clients), membership, history, score, per_round])
    return grid(title, ("domain", "clients", "clusters (members)", "cluster per round", "gen score", "per round"),
                rows, "<><<><")


def log_section(s: Snapshot, max_lines: int | None = None) -> Text:
    out = Text("log", style="bold", no_wrap=True, overflow="ellipsis")
    logs = s.logs[-max_lines:] if max_lines else s.logs
    for level, message in logs:
        out.append("\n")
        out.append(f"[{level}] ", style=_LOG_STYLE.get(level, "dim"))
        out.append(message)
    if s.observer_errors:
        out.append(f"\n[live] {s.observer_errors} event(s) could not be shown", style="red")
    if not s.logs and not s.observer_errors:
        out.append("\n(no log lines yet)", style="dim")
    return out


MIN_NODE_ROWS = 4
COMPACT_LOG_LINES = 2
_BLANKS = 5
"""Blank separator lines in the full layout (dropped in the compact one)."""


def layout(s: Snapshot, height: int | None, max_node_rows: int | None = None) -> tuple[int, int, bool]:
    """(client rows per page, log lines, compact) so the dashboard fits ``height`` terminal lines.

    Short terminals get the compact layout (no blank separators, the last two log lines) before
    the node table shrinks below :data:`MIN_NODE_ROWS`; Live crops whatever still does not fit.
    """
    logs = max(len(s.logs) + (1 if s.observer_errors else 0), 1)
    if not height:
        return max_node_rows or MAX_NODE_ROWS, logs, False
    servers = sum(1 for n in s.nodes if n.role != "client")
    base = FIXED_LINES + servers + 2 * len(s.domains)
    rows = height - base - logs
    if rows >= MIN_NODE_ROWS or max_node_rows is not None:
        return max_node_rows or rows, logs, False
    logs = min(logs, COMPACT_LOG_LINES)
    return max(MIN_NODE_ROWS, height - base + _BLANKS - logs), logs, True


def fit_node_rows(s: Snapshot, height: int | None) -> int:
    """Client rows per page that fit a terminal of ``height`` lines with everything else shown."""
    return layout(s, height)[0]


def render(s: Snapshot, *, page: int | None = None, max_node_rows: int | None = None,
           height: int | None = None) -> RenderableType:
    """The whole dashboard for one snapshot.

    ``page`` picks the page of the node table (default: rotate every :data:`PAGE_SECONDS` of the
    snapshot's wall clock while running); ``max_node_rows`` caps the client rows per page
    (default: fit ``height`` if given, else :data:`MAX_NODE_ROWS`).
    """
    if not s.started:
        return Panel(Text("p2pgan: waiting for the run to start…", style="dim"), box=box.ROUNDED)
    rows, log_lines, compact = layout(s, height, max_node_rows)
    parts: list[RenderableType] = [
        header(s), progress(s), node_table(s, page, rows),
        _SideBySide(health_table(s), federation_table(s), blank=not compact), log_section(s, log_lines),
    ]
    if not compact:
        parts = [x for part in parts for x in (part, Text(""))][:-1]
    return Panel(Group(*parts), title=f"[bold]p2pgan[/] · {s.scenario}", title_align="left", box=box.ROUNDED,
                 padding=(0, 1))
