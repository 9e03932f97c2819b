"""The run report (report.md, self-contained report.html) and `p2pgan results show|compare|report`.

Two real quick runs are made once for the module: seed 7 with metrics at tiny budgets, seed 8
without metrics (a folder with the optional metrics files absent).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2pgan.cli import main
from p2pgan.metrics.plots import image_grid
from p2pgan.report.content import build_document
from p2pgan.report.document import Table
from p2pgan.report.figures import grid_layout, latency_figure, loss_figure, quality_figure, sample_figure
from p2pgan.report.load import ResultsError, load_run
from p2pgan.report.write import write_report

TINY = ["--set", "training.rounds=3", "--set", "training.max_batches_per_epoch=2"]
TINY_METRICS = ["--set", "metrics.enabled=true", "--set", "metrics.score_samples=100",
                "--set", "metrics.utility_samples=100", "--set", "metrics.utility_epochs=1",
                "--set", "metrics.classifier_epochs=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, judges_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    quick = str(Path(__file__).resolve().parent.parent / "scenarios" / "quick.yaml")
    folders = {"metrics": root / "seed7", "plain": root / "seed8"}
    assert main(["scenario", "run", quick, "--no-live", "--threads", "1", "--out", str(folders["metrics"]), *TINY,
                 *TINY_METRICS, "--set", f"metrics.cache_dir={judges_dir}"]) == 0
    assert main(["scenario", "run", quick, "--no-live", "--threads", "1", "--out", str(folders["plain"]), *TINY,
                 "--set", "training.max_batches_per_epoch=1", "--set", "seed=8"]) == 0
    for folder in folders.values():
        write_report(folder)
    return folders


def _markdown_images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def _decodes_as_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_report_md_has_the_tables_and_every_picture_it_links(runs):
    folder = runs["metrics"]
    text = (folder / "report.md").read_text()
    for heading in ("## What ran", "## Quality per domain", "## Samples", "## Training losses", "## Quality per round",
                    "## Clusters per round", "## Simulated latency", "## Traffic", "## Wall clock vs simulated time"):
        assert heading in text
    assert "| seed | 7 |" in text and "| strategy | huscf" in text and "| topology | paper-edge |" in text
    quality_rows = [line for line in text.splitlines() if line.startswith(("| mnist |", "| fashion-mnist |"))]
    assert len(quality_rows) == 2 and all(len(row.split("|")) == 12 for row in quality_rows)  # 10 columns
    assert "| device profile |" in text and "| phase | client compute s |" in text
    assert "upload (clients → server)" in text
    assert "Generation score near 1" in text  # a 3-round run says its flat samples are expected
    images = _markdown_images(text)
    assert {"report-figures/losses.png", "report-figures/quality.png", "report-figures/clusters.png",
            "report-figures/latency.png", "report-figures/samples-mnist.png",
            "report-figures/samples-fashion-mnist.png"} <= set(images)
    for link in images:
        assert not Path(link).is_absolute()
        width, height = _decodes_as_png((folder / link).read_bytes())
        assert width >= 300 and height >= 250


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.images.append(value)
            elif name in ("src", "href"):
                self.links.append((tag, value))


def test_report_html_is_self_contained_with_the_same_pictures(runs):
    folder = runs["metrics"]
    html = (folder / "report.html").read_text()
    parser = _Sources()
    parser.feed(html)
    assert not {"link", "script", "iframe"} & parser.tags
    assert all(tag == "a" and value.startswith("#") for tag, value in parser.links)  # only in-page anchors
    assert "url(" not in html and "@import" not in html
    markdown_images = _markdown_images((folder / "report.md").read_text())
    assert len(parser.images) == len(markdown_images)
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        _decodes_as_png(base64.b64decode(src.split(",", 1)[1]))
    assert "<th>seed</th><td>7</td>" in html and "<table" in html


def test_sample_grids_get_one_labelled_row_per_class(runs):
    record = load_run(runs["metrics"])
    fig = sample_figure(record, "fashion-mnist")
    first = fig.axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert [ax.get_title() for ax in fig.axes] == ["round 1", "round 2", "round 3"]
    # the tiling read back from a grid the writer's own function makes (10 classes x 4, 28x28)
    grid = image_grid(np.zeros((40, 1, 28, 28), dtype=np.uint8), nrow=4)
    layout = grid_layout(grid.shape[0], grid.shape[1], 4, 10)
    assert (layout.rows, layout.cols, layout.cell_h, layout.cell_w) == (10, 4, 28, 28)
    assert grid_layout(grid.shape[0], grid.shape[1], 4, None) == layout  # square cells when classes are unknown
    assert grid_layout(grid.shape[0], grid.shape[1] + 1, 4, 10) is None
    enlarged = grid_layout(3 * grid.shape[0], 3 * grid.shape[1], 4, 10)  # save_image_grid(..., scale=3)
    assert (enlarged.rows, enlarged.cell_w, enlarged.scale) == (10, 28, 3)
    assert enlarged.row_center(0) == 3 * layout.row_center(0) + 1.0


def test_plots_have_titles_labelled_axes_and_whole_round_ticks(runs):
    record = load_run(runs["metrics"])
    for fig in (loss_figure(record), quality_figure(record), latency_figure(record)):
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    quality = quality_figure(record)
    for ax in quality.axes:
        assert list(ax.get_xticks()) == [1, 2, 3]
    for ax in loss_figure(record).axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 6]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_latency_traffic_and_time_are_read_from_the_files(runs):
    folder = runs["metrics"]
    record = load_run(folder)
    latency = json.loads((folder / "latency.json").read_text())
    sent = sum(v["bytes_sent"] for k, v in latency["nodes"].items() if k != "server")
    assert record.traffic.upload_bytes == sent
    assert record.traffic.total_bytes == sent + sum(v["bytes_received"] for k, v in latency["nodes"].items()
                                                    if k != "server")
    path = record.latency.critical_path
    assert path.complete and sum(p.total_s for p in path.phases) == pytest.approx(latency["total_s"], rel=1e-6)
    assert {p.phase for p in path.phases} >= {"g_fwd", "d_bwd", "federate"}
    profiles = {p.profile: p for p in record.latency.profiles}
    assert profiles["device1"].compute_s == pytest.approx(latency["nodes"]["c000"]["busy_s"])
    assert profiles["device1"].up_s == pytest.approx(latency["links_busy_s"]["c000:up"])
    assert record.timing.wall_s is not None and record.timing.sim_total_s == pytest.approx(latency["total_s"])


def test_a_run_without_metrics_still_gets_a_full_report(runs):
    folder = runs["plain"]
    record = load_run(folder)
    assert record.final is None and "final_metrics.json" in record.missing
    assert record.rounds[-1].ari == pytest.approx(1.0)  # computed from the clusters, metrics or not
    text = (folder / "report.md").read_text()
    assert "Metrics were not computed" in text and "## Simulated latency" in text
    assert "quality.png" not in text and "samples-mnist.png" in text  # the final grid is always written


def test_results_show_prints_the_tables(runs, capsys):
    assert main(["results", "show", str(runs["metrics"])]) == 0
    out = capsys.readouterr().out
    for expected in ("What ran", "Quality per domain", "fashion-mnist", "Simulated latency", "device1", "g_fwd",
                     "upload (clients → server)", "report.html"):
        assert expected in out
    document = build_document(load_run(runs["metrics"]))
    assert all(not isinstance(b, Table) or b.rows for s in document.sections for b in s.blocks)


def test_results_compare_puts_two_seeds_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["results", "compare", str(runs["metrics"]), str(runs["plain"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed7" in printed and "seed8" in printed
    seed_row = next(line for line in printed.splitlines() if line.strip().startswith("seed "))
    assert seed_row.split()[1:] == ["7", "8"]
    assert "mnist FID" in printed and "traffic total" in printed
    assert "scenario keys that differ" in printed and "metrics.enabled" in printed
    _decodes_as_png((out / "comparison.png").read_bytes())
    # a folder of results folders stands for all of them
    assert main(["results", "compare", str(runs["metrics"].parent)]) == 0
    assert "2 runs side by side" in capsys.readouterr().out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("p2pgan: error: ")
    return err


def test_errors_are_one_line_naming_the_file(runs, tmp_path, capsys):
    assert str(tmp_path / "nope") in _error(["results", "show", str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "config.json: missing" in _error(["results", "show", str(tmp_path / "empty")], capsys)
    broken = tmp_path / "broken"
    shutil.copytree(runs["plain"], broken)
    (broken / "summary.json").write_text('{"status": "completed",\n  oops}\n')
    assert "summary.json:2: not valid JSON" in _error(["results", "show", str(broken)], capsys)
    shutil.copy(runs["plain"] / "summary.json", broken / "summary.json")
    lines = (broken / "rounds.jsonl").read_text().splitlines()
    (broken / "rounds.jsonl").write_text("\n".join([lines[0], "{cut", *lines[1:]]) + "\n")
    assert "rounds.jsonl:2: not valid JSON" in _error(["results", "show", str(broken)], capsys)
    assert "at least two" in _error(["results", "compare", str(runs["plain"])], capsys)
    with pytest.raises(ResultsError):
        write_report(tmp_path / "empty")


def test_a_cut_off_last_line_and_a_missing_summary_are_tolerated(runs, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(runs["plain"], stopped)
    (stopped / "summary.json").unlink()
    steps = (stopped / "steps.jsonl").read_text()
    (stopped / "steps.jsonl").write_text(steps + '{"node": "c000", "round": 4, "st')  # killed mid-write
    record = load_run(stopped)
    assert record.status == "unknown" and any("cut off" in n for n in record.notes)
    markdown, html = write_report(stopped)
    assert "no summary.json" in markdown.read_text() and html.is_file()
