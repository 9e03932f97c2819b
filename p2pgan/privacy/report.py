"""The audit's terminal table: one row per cut, mean over domains of each domain's worst tensor."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from p2pgan.privacy.audit import AuditResult


def print_audit(console: Console, result: AuditResult) -> None:
    floor_ssim = sum(b.mean_image_ssim for b in result.baselines.values()) / len(result.baselines)
    floor_psnr = sum(b.mean_image_psnr for b in result.baselines.values()) / len(result.baselines)
    table = Table(
        title=f"what the server can infer per cut: {result.scenario}, {result.weights} weights, width "
              f"{result.spec.width:g}, {', '.join(result.domains)}",
        caption=f"SSIM/PSNR: inversion of the real pass; constant guess (mean image) SSIM {floor_ssim:.3f}, "
                f"PSNR {floor_psnr:.2f} dB. label acc: linear probe, best tensor. dCor: bias-corrected "
                f"distance correlation with images / labels. cut = (g_head, g_tail, d_head, d_tail)")
    for column in ("cut", "SSIM", "PSNR dB", "label acc", "chance", "dCor image", "dCor label", "inversion from"):
        table.add_column(column, justify="left" if column in ("cut", "inversion from") else "right",
                         no_wrap=column == "cut")
    for s in result.summary():
        table.add_row(str(s.cut), f"{s.ssim:.3f}", f"{s.psnr:.2f}", f"{s.label_accuracy:.3f}", f"{s.chance:.3f}",
                      f"{s.dcor_image:.3f}", f"{s.dcor_label:.3f}", s.inversion_from)
    console.print(table)
    console.print(f"audited {len(result.cuts)} cuts on {len(result.domains)} domain(s) in {result.wall_s:.1f} s")
