"""``write_report(run_dir)``: report.md and report.html (plus their pictures) in a results folder."""

from __future__ import annotations

from pathlib import Path

from p2pgan.report.content import FIGURES_DIR, build_document
from p2pgan.report.figures import render_figures
from p2pgan.report.html import render_html
from p2pgan.report.load import load_run
from p2pgan.report.markdown import render_markdown


def write_report(run_dir: Path | str) -> tuple[Path, Path]:
    """Write ``report.md`` (pictures in ``report-figures/``, linked) and ``report.html`` (pictures
    embedded) into ``run_dir``; return their paths. Raises
    :class:`~p2pgan.report.load.ResultsError` when ``run_dir`` is not a readable results folder."""
    folder = Path(run_dir)
    record = load_run(folder)
    figures = render_figures(record, folder / FIGURES_DIR)
    document = build_document(record, figures)
    markdown = _write_text(folder / "report.md", render_markdown(document, folder))
    html = _write_text(folder / "report.html", render_html(document))
    return markdown, html


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
