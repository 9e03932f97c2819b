"""The report's pictures, drawn from a :class:`~p2pgan.report.load.RunRecord` (matplotlib, Agg).

Every plot has a title, labelled axes with units and integer round/iteration ticks. Like
``p2pgan.metrics.plots`` this uses matplotlib's object API with the Agg canvas directly (no
``pyplot``), so nothing touches matplotlib's global state.

Sample grids are re-rendered from the PNGs in ``samples/``: the writer tiles them one row per
class (``grid_samples_per_class`` per row, 2 px padding), so the rows can be labelled with the
domain's class names without rebuilding the generator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from p2pgan.report.load import RunRecord

GRID_PADDING = 2  # what p2pgan.metrics.plots.image_grid puts around every image
DPI = 100
MAX_SAMPLE_ROUNDS = 4
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22")
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class FigureSet:
    """The pictures written for one report (absent where the run has no data for them)."""

    losses: Path | None = None
    quality: Path | None = None
    clusters: Path | None = None
    latency: Path | None = None
    samples: dict[str, Path] = field(default_factory=dict)  # domain -> labelled grids


def render_figures(record: RunRecord, out_dir: Path) -> FigureSet:
    """Draw every figure the record has data for into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return FigureSet(
        losses=save_figure(loss_figure(record), out_dir / "losses.png"),
        quality=save_figure(quality_figure(record), out_dir / "quality.png"),
        clusters=save_figure(cluster_figure(record), out_dir / "clusters.png"),
        latency=save_figure(latency_figure(record), out_dir / "latency.png"),
        samples={domain: path for domain in record.domains
                 if (path := save_figure(sample_figure(record, domain), out_dir / f"samples-{domain}.png"))},
    )


