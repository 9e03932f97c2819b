"""The audit's files: ``privacy.json``, ``privacy.csv``, ``privacy.md`` and one PNG per cut."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import torch

from p2pgan.metrics import save_image_grid
from p2pgan.model.segments import ClientCut
from p2pgan.privacy.audit import AuditResult, CutSummary, TensorLeakage
from p2pgan.privacy.observer import TensorKey

CSV_COLUMNS = ("cut", "domain", "phase", "tensor", "block", "shape", "ssim", "psnr", "label_accuracy",
               "shuffled_label_accuracy", "chance", "dcor_image", "dcor_label")


def png_name(cut: ClientCut) -> str:
    return "cut_" + "".join(str(v) for v in cut.as_tuple()) + ".png"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _tensor_row(t: TensorLeakage) -> dict:
    return {"domain": t.domain, "phase": t.key.phase, "tensor": t.key.tensor, "block": t.key.block,
            "shape": "x".join(str(s) for s in t.shape), "ssim": _round(t.ssim), "psnr": _round(t.psnr, 2),
            "label_accuracy": _round(t.label_accuracy), "shuffled_label_accuracy": _round(t.shuffled_label_accuracy),
            "chance": _round(t.chance), "dcor_image": _round(t.dcor_image), "dcor_label": _round(t.dcor_label)}


def _summary_row(s: CutSummary) -> dict:
    return {"cut": str(s.cut), "ssim": _round(s.ssim), "psnr": _round(s.psnr, 2),
            "label_accuracy": _round(s.label_accuracy), "chance": _round(s.chance),
            "dcor_image": _round(s.dcor_image), "dcor_label": _round(s.dcor_label),
            "inversion_from": s.inversion_from, "label_from": s.label_from}


def as_json(result: AuditResult) -> dict:
    return {
        "scenario": result.scenario,
        "weights": result.weights,
        "model": {"width": result.spec.width, "z_dim": result.spec.z_dim},
        "seed": result.seed,
        "batch_size": result.batch_size,
        "options": asdict(result.options),
        "domains": list(result.domains),
        "baselines": {d: asdict(b) for d, b in result.baselines.items()},
        "summary": [_summary_row(s) for s in result.summary()],
        "cuts": [{"cut": str(c.cut), "domain": c.domain, "ssim": _round(c.ssim), "psnr": _round(c.psnr, 2),
                  "label_accuracy": _round(c.label_accuracy), "chance": _round(c.chance),
                  "dcor_image": _round(c.dcor_image), "dcor_label": _round(c.dcor_label),
                  "sends": [t.key.name for t in c.tensors]} for c in result.per_cut()],
        "tensors": [_tensor_row(t) for t in result.tensors],
        "wall_s": round(result.wall_s, 2),
    }


def write_csv(result: AuditResult, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for leakage in result.per_cut():
            for t in leakage.tensors:
                writer.writerow({"cut": str(leakage.cut), **{k: ("" if v is None else v)
                                                              for k, v in _tensor_row(t).items()}})


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def summary_markdown(result: AuditResult) -> str:
    """The per-cut table (mean over domains of each domain's worst tensor)."""
    lines = ["| cut | SSIM | PSNR dB | label acc | chance | dCor image | dCor label | best inversion from "
             "| best label probe on |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for s in result.summary():
        lines.append(f"| {s.cut} | {s.ssim:.3f} | {s.psnr:.2f} | {s.label_accuracy:.3f} | {s.chance:.3f} | "
                     f"{s.dcor_image:.3f} | {s.dcor_label:.3f} | `{s.inversion_from}` | `{s.label_from}` |")
    return "\n".join(lines)


def tensor_markdown(result: AuditResult) -> str:
    """Every distinct tensor kind, averaged over domains."""
    keys: dict[TensorKey, list[TensorLeakage]] = {}
    for t in result.tensors:
        keys.setdefault(t.key, []).append(t)

    def mean(rows: list[TensorLeakage], attr: str) -> float | None:
        values = [getattr(r, attr) for r in rows]
        return None if values[0] is None else sum(values) / len(values)

    lines = ["| phase | tensor | at block | shape | SSIM | PSNR dB | label acc | shuffled | dCor image | dCor label |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, rows in sorted(keys.items()):
        shape = "×".join(str(s) for s in rows[0].shape)
        lines.append(f"| {key.phase} | {key.tensor} | {key.block} | {shape} | {_fmt(mean(rows, 'ssim'))} | "
                     f"{_fmt(mean(rows, 'psnr'), '.2f')} | {_fmt(mean(rows, 'label_accuracy'))} | "
                     f"{_fmt(mean(rows, 'shuffled_label_accuracy'))} | {_fmt(mean(rows, 'dcor_image'))} | "
                     f"{_fmt(mean(rows, 'dcor_label'))} |")
    return "\n".join(lines)


def baseline_markdown(result: AuditResult) -> str:
    lines = ["| domain | private | auxiliary | mean-image SSIM | mean-image PSNR dB | chance |",
             "|---|---:|---:|---:|---:|---:|"]
    for b in result.baselines.values():
        lines.append(f"| {b.domain} | {b.private} | {b.auxiliary} | {b.mean_image_ssim:.3f} | "
                     f"{b.mean_image_psnr:.2f} | {b.chance:.3f} |")
    return "\n".join(lines)


def as_markdown(result: AuditResult) -> str:
    o = result.options
    return "\n\n".join([
        f"# Leakage audit: {result.scenario}",
        f"Weights: {result.weights}; model width {result.spec.width:g}, z_dim {result.spec.z_dim}; seed "
        f"{result.seed}; batch {result.batch_size}; {o.samples} private and {o.aux_samples} auxiliary images per "
        f"domain; decoder {o.decoder_epochs} epochs, probe {o.probe_epochs} epochs; dCor on at most "
        f"{o.dcor_samples} samples; {result.wall_s:.0f} s wall.",
        "## Per cut (mean over domains of each domain's worst tensor)",
        summary_markdown(result),
        "SSIM/PSNR: inversion decoder on the real-image tensors (D-head activation and D-tail gradient "
        "of the real pass), scored on the private images; label acc: linear probe, best over every tensor "
        "the cut sends; dCor: bias-corrected distance correlation with the private images / one-hot labels.",
        "## Constant guess (the floor) per domain",
        baseline_markdown(result),
        "## Per tensor (mean over domains)",
        tensor_markdown(result),
        "Each `cut_XXXX.png` shows, per domain, three rows: the private originals, the reconstruction from "
        "the real pass's D-head activation, and the reconstruction from its D-tail gradient.",
    ]) + "\n"


def write_pngs(result: AuditResult, out_dir: Path) -> list[Path]:
    paths = []
    for cut in result.cuts:
        rows = []
        for domain in result.domains:
            leakage = result.leakage(cut, domain)
            rows.append(result.originals[domain])
            for t in leakage.tensors:
                if t.key.from_real_images:
                    rows.append(result.reconstructions[(domain, t.key)])
        images = torch.cat(rows)
        paths.append(save_image_grid(images, out_dir / png_name(cut), nrow=len(rows[0]), scale=2))
    return paths


def write_audit(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """Write every file under ``out_dir``; returns them by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "privacy.json", "csv": out_dir / "privacy.csv", "md": out_dir / "privacy.md"}
    files["json"].write_text(json.dumps(as_json(result), indent=2) + "\n", encoding="utf-8")
    write_csv(result, files["csv"])
    files["md"].write_text(as_markdown(result), encoding="utf-8")
    for i, path in enumerate(write_pngs(result, out_dir)):
        files[f"png{i}"] = path
    return files
