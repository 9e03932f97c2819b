"""Pure rendering: ``render(snapshot) -> rich renderable``; no state, no clock, no I/O.

Sections are laid out as pre-formatted :class:`rich.text.Text` blocks with column widths taken
from their contents rather than as ``rich.table.Table`` objects: a frame costs about a tenth as
much to draw, which is what keeps the refresh thread's share of the CPU negligible. Every block
is ``no_wrap`` and sized to the console width it is drawn at (fields flow onto the next line,
tables drop their least useful columns), so its height is known before it is drawn: on a short
terminal the layout picks, from richest to leanest, the first plan whose sections fit.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from p2pgan.ui.live.state import HEALTH_D_WINS, HEALTH_G_COLLAPSE, HEALTH_OK, Snapshot

MAX_NODE_ROWS = 12
"""Client rows shown at once when the terminal height is unknown; more clients are paged."""
MIN_NODE_ROWS = 4
"""Fewer client rows than this per page (and not all of them) collapse into one summary row."""
PAGE_SECONDS = 4.0
"""Each page of the node table is shown this long (pages follow the snapshot's wall clock)."""
WIDE = 200
"""From this console width on, the health and federation sections sit side by side."""
SPARK = "▁▂▃▄▅▆▇█"
SPARK_POINTS = 24
GAP = "  "
FIELD_GAP = "   "
PANEL_CHROME = 4
"""Columns the panel takes around its contents (two borders, one space of padding each side)."""

_STATE_STYLE = {"computing": "bold green", "sending": "cyan", "waiting": "yellow", "idle": "dim",
                "done": "dim green", "dropped": "bold red"}
_HEALTH_STYLE = {HEALTH_OK: "green", HEALTH_D_WINS: "bold yellow", HEALTH_G_COLLAPSE: "bold red"}
_LOG_STYLE = {"error": "bold red", "warning": "yellow", "round": "cyan", "info": "dim"}
_STATUS_STYLE = {"running": "bold green", "completed": "bold blue", "interrupted": "bold yellow",
                 "failed": "bold red", "preparing": "bold cyan", "evaluating": "bold magenta",
                 "closing": "bold magenta"}
_STEP_MARK = {"done": ("✓", "green"), "started": ("…", "bold yellow"), "failed": ("✗", "bold red")}

Cell = "str | Text"


# -- small formatters ------------------------------------------------------------------------


def sparkline(values, points: int = SPARK_POINTS) -> str:
    values = [v for v in list(values)[-points:] if v is not None and math.isfinite(v)]
    if not values or points <= 0:
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


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def lines_of(text: Text) -> int:
    return text.plain.count("\n") + 1


def width_of(text: Text) -> int:
    return max(cell_len(line) for line in text.plain.split("\n"))


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


def columns_grid(title: str | Text, columns: Sequence[tuple[str, str, Sequence[Cell]]], drop: Sequence[str],
                 width: int | None) -> Text:
    """A :func:`grid` from ``(header, align, cells)`` columns that drops the columns named in
    ``drop`` (in that order) until its widest line fits ``width``."""
    kept = list(columns)
    dropping = [name for name in drop if any(c[0] == name for c in kept)]
    while True:
        rows = [[col[2][i] for col in kept] for i in range(len(kept[0][2]))] if kept else []
        out = grid(title, [c[0] for c in kept], rows, "".join(c[1] for c in kept))
        if width is None or not dropping or width_of(out) <= width:
            return out
        name = dropping.pop(0)
        kept = [c for c in kept if c[0] != name]


def flow(fields: Sequence[Text], width: int | None, gap: str = FIELD_GAP) -> Text:
    """``fields`` on one line, or on as many as ``width`` needs; a field is never split."""
    out = Text(no_wrap=True, overflow="ellipsis")
    used = 0
    for field in fields:
        if used and width is not None and used + len(gap) + field.cell_len > width:
            out.append("\n")
            used = 0
        elif used:
            out.append(gap)
            used += len(gap)
        out.append_text(field)
        used += field.cell_len
    return out


def _field(label: str, value: str | Text, style: str = "") -> Text:
    out = Text(label + " ", style="dim")
    out.append_text(value if isinstance(value, Text) else Text(value, style=style))
    return out


def _wrapped(text: str, width: int | None, style: str = "dim", indent: str = "") -> Text:
    """``text`` wrapped at ``width`` into a no_wrap block (its height is then its line count)."""
    lines = textwrap.wrap(text, width=max(10, (width or 10_000) - len(indent))) or [""]
    return Text("\n".join(indent + line for line in lines), style=style, no_wrap=True, overflow="ellipsis")


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


def header(s: Snapshot, width: int | None = None) -> Text:
    """Status first (so a narrow terminal never cuts it), then what runs, then the results folder."""
    status = Text(s.status, style=_STATUS_STYLE.get(s.status.split(" ")[0], ""))
    clients = str(len(s.clients))
    if s.dropped:
        clients += f" ({s.dropped} dropped)"
    fields = [_field("status", status), _field("clients", clients, "bold red" if s.dropped else ""),
              _field("scenario", s.scenario, "bold"), _field("strategy", s.strategy),
              _field("transport", s.transport), _field("seed", str(s.seed))]
    out = flow(fields, width)
    if s.detail:
        out.append("\n")
        out.append_text(_wrapped(s.detail, width, indent="  "))
    out.append("\n")
    out.append("results ", style="dim")
    out.append(s.results_dir)
    return out


def _bar(label: str, done: int, total: int, eta: float | None, stopped: bool) -> tuple[str, int, int, str]:
    total = max(total, 1)
    done = min(max(done, 0), total)
    state = "done" if done >= total else ("stopped" if stopped else f"ETA {duration(eta)}")
    return label, done, total, f"{done:>3}/{total:<3} {100 * done / total:3.0f}%  {state}"


def clock_line(s: Snapshot, width: int | None = None) -> Text:
    fields = [_field("wall", Text(duration(s.elapsed_s), style="bold"))]
    if s.step_s is not None:
        fields.append(Text(f"{s.step_s:.2f} s/iteration", style="dim"))
    if s.simulated_s is not None:
        wall = s.sim_wall_s if s.sim_wall_s else s.elapsed_s
        ratio = s.simulated_s / wall if wall else float("nan")
        simulated = Text(duration(s.simulated_s), style="bold magenta")
        simulated.append(f" (×{ratio:.2f})" if math.isfinite(ratio) else "", style="magenta")
        fields.append(_field("simulated", simulated))
    elif s.rounds_done == 0:
        # The latency engine prices a round once it has closed: nothing to show before that.
        fields.append(Text("simulated: after round 1", style="dim"))
    else:
        fields.append(Text("simulated - (no latency engine)", style="dim"))
    fields.append(_field("traffic", Text(human_bytes(s.bytes_total), style="dim")))
    return flow(fields, width)


def progress(s: Snapshot, width: int | None = None) -> Group:
    spr, spe = max(s.steps_per_round, 1), max(s.steps_per_epoch, 1)
    stopped = s.status in ("completed", "interrupted", "failed")
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
    return Group(bars, clock_line(s, width))


def _progress_lines(s: Snapshot, width: int | None) -> int:
    return 3 + lines_of(clock_line(s, width))


def node_table(s: Snapshot, page: int | None = None, max_rows: int = MAX_NODE_ROWS, width: int | None = None) -> Text:
    """The server(s) and a page of clients (pages rotate while running) with a summary row of all
    clients; ``max_rows=0`` shows only the summary row (a terminal too short for client rows)."""
    clients = s.clients
    servers = tuple(n for n in s.nodes if n.role != "client")
    title = Text("nodes", style="bold")
    if max_rows <= 0 and clients:
        shown: tuple = ()
        paged = True
        title.append(f" · {len(clients)} clients, summarised (a taller terminal lists them)", style="dim")
    else:
        max_rows = max(1, max_rows)
        pages = max(1, math.ceil(len(clients) / max_rows))
        if page is None:  # rotate while running; a finished run rests on the first page
            page = int(s.elapsed_s // PAGE_SECONDS) % pages if s.status == "running" else 0
        page %= pages
        shown = clients[page * max_rows:(page + 1) * max_rows]
        paged = pages > 1
        if paged:
            title.append(f" · clients {page * max_rows + 1}–{page * max_rows + len(shown)} of {len(clients)} "
                         f"(page {page + 1}/{pages})", style="dim")
    rows: list[list[Cell]] = []
    for row in (*servers, *shown):
        node = Text(row.node_id, style="bold" if row.role != "client" else "")
        if row.health != HEALTH_OK:
            node.append(" !", style=_HEALTH_STYLE[row.health])
        state = "dropped" if row.dropped else row.state
        rows.append([node, row.domain or "-", row.profile or "-", cut_text(row.cut),
                     Text(state, style=_STATE_STYLE.get(state, "")), human_bytes(row.sent),
                     human_bytes(row.received), f"{row.flops / 1e9:.1f}"])
    if paged:
        states = Counter("dropped" if c.dropped else c.state for c in clients)
        summary = " ".join(f"{state} {count}" for state, count in sorted(states.items()))
        rows.append([Text(f"all {len(clients)}", style="italic"), "", "", "", Text(summary, style="italic"),
                     human_bytes(sum(c.sent for c in clients)), human_bytes(sum(c.received for c in clients)),
                     f"{sum(c.flops for c in clients) / 1e9:.1f}"])
    headers = ("node", "domain", "profile", "cut", "state", "sent", "received", "GFLOP")
    columns = [(h, a, [r[i] for r in rows]) for i, (h, a) in enumerate(zip(headers, "<<<<<>>>"))]
    return columns_grid(title, columns, ("GFLOP", "received", "profile"), width)


def _node_table_lines(s: Snapshot, rows: int) -> int:
    clients = len(s.clients)
    servers = len(s.nodes) - clients
    if rows <= 0:
        return 2 + servers + (1 if clients else 0)
    shown = min(rows, clients)
    return 2 + servers + shown + (1 if clients > rows else 0)


def _spark_points(width: int | None, fixed: int, sparks: int) -> int:
    """Points per sparkline so that ``sparks`` of them fit beside ``fixed`` columns."""
    if width is None:
        return SPARK_POINTS
    return max(0, min(SPARK_POINTS, (width - fixed - len(GAP) * sparks) // max(sparks, 1)))


def health_table(s: Snapshot, width: int | None = None) -> Text:
    title = Text.assemble(("training health", "bold"), (" · per domain, latest iteration", "dim"))

    def build(points: int) -> Text:
        rows: list[list[Cell]] = []
        for d in s.domains:
            status = Text(d.health, style=_HEALTH_STYLE[d.health])
            if d.unhealthy:
                status.append(" " + ",".join(d.unhealthy[:3]) + ("…" if len(d.unhealthy) > 3 else ""), style="dim")
            row = [d.domain, _loss(d.latest.get("d_real")), _loss(d.latest.get("d_fake")),
                   _loss(d.latest.get("d_loss")), _loss(d.latest.get("g_loss")), status]
            if points >= 6:
                row += [Text(sparkline(d.d_history, points), style="blue"),
                        Text(sparkline(d.g_history, points), style="magenta")]
            rows.append(row)
        headers = ("domain", "D-real", "D-fake", "D", "G", "health") + (("D history", "G history") if points >= 6 else ())
        return grid(title, headers, rows, "<>>>><<<"[:len(headers)])

    table = build(SPARK_POINTS)
    if width is None or width_of(table) <= width:
        return table
    bare = build(0)
    return build(_spark_points(width, width_of(bare), 2))


def federation_table(s: Snapshot, width: int | None = None) -> Text:
    title = Text.assemble(("federation", "bold"), (f" · {s.rounds_done}/{s.rounds} rounds aggregated", "dim"))
    if s.rounds_done:
        title.append(f" · {s.num_clusters} cluster{'s' if s.num_clusters != 1 else ''}", style="dim")
    if s.ari is not None:
        title.append(f" · ARI vs domains {s.ari:.2f}", style="dim")

    def build(history: int, scores: int) -> Text:
        rows: list[list[Cell]] = []
        for d in s.domains:
            membership = " ".join(f"#{c}×{n}" for c, n in d.membership) or "-"
            per_round_clusters = " ".join(f"r{r}:#{c}" for r, c in d.cluster_history[-history:]) or "-"
            if d.gen_scores:
                score = f"{d.gen_scores[-1][1]:.2f}"
                per_round = Text(sparkline([v for _, v in d.gen_scores]), style="green")
                if scores:
                    per_round.append(" " + " ".join(f"r{r}:{v:.2f}" for r, v in d.gen_scores[-scores:]))
            else:
                score, per_round = "-", Text("(no metrics yet)", style="dim")
            rows.append([d.domain, str(d.clients), membership, per_round_clusters, score, per_round])
        return grid(title, ("domain", "clients", "clusters (members)", "cluster per round", "gen score", "per round"),
                    rows, "<><<><")

    for history, scores in ((6, 4), (4, 2), (2, 1), (1, 0)):
        table = build(history, scores)
        if width is None or width_of(table) <= width:
            return table
    return table


def domains_table(s: Snapshot, width: int | None = None) -> Text:
    """Health and federation in one row per domain (a short or narrow terminal)."""
    title = Text.assemble(("domains", "bold"), (f" · {s.rounds_done}/{s.rounds} rounds", "dim"))
    if s.rounds_done:
        title.append(f" · {s.num_clusters} cluster{'s' if s.num_clusters != 1 else ''}", style="dim")
    if s.ari is not None:
        title.append(f" · ARI {s.ari:.2f}", style="dim")
    columns: list[tuple[str, str, list[Cell]]] = [
        ("domain", "<", [d.domain for d in s.domains]),
        ("clients", ">", [str(d.clients) for d in s.domains]),
        ("D", ">", [_loss(d.latest.get("d_loss")) for d in s.domains]),
        ("G", ">", [_loss(d.latest.get("g_loss")) for d in s.domains]),
        ("health", "<", [Text(d.health, style=_HEALTH_STYLE[d.health]) for d in s.domains]),
        ("clusters", "<", [" ".join(f"#{c}×{n}" for c, n in d.membership) or "-" for d in s.domains]),
        ("gen score", ">", [f"{d.gen_scores[-1][1]:.2f}" if d.gen_scores else "-" for d in s.domains]),
    ]
    return columns_grid(title, columns, ("clients", "clusters"), width)


def final_section(s: Snapshot, width: int | None = None) -> Text | None:
    """The final evaluation: running (status "evaluating"), its metrics, or why it failed."""
    if s.final_state is None:
        return None
    if s.final_state == "started":
        return Text.assemble(("final evaluation", "bold magenta"),
                             (f" · round {s.final_round} · {duration(s.final_s)} so far", "dim"),
                             no_wrap=True, overflow="ellipsis")
    if s.final_state == "failed":
        out = Text("final evaluation failed", style="bold red", no_wrap=True, overflow="ellipsis")
        out.append("\n")
        out.append_text(_wrapped(s.final_detail, width, indent="  "))
        return out
    title = Text.assemble(("final metrics", "bold"), (f" · round {s.final_round}", "dim"), no_wrap=True)
    if s.final_ari is not None:
        title.append(f" · ARI {s.final_ari:.2f}", style="dim")
    title.append(f" · evaluated in {s.final_s:.1f}s", style="dim")
    rows = s.final_rows
    columns: list[tuple[str, str, list[Cell]]] = [("domain", "<", [r.domain for r in rows]),
                                                  ("gen score", ">", [_num(r.gen_score) for r in rows]),
                                                  ("FID", ">", [_num(r.fid, 1) for r in rows])]
    if any(r.accuracy is not None for r in rows):
        columns.append(("accuracy %", ">", [_num(r.accuracy, 1) for r in rows]))
    if any(r.f1 is not None for r in rows):
        columns.append(("macro F1 %", ">", [_num(r.f1, 1) for r in rows]))
    return columns_grid(title, columns, (), width)


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


def preparation_view(s: Snapshot, width: int | None = None, height: int | None = None) -> RenderableType:
    """Before the run starts: a checklist of the preparation steps, with their seconds.

    A long detail is cut, never a step's name or time; a short terminal shows the latest steps."""
    status = Text(s.status, style=_STATUS_STYLE.get(s.status, ""))
    head = flow([_field("status", status), _field("scenario", s.title or "-", "bold"),
                 _field("wall", Text(duration(s.elapsed_s), style="bold"))], width)
    steps = list(s.preparation)
    budget = None if height is None else height - 1 - 2 - lines_of(head) - 1 - 1  # blank line, title line
    hidden = 0
    if budget is not None and len(steps) > max(budget, 1):
        keep = max(budget - 1, 1)
        hidden, steps = len(steps) - keep, steps[-keep:]
    names = max((cell_len(p.name) for p in steps), default=0)
    times = [f"{p.seconds:.1f}s" for p in steps]
    room = None if width is None else max(4, width - 1 - names - max(map(len, times), default=0) - 3 * len(GAP))
    rows: list[list[Cell]] = []
    for step, seconds in zip(steps, times):
        mark, style = _STEP_MARK.get(step.state, ("?", ""))
        detail = step.detail or ("running" if step.state == "started" else "")
        rows.append([Text(mark, style=style), step.name, _ellipsis(detail, room) if room else detail, seconds])
    title = Text("preparation", style="bold")
    if hidden:
        title.append(f" · {hidden} earlier step{'s' if hidden != 1 else ''} not shown", style="dim")
    table = grid(title, ("", "step", "", "time"), rows, "<<<>")
    parts: list[RenderableType] = [head, Text(""), table]
    if s.logs and (budget is None or budget - len(rows) >= 3):
        parts += [Text(""), log_section(s, 1 if budget is not None else None)]
    return Panel(Group(*parts), title=f"[bold]p2pgan[/] · {s.title or 'run'} · preparing", title_align="left",
                 box=box.ROUNDED, padding=(0, 1))


def _ellipsis(line: str, width: int) -> str:
    return line if cell_len(line) <= width else line[:max(1, width - 1)] + "…"


# -- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one frame shows: client rows per page (0: a summary row only), log lines (0: no log),
    the per-domain sections ("both", "merged" or "none") and whether blank lines separate sections."""

    rows: int
    logs: int
    domains: str
    blanks: bool


def _domain_lines(s: Snapshot, kind: str, width: int | None, blanks: bool) -> int:
    if kind == "none" or not s.domains:
        return 0
    if kind == "merged":
        return lines_of(domains_table(s, width))
    health, federation = lines_of(health_table(s, width)), lines_of(federation_table(s, width))
    if width is not None and width >= WIDE:
        return max(health, federation)
    return health + federation + (1 if blanks else 0)


def plan_frame(s: Snapshot, width: int | None, height: int | None, max_node_rows: int | None = None) -> Plan:
    """The richest :class:`Plan` whose sections fit ``height`` lines, one left for the cursor.

    Header, progress and the final metrics always show; then, from richest to leanest: blank
    separators, the two per-domain sections (else one merged table, else none), at least
    :data:`MIN_NODE_ROWS` client rows (else a summary row), a log (else none). Lines left over go
    to more client rows, then to more log lines.
    """
    log_total = max(len(s.logs) + (1 if s.observer_errors else 0), 1)
    clients = len(s.clients)
    if height is None:
        return Plan(max_node_rows or MAX_NODE_ROWS, log_total, "both", True)
    budget = height - 1 - 2  # the cursor's line, the panel's two borders
    final = final_section(s, width)
    fixed = lines_of(header(s, width)) + _progress_lines(s, width) + (lines_of(final) if final is not None else 0)
    cap = min(clients, max_node_rows) if max_node_rows is not None else clients
    rows = min(cap, MIN_NODE_ROWS)
    tiers = [(True, "both", rows, True), (False, "both", rows, True), (False, "merged", rows, True),
             (False, "merged", 0, True), (False, "none", rows, True), (False, "none", 0, True),
             (False, "merged", 0, False), (False, "none", 0, False)]
    for blanks, domains, rows, log in tiers:
        parts = 3 + (final is not None) + (domains != "none" and bool(s.domains)) + log
        used = (fixed + _node_table_lines(s, rows) + _domain_lines(s, domains, width, blanks)
                + (2 if log else 0) + ((parts - 1) if blanks else 0))
        if used <= budget:
            break
    free = budget - used
    if rows > 0:  # grow the page; all clients on one page need no summary row
        grown = min(cap, rows + free)
        if grown >= clients:
            grown = clients
        while grown > rows and _node_table_lines(s, grown) - _node_table_lines(s, rows) > free:
            grown -= 1
        free -= _node_table_lines(s, grown) - _node_table_lines(s, rows)
        rows = grown
    logs = min(log_total, 1 + max(free, 0)) if log else 0
    return Plan(rows, logs, domains, blanks)


class _Dashboard:
    """The running dashboard, planned for the width it is drawn at."""

    def __init__(self, s: Snapshot, page: int | None, max_node_rows: int | None, height: int | None) -> None:
        self.s, self.page, self.max_node_rows, self.height = s, page, max_node_rows, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.panel(max(20, options.max_width - PANEL_CHROME))

    def panel(self, width: int | None) -> Panel:
        s = self.s
        plan = plan_frame(s, width, self.height, self.max_node_rows)
        parts: list[RenderableType] = [header(s, width), progress(s, width)]
        final = final_section(s, width)
        if final is not None:
            parts.append(final)
        parts.append(node_table(s, self.page, plan.rows, width))
        if plan.domains == "both" and s.domains:
            parts.append(_SideBySide(health_table(s, width), federation_table(s, width), blank=plan.blanks))
        elif plan.domains == "merged" and s.domains:
            parts.append(domains_table(s, width))
        if plan.logs:
            parts.append(log_section(s, plan.logs))
        if plan.blanks:
            parts = [x for part in parts for x in (part, Text(""))][:-1]
        return Panel(Group(*parts), title=f"[bold]p2pgan[/] · {s.scenario}", title_align="left", box=box.ROUNDED,
                     padding=(0, 1))


def render(s: Snapshot, *, page: int | None = None, max_node_rows: int | None = None,
           height: int | None = None) -> RenderableType:
    """The whole dashboard for one snapshot, fitted to the width it is drawn at.

    ``page`` picks the page of the node table (default: rotate every :data:`PAGE_SECONDS` of the
    snapshot's wall clock while running); ``max_node_rows`` caps the client rows per page
    (default: fit ``height`` if given, else :data:`MAX_NODE_ROWS`); ``height``: the terminal's
    lines, of which the frame leaves the last for the cursor.
    """
    if not s.started:
        if s.preparing:
            return _Preparing(s, height)
        return Panel(Text("p2pgan: waiting for the run to start…", style="dim"), box=box.ROUNDED)
    return _Dashboard(s, page, max_node_rows, height)


class _Preparing:
    def __init__(self, s: Snapshot, height: int | None) -> None:
        self.s, self.height = s, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield preparation_view(self.s, max(20, options.max_width - PANEL_CHROME), self.height)


__all__ = ["Plan", "columns_grid", "flow", "grid", "header", "human_bytes", "node_table", "plan_frame", "render",
           "sparkline"]