def save_figure(fig: Figure | None, path: Path) -> Path | None:
    """Write ``fig`` as PNG (nothing for ``None``); return where."""
    if fig is None:
        return None
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _integer_ticks(ax, values: Sequence[int]) -> None:
    """Only whole rounds/iterations on the x axis; every one of them when there are few."""
    if values and len(set(values)) <= 12:
        ax.set_xticks(sorted(set(values)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _no_data(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def domain_color(record: RunRecord, domain: str) -> str:
    domains = list(record.domains)
    return COLORS[domains.index(domain) % len(COLORS)] if domain in domains else COLORS[-1]


# --------------------------------------------------------------------------------- losses


def iteration_losses(record: RunRecord) -> tuple[list[int], dict[str, dict[str, list[float | None]]], list[int]]:
    """Per domain, the mean D and G loss of its clients at every iteration.

    Returns (iteration numbers from 1, {domain: {"d_loss": [...], "g_loss": [...]}}, the first
    iteration of every round after the first).
    """
    keys = sorted({(s.round, s.step) for s in record.steps})
    index = {key: i + 1 for i, key in enumerate(keys)}
    sums: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    domain_of = record.info.client_domain
    for step in record.steps:
        for loss in ("d_loss", "g_loss"):
            if loss in step.values:
                for domain in domain_of.get(step.node, "?").split("+"):
                    sums[(domain, loss, index[(step.round, step.step)])].append(step.values[loss])
    series: dict[str, dict[str, list[float | None]]] = {}
    for domain in record.domains:
        series[domain] = {loss: [(sum(v) / len(v)) if (v := sums.get((domain, loss, i))) else None
                                 for i in range(1, len(keys) + 1)] for loss in ("d_loss", "g_loss")}
    first_of_round: dict[int, int] = {}
    for key in keys:
        first_of_round.setdefault(key[0], index[key])
    boundaries = [i for r, i in first_of_round.items() if keys and r != keys[0][0]]
    return list(range(1, len(keys) + 1)), series, boundaries


def loss_figure(record: RunRecord) -> Figure | None:
    """Discriminator and generator loss per iteration (mean over each domain's clients)."""
    if not record.steps and not record.rounds:
        return None
    fig = _figure(11.0, 3.8)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    titles = {"d_loss": "Discriminator loss", "g_loss": "Generator loss"}
    if record.steps:
        x, series, boundaries = iteration_losses(record)
        for ax, loss in zip(axes, ("d_loss", "g_loss")):
            for domain, values in series.items():
                points = [(i, v) for i, v in zip(x, values[loss]) if v is not None]
                if points:
                    ax.plot(*zip(*points), color=domain_color(record, domain), label=domain,
                            marker="." if len(points) <= 40 else None)
            for b in boundaries:
                ax.axvline(b - 0.5, color="#999999", linestyle=":", linewidth=1)
            ax.set_xlabel("iteration (dotted lines: round boundaries)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        rounds = [r.round for r in record.rounds]
        for ax, loss in zip(axes, ("d_loss", "g_loss")):
            for domain in record.domains:
                points = [(r.round, r.losses[domain][loss]) for r in record.rounds
                          if loss in r.losses.get(domain, {})]
                if points:
                    ax.plot(*zip(*points), color=domain_color(record, domain), label=domain, marker="o")
            ax.set_xlabel("round")
            _integer_ticks(ax, rounds)
    for ax, loss in zip(axes, ("d_loss", "g_loss")):
        ax.set_title(titles[loss])
        ax.set_ylabel("binary cross-entropy (nats)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return fig


# --------------------------------------------------------------------------------- quality


def quality_figure(record: RunRecord) -> Figure | None:
    """Generation score, FID and clustering ARI per evaluated round."""
    if not record.metrics_rounds:
        return None
    fig = _figure(13.0, 3.8)
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    rounds = [m.round for m in record.metrics_rounds]
    marker = "o" if len(rounds) <= 40 else None
    for ax, key, title, ylabel in (
        (axes[0], "gen_score", "Generation score per round", "score (1 = no variety, 10 = best)"),
        (axes[1], "fid", "FID per round", "FID (lower is better)"),
    ):
        top = 0.0
        for domain in record.domains:
            points = [(m.round, getattr(m.domains[domain], key)) for m in record.metrics_rounds
                      if domain in m.domains and getattr(m.domains[domain], key) is not None]
            if points:
                ax.plot(*zip(*points), color=domain_color(record, domain), label=domain, marker=marker)
                top = max(top, max(v for _, v in points))
        if key == "gen_score":  # on its own scale: a flat 1.00x curve must not look like progress
            ax.set_ylim(0.9, max(2.0, 1.08 * top))
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        _integer_ticks(ax, rounds)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    aris = [(m.round, m.ari) for m in record.metrics_rounds if m.ari is not None]
    if aris:
        axes[2].plot(*zip(*aris), color="#333333", marker=marker)
        axes[2].set_ylim(-0.1, 1.1)
        axes[2].set_title("Clustering vs true domains")
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("ARI (1 = clusters match domains)")
        _integer_ticks(axes[2], rounds)
        axes[2].grid(True, alpha=0.3)
    else:
        _no_data(axes[2], "Clustering ARI", "undefined for this run\n(one domain or a pooled client)")
    return fig


# --------------------------------------------------------------------------------- clusters


def cluster_figure(record: RunRecord) -> Figure | None:
    """Which cluster each client was in after every round (one colour per cluster)."""
    if not record.rounds:
        return None
    clients = sorted({c for r in record.rounds for c in r.clusters})
    if not clients:
        return None
    rounds = [r.round for r in record.rounds]
    cluster_ids = sorted({k for r in record.rounds for k in r.clusters.values()})
    position = {k: i for i, k in enumerate(cluster_ids)}
    grid = np.full((len(clients), len(rounds)), np.nan)
    for j, r in enumerate(record.rounds):
        for i, c in enumerate(clients):
            if c in r.clusters:
                grid[i, j] = position[r.clusters[c]]
    palette = ListedColormap([COLORS[i % len(COLORS)] for i in range(len(cluster_ids))])
    width = min(14.0, 5.0 + 0.3 * len(rounds))
    height = min(12.0, 1.6 + 0.28 * len(clients))
    fig = _figure(width, height)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, cmap=palette, vmin=-0.5, vmax=len(cluster_ids) - 0.5, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(clients)))
    domain_of = record.info.client_domain
    ax.set_yticklabels([f"{c} ({domain_of.get(c, '?')})" for c in clients],
                       fontsize="small" if len(clients) <= 30 else "x-small")
    step = max(1, len(rounds) // 20)
    ax.set_xticks(range(0, len(rounds), step))
    ax.set_xticklabels([str(rounds[j]) for j in range(0, len(rounds), step)])
    ax.set_xlabel("round")
    ax.set_title("Cluster of each client after every round")
    ax.legend(handles=[Patch(color=COLORS[i % len(COLORS)], label=f"cluster {k}") for i, k in enumerate(cluster_ids)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return fig


# --------------------------------------------------------------------------------- latency


def latency_figure(record: RunRecord) -> Figure | None:
    """Simulated vs wall seconds per round, busy seconds per device profile, critical path by phase."""
    latency = record.latency
    if latency is None:
        return None
    fig = _figure(15.0, 4.2)
    ax_round, ax_profile, ax_phase = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))

    if latency.rounds:
        rounds = [r.round for r in latency.rounds]
        x = np.arange(len(rounds))
        train = [r.seconds - r.federate_s for r in latency.rounds]
        exchange = [r.federate_s for r in latency.rounds]
        ax_round.bar(x - 0.2, train, 0.4, color="#1f77b4", label="simulated: iterations")
        ax_round.bar(x - 0.2, exchange, 0.4, bottom=train, color="#aec7e8", label="simulated: round exchange")
        wall = [record.timing.wall_round_s.get(r) for r in rounds]
        if any(w is not None for w in wall):
            ax_round.bar(x + 0.2, [w or 0.0 for w in wall], 0.4, color="#ff7f0e", label="wall clock")
        step = max(1, len(rounds) // 15)
        ax_round.set_xticks(x[::step])
        ax_round.set_xticklabels([str(r) for r in rounds[::step]])
        ax_round.set_xlabel("round")
        ax_round.set_ylabel("seconds")
        ax_round.set_title("Time per round")
        top = max([r.seconds for r in latency.rounds] + [w or 0.0 for w in wall])
        ax_round.set_ylim(0, 1.35 * top if top > 0 else 1.0)  # room for the legend above the bars
        ax_round.legend(loc="upper center", ncol=2, fontsize="small")
        ax_round.grid(True, axis="y", alpha=0.3)
    else:
        _no_data(ax_round, "Time per round", "no per-round latency recorded")

    profiles = list(latency.profiles)
    if profiles:
        y = np.arange(len(profiles))
        compute = [p.compute_s for p in profiles]
        up = [p.up_s for p in profiles]
        down = [p.down_s for p in profiles]
        ax_profile.barh(y, compute, color="#2ca02c", label="compute")
        ax_profile.barh(y, up, left=compute, color="#9467bd", label="upload (link busy)")
        ax_profile.barh(y, down, left=[c + u for c, u in zip(compute, up)], color="#c5b0d5",
                        label="download (link busy)")
        ax_profile.set_yticks(y)
        ax_profile.set_yticklabels([p.profile for p in profiles], fontsize="small")
        ax_profile.invert_yaxis()
        ax_profile.set_xlabel("simulated busy seconds, whole run")
        ax_profile.set_ylabel("device profile")
        ax_profile.set_title("Busy time by device profile")
        ax_profile.legend(loc="best", fontsize="small")
        ax_profile.grid(True, axis="x", alpha=0.3)
    else:
        _no_data(ax_profile, "Busy time by device profile", "no per-node latency recorded")

    critical = latency.critical_path
    if critical is not None and critical.phases:
        phases = list(critical.phases)
        y = np.arange(len(phases))
        client = [p.client_compute_s for p in phases]
        server = [p.server_compute_s for p in phases]
        transfer = [p.transfer_s for p in phases]
        ax_phase.barh(y, client, color="#2ca02c", label="client compute")
        ax_phase.barh(y, server, left=client, color="#98df8a", label="server compute")
        ax_phase.barh(y, transfer, left=[c + s for c, s in zip(client, server)], color="#9467bd", label="transfer")
        ax_phase.set_yticks(y)
        ax_phase.set_yticklabels([p.phase for p in phases], fontsize="small")
        ax_phase.invert_yaxis()
        ax_phase.set_xlabel("simulated seconds on the critical path")
        ax_phase.set_ylabel("iteration phase")
        scope = "" if critical.complete else f" (last {critical.steps_shown} of {critical.steps_total} steps)"
        ax_phase.set_title(f"Critical path by phase{scope}")
        ax_phase.legend(loc="lower right", fontsize="small")
        ax_phase.grid(True, axis="x", alpha=0.3)
    else:
        _no_data(ax_phase, "Critical path by phase", "not recorded")
    return fig


# --------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class GridLayout:
    """How a sample grid PNG is tiled (in the PNG's pixels; ``scale`` > 1 for an enlarged grid)."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int
    scale: int = 1

    def row_center(self, r: int) -> float:
        return self.scale * (GRID_PADDING + r * (self.cell_h + GRID_PADDING) + self.cell_h / 2) - 0.5

    def col_center(self, c: int) -> float:
        return self.scale * (GRID_PADDING + c * (self.cell_w + GRID_PADDING) + self.cell_w / 2) - 0.5


MAX_GRID_SCALE = 8


def grid_layout(height: int, width: int, cols: int, rows: int | None) -> GridLayout | None:
    """The tiling of a sample grid PNG, or ``None`` when its size fits none.

    ``rows`` is the number of classes when known; without it the cells are taken to be square.
    A grid saved enlarged (``save_image_grid(..., scale=k)``) is recognised too.
    """
    for scale in range(1, MAX_GRID_SCALE + 1):
        if height % scale or width % scale:
            continue
        layout = _unscaled_layout(height // scale, width // scale, cols, rows)
        if layout is not None:
            return GridLayout(layout.rows, layout.cols, layout.cell_h, layout.cell_w, scale)
    return None


def _unscaled_layout(height: int, width: int, cols: int, rows: int | None) -> GridLayout | None:
    if cols < 1 or (width - GRID_PADDING) % cols:
        return None
    cell_w = (width - GRID_PADDING) // cols - GRID_PADDING
    if rows is None:
        if cell_w < 1 or (height - GRID_PADDING) % (cell_w + GRID_PADDING):
            return None
        rows = (height - GRID_PADDING) // (cell_w + GRID_PADDING)
    if rows < 1 or (height - GRID_PADDING) % rows:
        return None
    cell_h = (height - GRID_PADDING) // rows - GRID_PADDING
    return GridLayout(rows, cols, cell_h, cell_w) if cell_h > 0 and cell_w > 0 else None


def read_grid(path: Path) -> np.ndarray:
    """A grid PNG as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "I;16") else "RGB"))


def _sample_rounds(record: RunRecord, domain: str) -> list[tuple[str, Path]]:
    """Up to MAX_SAMPLE_ROUNDS evaluated rounds, evenly spread, always with the last; else the final grid."""
    rounds = [r for r, grids in record.round_samples.items() if domain in grids]
    if rounds:
        if len(rounds) > MAX_SAMPLE_ROUNDS:
            picks = np.linspace(0, len(rounds) - 1, MAX_SAMPLE_ROUNDS).round().astype(int)
            rounds = [rounds[i] for i in sorted(set(picks))]
        return [(f"round {r}", record.round_samples[r][domain]) for r in rounds]
    if domain in record.samples:
        return [(f"round {record.rounds_completed}" if record.rounds_completed else "final", record.samples[domain])]
    return []


def sample_figure(record: RunRecord, domain: str) -> Figure | None:
    """The domain's sample grids from ``samples/`` side by side, rows labelled with class names."""
    panels = _sample_rounds(record, domain)
    if not panels:
        return None
    cluster = record.final.domains[domain].cluster if record.final and domain in record.final.domains else None
    title = f"{domain}: generated samples, one row per class" + (f" (cluster {cluster})" if cluster is not None
                                                                 else "")
    return labelled_grid_figure([(name, read_grid(path)) for name, path in panels],
                                record.info.class_names.get(domain, ()), record.info.grid_samples_per_class, title)


def labelled_grid_figure(panels: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str], per_class: int,
                         title: str) -> Figure:
    """Sample grids (``p2pgan.metrics.plots.image_grid`` output: one row per class, ``per_class``
    columns) side by side under their titles, the first one's rows labelled with ``class_names``.

    A grid whose size does not fit that tiling is shown as it is, unlabelled.
    """
    grids = [grid for _, grid in panels]
    layout = grid_layout(grids[-1].shape[0], grids[-1].shape[1], per_class, len(class_names) or None)
    rows = layout.rows if layout else 10
    panel_w = max(1.6, 0.5 * (layout.cols if layout else grids[-1].shape[1] / 30))
    panel_h = max(2.5, 0.42 * rows)
    label_w = 1.3 if layout and class_names else 0.5
    fig = _figure(label_w + panel_w * len(grids) + 0.3, panel_h + 0.9)
    for k, (name, grid) in enumerate(panels):
        ax = fig.add_subplot(1, len(grids), k + 1)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize="medium")
        here = grid_layout(grid.shape[0], grid.shape[1], per_class, len(class_names) or None)
        if here is None:
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_xticks([here.col_center(c) for c in range(here.cols)])
        ax.set_xticklabels([str(c + 1) for c in range(here.cols)], fontsize="x-small")
        ax.set_yticks([here.row_center(r) for r in range(here.rows)])
        if k == 0:
            labels = list(class_names) if len(class_names) == here.rows else [f"class {r}" for r in range(here.rows)]
            ax.set_yticklabels(labels, fontsize="small")
        else:
            ax.set_yticklabels([])
        ax.tick_params(length=0)
    fig.suptitle(title, fontsize="medium")
    fig.supxlabel("sample", fontsize="small")
    return fig


