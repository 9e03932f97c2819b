"""What a run report says: a :class:`~p2pgan.report.document.Document` built from a run record.

Numbers are formatted here once (units in column headers), so the Markdown, HTML and terminal
views agree. Pictures come from :class:`~p2pgan.report.figures.FigureSet`; without one (the
terminal view) the document holds the tables and notes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from p2pgan.report.document import Block, Document, Note, Paragraph, Picture, Section, Table
from p2pgan.report.figures import FigureSet
from p2pgan.report.load import SERVER_ID, RunRecord

LOW_GENERATION_SCORE = 2.0  # below this a domain's samples carry little class information
SMALL_SCORE_BUDGET = 1000  # fewer samples than this make FID biased upwards
FIGURES_DIR = "report-figures"
REPORT_FILES = ("report.md", "report.html", FIGURES_DIR)  # what write_report adds to a folder


# ----------------------------------------------------------------------------- formatting


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 600:
        return f"{value:,.0f} s ({value / 60:,.1f} min)"
    return f"{value:,.3g} s" if value < 10 else f"{value:,.1f} s"


def megabytes(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e9:
        return f"{value / 1e9:,.2f} GB"
    return f"{value / 1e6:,.1f} MB"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b <= 0 else f"{a / b:,.2f}×"


def _cut(cut: Sequence[int]) -> str:
    return "(" + ",".join(str(c) for c in cut) + ")" if cut else "–"


def _counted(values: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(v if n == 1 else f"{v} ×{n}" for v, n in counts.items())


# ----------------------------------------------------------------------------- the document


def build_document(record: RunRecord, figures: FigureSet | None = None) -> Document:
    info = record.info
    lead = (f"{info.name}: strategy {info.strategy}, {info.num_clients} clients over "
            f"{', '.join(info.domains)}, seed {info.seed}; {record.status}, "
            f"{record.rounds_completed} of {info.rounds_planned} rounds")
    sections = [
        what_ran(record),
        quality(record),
        samples(record, figures),
        losses(record, figures),
        quality_per_round(record, figures),
        clusters(record, figures),
        latency(record, figures),
        traffic(record),
        time_section(record),
        files(record),
    ]
    return Document(f"p2pgan run report: {info.name}", lead, tuple(s for s in sections if s is not None))


def what_ran(record: RunRecord) -> Section:
    info = record.info
    env = info.environment
    rows: list[tuple[str, str]] = [
        ("scenario", info.name + (f" ({info.source_file})" if info.source_file else "")),
        ("status", record.status + (f": {record.detail}" if record.detail else "")),
        ("strategy", info.strategy + (" (" + ", ".join(f"{k} {v}" for k, v in info.strategy_options.items()
                                                       if v is not None) + ")" if info.strategy_options else "")),
        ("engine", info.engine or "not recorded in this folder"),
        ("transport", info.transport + (", one process per node" if info.processes else ", all nodes in one process")),
        ("seed", str(info.seed)),
        ("domains", ", ".join(f"{d} ({n} clients)" for d, n in info.domains.items())),
        ("data source", "; ".join(f"{d}: {env.data_sources[d]}" for d in info.domains if d in env.data_sources)
         or "not recorded in this folder"),
        ("partition", info.partition),
        ("model", f"width {num(info.model_width, 2)}, z_dim {info.z_dim if info.z_dim is not None else '–'}"),
        ("schedule", f"{info.rounds_planned} rounds × {info.local_epochs} local epoch(s) × "
                     f"{info.steps_per_epoch if info.steps_per_epoch is not None else '?'} steps, batch "
                     f"{info.batch_size}" + (f", lr {info.learning_rate:g}" if info.learning_rate else "")),
        ("cuts", f"{info.cut_policy}: " + _counted(_cut(c) for c in info.cuts.values()) if info.cuts
         else info.cut_policy),
        ("topology", (record.latency.topology if record.latency and record.latency.topology else info.topology)
         or "none (no latency simulated)"),
        ("metrics", ", ".join(f"{k} {v}" for k, v in info.metrics_budget.items()) if info.metrics_budget else "off"),
        ("versions", ", ".join(f"{k} {v}" for k, v in env.versions.items()) or "not recorded in this folder"),
        ("torch threads", str(env.threads) if env.threads is not None else "not recorded in this folder"),
    ]
    if env.host:
        rows.append(("host", env.host))
    rows.append(("results folder", str(record.directory)))
    blocks: list[Block] = [Table(("item", "value"), tuple(rows), key_value=True)]
    if record.status == "unknown":
        blocks.append(Note("There is no summary.json: the run is still going, or it was killed before it could "
                           "write one. Everything below is what it had written so far."))
    return Section("What ran", tuple(blocks))


def _last_scores(record: RunRecord) -> dict[str, float]:
    if record.final is not None:
        return {d: m.gen_score for d, m in record.final.domains.items() if m.gen_score is not None}
    if record.metrics_rounds:
        return {d: s.gen_score for d, s in record.metrics_rounds[-1].domains.items() if s.gen_score is not None}
    return {}


def quality(record: RunRecord) -> Section:
    final = record.final
    blocks: list[Block] = []
    if final is not None and final.domains:
        rows = tuple(
            (d, str(m.cluster) if m.cluster is not None else "–", num(m.gen_score), num(m.fid, 1), num(m.accuracy),
             num(m.f1), num(m.precision), num(m.recall), num(m.fpr), num(m.real_accuracy))
            for d, m in final.domains.items())
        blocks.append(Table(
            ("domain", "cluster", "generation score ↑", "FID ↓", "accuracy %", "macro F1 %", "precision %",
             "recall %", "FPR % ↓", "judge on real %"), rows,
            short_columns=("domain", "cl.", "gen ↑", "FID ↓", "acc %", "F1 %", "prec %", "rec %", "FPR % ↓", "real %"),
            narrow_drop=(6, 7, 8),
            caption=f"after round {final.round}" + (f"; clustering ARI {final.ari:.2f}" if final.ari is not None
                                                    else "") +
                    ". Accuracy, F1, precision, recall, FPR: a fresh classifier trained only on generated samples, "
                    "tested on the real test split. Judge on real: the scoring classifier's own accuracy.",
            numeric=(False,) + (True,) * 9))
    elif record.metrics_rounds:
        last = record.metrics_rounds[-1]
        rows = tuple((d, str(s.cluster) if s.cluster is not None else "–", num(s.gen_score), num(s.fid, 1))
                     for d, s in last.domains.items())
        blocks.append(Table(("domain", "cluster", "generation score ↑", "FID ↓"), rows,
                            caption=f"round {last.round} (the run has no final metrics)",
                            numeric=(False, True, True, True)))
    elif record.info.metrics_budget is None:
        blocks.append(Paragraph("Metrics were not computed for this run (metrics.enabled was false). Turn them on "
                                "with --set metrics.enabled=true."))
    else:
        blocks.append(Paragraph("Metrics were on, but no round was evaluated (the run stopped before its first "
                                "evaluated round)."))
    if record.metrics_note:
        blocks.append(Note(f"Metrics: {record.metrics_note}"))
    scores = _last_scores(record)
    low = {d: s for d, s in scores.items() if s < LOW_GENERATION_SCORE}
    if low:
        steps = record.info.steps_per_round
        iterations = record.rounds_completed * steps if steps else None
        blocks.append(Note(
            "Generation score near 1 (" + ", ".join(f"{d} {s:.2f}" for d, s in low.items()) + ") means the judge "
            "sees no class variety in the samples yet: flat grey or noisy images, chance-level accuracy. That is "
            f"expected after {iterations if iterations is not None else 'so few'} iterations "
            f"({record.rounds_completed} rounds); the GAN needs many more rounds to draw recognisable classes."))
    budget = record.info.metrics_budget or {}
    if isinstance(budget.get("score_samples"), int) and budget["score_samples"] < SMALL_SCORE_BUDGET:
        blocks.append(Note(f"Scores use {budget['score_samples']} samples per domain: FID is biased upwards at "
                           "this size; compare FIDs only between runs with the same metrics budget."))
    return Section("Quality per domain", tuple(blocks))


def samples(record: RunRecord, figures: FigureSet | None) -> Section | None:
    if figures is None or not figures.samples:
        return None
    blocks: list[Block] = [
        Picture(path, f"{domain} samples", f"{domain}: one row per class (class names on the left), "
                f"{record.info.grid_samples_per_class} samples per class; fixed noise, so rounds are comparable")
        for domain, path in figures.samples.items()]
    return Section("Samples", tuple(blocks))


def losses(record: RunRecord, figures: FigureSet | None) -> Section | None:
    if not record.rounds:
        return None
    blocks: list[Block] = []
    if figures is not None and figures.losses is not None:
        blocks.append(Picture(figures.losses, "loss curves",
                              "mean over each domain's clients; D loss is the mean of its real and fake halves"))
    domains = record.domains
    columns = ("round",) + tuple(f"{d} {k}" for d in domains for k in ("D loss", "G loss"))
    rows = tuple((str(r.round),) + tuple(num(r.losses.get(d, {}).get(k), 3) for d in domains
                                         for k in ("d_loss", "g_loss")) for r in record.rounds)
    blocks.append(Table(columns, rows, caption="mean over the round's iterations and the domain's clients",
                        numeric=(True,) * len(columns)))
    return Section("Training losses", tuple(blocks))


def quality_per_round(record: RunRecord, figures: FigureSet | None) -> Section | None:
    if not record.metrics_rounds:
        return None
    blocks: list[Block] = []
    if figures is not None and figures.quality is not None:
        blocks.append(Picture(figures.quality, "generation score, FID and ARI per round"))
    domains = record.domains
    columns = ("round",) + tuple(f"{d} {k}" for d in domains for k in ("score", "FID")) + ("ARI",)
    rows = tuple(
        (str(m.round),) + tuple(v for d in domains for v in (num(m.domains[d].gen_score) if d in m.domains else "–",
                                                              num(m.domains[d].fid, 1) if d in m.domains else "–"))
        + (num(m.ari),) for m in record.metrics_rounds)
    blocks.append(Table(columns, rows, numeric=(True,) * len(columns)))
    return Section("Quality per round", tuple(blocks))


def clusters(record: RunRecord, figures: FigureSet | None) -> Section | None:
    if not record.rounds:
        return None
    blocks: list[Block] = []
    if figures is not None and figures.clusters is not None:
        blocks.append(Picture(figures.clusters, "cluster of each client per round"))
    rows = []
    for r in record.rounds:
        members = "; ".join(f"{k}: {' '.join(v)}" for k, v in r.members().items())
        speaks = ", ".join(f"{d}→{k}" for d, k in r.domain_clusters.items())
        rows.append((str(r.round), r.phase or "–", str(r.num_clusters), num(r.ari), speaks, members))
    blocks.append(Table(("round", "phase", "clusters", "ARI", "domain → cluster", "members"), tuple(rows),
                        caption="domain → cluster: the cluster holding most of the domain's clients (its generator "
                                "is the one scored)", numeric=(True, False, True, True, False, False)))
    return Section("Clusters per round", tuple(blocks))


def latency(record: RunRecord, figures: FigureSet | None) -> Section:
    lat = record.latency
    if lat is None:
        return Section("Simulated latency", (Paragraph(
            "No latency was simulated (no topology, or the run stopped before its first iteration)."),))
    blocks: list[Block] = []
    if figures is not None and figures.latency is not None:
        blocks.append(Picture(figures.latency, "latency breakdown",
                              f"simulated on topology {lat.topology or '?'}; busy seconds overlap in time, the "
                              "critical path adds up to the simulated total"))
    timing = record.timing
    per_round = (sum(r.seconds for r in lat.rounds) / len(lat.rounds)) if lat.rounds else None
    blocks.append(Table(("quantity", "value"), (
        ("simulated total", seconds(lat.total_s)),
        ("per iteration", seconds(lat.mean_iteration_s)),
        ("per round (with the round-end exchange)", seconds(per_round)),
        ("iterations priced", str(lat.iterations)),
    ), key_value=True))
    if lat.rounds:
        rows = tuple((str(r.round), num(r.seconds - r.federate_s, 3), num(r.federate_s, 3), num(r.seconds, 3),
                      num(timing.wall_round_s.get(r.round), 3)) for r in lat.rounds)
        blocks.append(Table(("round", "iterations s", "round exchange s", "simulated s", "wall s"), rows,
                            caption="round exchange: parameters up, aggregation, aggregate down. Wall: this "
                                    "machine, including the round's metrics evaluation",
                            numeric=(True,) * 5))
    if lat.profiles:
        rows = tuple((p.profile, _node_list(p.nodes), num(p.compute_s, 3), num(p.up_s, 3), num(p.down_s, 3),
                      megabytes(p.bytes_sent), megabytes(p.bytes_received)) for p in lat.profiles)
        blocks.append(Table(("device profile", "nodes", "compute s", "upload s", "download s", "sent", "received"),
                            rows, caption="simulated busy seconds over the whole run: compute on the device, and "
                                          "time its link was busy in each direction",
                            numeric=(False, False, True, True, True, True, True)))
    critical = lat.critical_path
    if critical is not None and critical.phases:
        total = sum(p.total_s for p in critical.phases) or 1.0
        rows = tuple((p.phase, num(p.client_compute_s, 3), num(p.server_compute_s, 3), num(p.transfer_s, 3),
                      num(p.total_s, 3), f"{100 * p.total_s / total:.1f}") for p in critical.phases)
        rows += (("all", num(sum(p.client_compute_s for p in critical.phases), 3),
                  num(sum(p.server_compute_s for p in critical.phases), 3),
                  num(sum(p.transfer_s for p in critical.phases), 3), num(total, 3), "100.0"),)
        scope = ("the whole run" if critical.complete else
                 f"its last {critical.steps_shown} of {critical.steps_total} steps ({seconds(critical.covered_s)})")
        blocks.append(Table(("phase", "client compute s", "server compute s", "transfer s", "total s", "share %"),
                            rows, caption=f"the critical path over {scope}, split by iteration phase: how far each "
                                          "kind of step moved the end of the run",
                            numeric=(False,) + (True,) * 5))
    return Section("Simulated latency", tuple(blocks))


def _node_list(nodes: Sequence[str], shown: int = 4) -> str:
    return " ".join(nodes) if len(nodes) <= shown else f"{' '.join(nodes[:shown])} … ({len(nodes)})"


def traffic(record: RunRecord) -> Section | None:
    t = record.traffic
    if t is None:
        return None
    clients = len(t.per_client_sent) or 1
    rows = (
        ("total", megabytes(t.total_bytes)),
        ("upload (clients → server)", megabytes(t.upload_bytes)),
        ("download (server → clients)", megabytes(t.download_bytes)),
        ("per round", megabytes(t.per_round_bytes)),
        ("per iteration", megabytes(t.total_bytes / t.iterations) if t.iterations else "–"),
        ("per client (mean, up + down)", megabytes(t.total_bytes / clients)),
    )
    blocks: list[Block] = [Table(("traffic", "bytes"), rows, key_value=True,
                                 caption="payload bytes of every message the latency model priced "
                                         "(activations, gradients, parameters); protocol overhead not included")]
    per_client = tuple((c, record.info.client_domain.get(c, "?"), _cut(record.info.cuts.get(c, ())),
                        megabytes(t.per_client_sent[c]), megabytes(t.per_client_received.get(c, 0)))
                       for c in t.per_client_sent if c != SERVER_ID)
    blocks.append(Table(("client", "domain", "cut", "sent", "received"), per_client,
                        numeric=(False, False, False, True, True)))
    return Section("Traffic", tuple(blocks))


def time_section(record: RunRecord) -> Section:
    t = record.timing
    rows = [
        ("wall clock, training", seconds(t.wall_s)),
        ("wall clock, preparation (≈)", seconds(t.prepare_s) if t.prepare_s is not None else "–"),
        ("simulated", seconds(t.sim_total_s)),
        ("simulated / wall", ratio(t.sim_total_s, t.wall_s)),
        ("wall per iteration", seconds(t.wall_s_per_iteration)),
        ("simulated per iteration", seconds(t.sim_s_per_iteration)),
    ]
    return Section("Wall clock vs simulated time", (
        Table(("time", "value"), tuple(rows), key_value=True,
              caption="wall: this machine running every node itself; simulated: the same operations priced on "
                      "the topology's devices and links. Preparation: data loading, judge classifiers, cut search "
                      "(estimated from the round timestamps)"),))


def files(record: RunRecord) -> Section:
    blocks: list[Block] = []
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in record.directory.iterdir()
                     if not p.name.startswith(".") and p.name not in REPORT_FILES)
    blocks.append(Paragraph("In this folder: " + ", ".join(present) + "."))
    if record.missing:
        blocks.append(Paragraph("Not written by this run: " + ", ".join(record.missing) + "."))
    for note in record.notes:
        blocks.append(Note(note))
    problems = [line for line in record.log if line.startswith(("[warning]", "[error]"))]
    if problems:
        blocks.append(Note("The run logged: " + " | ".join(problems[:8]) + (" …" if len(problems) > 8 else "")))
    return Section("Files", tuple(blocks))


def relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes (for links in report.md)."""
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()