# --------------------------------------------------------------------------------- compare


def comparison_figure(records: Sequence[RunRecord], labels: Sequence[str]) -> Figure:
    """Several runs in one picture: score and FID per round, final accuracy, simulated time and traffic."""
    fig = _figure(13.0, 8.0)
    ax_gen, ax_fid, ax_acc, ax_time = (fig.add_subplot(2, 2, i) for i in (1, 2, 3, 4))
    # One colour per run in every panel; in the per-round panels one line style per domain.
    domains = list(dict.fromkeys(d for r in records for d in r.domains))
    style = {d: LINESTYLES[i % len(LINESTYLES)] for i, d in enumerate(domains)}
    all_rounds: list[int] = []
    for ax, key, title, ylabel in ((ax_gen, "gen_score", "Generation score per round",
                                    "score (1 = no variety, 10 = best)"),
                                   (ax_fid, "fid", "FID per round", "FID (lower is better)")):
        drawn = False
        top = 0.0
        for n, (record, label) in enumerate(zip(records, labels)):
            for domain in record.domains:
                points = [(m.round, getattr(m.domains[domain], key)) for m in record.metrics_rounds
                          if domain in m.domains and getattr(m.domains[domain], key) is not None]
                if points:
                    drawn = True
                    all_rounds.extend(p[0] for p in points)
                    top = max(top, max(v for _, v in points))
                    ax.plot(*zip(*points), color=COLORS[n % len(COLORS)], linestyle=style[domain],
                            marker="o" if len(points) <= 30 else None)
        if drawn and key == "gen_score":
            ax.set_ylim(0.9, max(2.0, 1.08 * top))
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            _integer_ticks(ax, all_rounds)
            ax.grid(True, alpha=0.3)
            # one entry per run (colour) and one per domain (line style), not one per pair
            handles = [Line2D([], [], color=COLORS[n % len(COLORS)], label=label) for n, label in enumerate(labels)]
            handles += [Line2D([], [], color="#555555", linestyle=style[d], label=d) for d in domains]
            ax.legend(handles=handles, loc="best", fontsize="x-small")
        else:
            _no_data(ax, title, "no metrics in these runs")

    width = 0.8 / max(1, len(records))
    drawn = False
    for n, (record, label) in enumerate(zip(records, labels)):
        values = [record.final.domains[d].accuracy if record.final and d in record.final.domains else None
                  for d in domains]
        if any(v is not None for v in values):
            drawn = True
            ax_acc.bar(np.arange(len(domains)) + (n - (len(records) - 1) / 2) * width,
                       [v if v is not None else 0.0 for v in values], width, label=label,
                       color=COLORS[n % len(COLORS)])
    if drawn:
        ax_acc.set_xticks(range(len(domains)))
        ax_acc.set_xticklabels(domains)
        ax_acc.set_ylabel("accuracy of a classifier trained on samples (%)")
        ax_acc.set_title("Classification utility (final round)")
        ax_acc.set_ylim(0, 100)
        ax_acc.legend(loc="best", fontsize="x-small")
        ax_acc.grid(True, axis="y", alpha=0.3)
    else:
        _no_data(ax_acc, "Classification utility", "no final metrics in these runs")

    sim = [r.timing.sim_s_per_iteration for r in records]
    if any(s is not None for s in sim):
        bars = ax_time.bar(range(len(records)), [s or 0.0 for s in sim], color=[COLORS[n % len(COLORS)]
                                                                              for n in range(len(records))])
        for bar, record in zip(bars, records):
            if record.traffic is not None:
                ax_time.annotate(f"{record.traffic.total_bytes / 1e6:,.0f} MB", (bar.get_x() + bar.get_width() / 2,
                                 bar.get_height()), ha="center", va="bottom", fontsize="small")
        ax_time.set_xticks(range(len(records)))
        ax_time.set_xticklabels(labels, fontsize="small", rotation=15 if len(records) > 3 else 0)
        ax_time.set_ylim(0, 1.15 * max(s or 0.0 for s in sim) or 1.0)  # room for the traffic labels
        ax_time.set_ylabel("simulated seconds per iteration")
        ax_time.set_title("Simulated time per iteration (labels: total traffic)")
        ax_time.grid(True, axis="y", alpha=0.3)
    else:
        _no_data(ax_time, "Simulated time per iteration", "no latency in these runs")
    return fig
