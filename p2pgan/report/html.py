"""A report document as one self-contained HTML file: pictures embedded as base64 PNGs.

No external stylesheet, script, font or image: the file opens the same offline, attached to a
mail or years later.
"""

from __future__ import annotations

import base64
from html import escape

from p2pgan.report.document import Document, Note, Paragraph, Picture, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
p.lead { color: #444; margin-top: 0; }
nav a { margin-right: 1em; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { white-space: nowrap; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.85em; padding-top: 0.3em; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; margin: 0.6em 0; }
"""


def render_html(document: Document) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(document.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(document.title)}</h1>", f'<p class="lead">{escape(document.lead)}</p>', "<nav>"]
    parts += [f'<a href="#s{i}">{escape(s.title)}</a>' for i, s in enumerate(document.sections)]
    parts.append("</nav>")
    for i, section in enumerate(document.sections):
        parts.append(f'<section id="s{i}"><h2>{escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Picture):
                parts.append(_picture(block))
            elif isinstance(block, Note):
                parts.append(f'<div class="note"><strong>Note.</strong> {escape(block.text)}</div>')
            elif isinstance(block, Paragraph):
                parts.append(f"<p>{escape(block.text)}</p>")
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _table(table: Table) -> str:
    out = [f'<table class="{"kv" if table.key_value else "data"}">']
    if table.caption:
        out.append(f"<caption>{escape(table.caption)}</caption>")
    if not table.key_value:
        out.append("<thead><tr>" + "".join(
            f'<th{" class=num" if table.is_numeric(i) else ""}>{escape(c)}</th>' for i, c in enumerate(table.columns))
            + "</tr></thead>")
    out.append("<tbody>")
    for row in table.rows:
        if table.key_value:
            out.append(f"<tr><th>{escape(row[0])}</th>" + "".join(f"<td>{escape(c)}</td>" for c in row[1:]) + "</tr>")
        else:
            out.append("<tr>" + "".join(f'<td{" class=num" if table.is_numeric(i) else ""}>{escape(c)}</td>'
                                        for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _picture(picture: Picture) -> str:
    data = base64.b64encode(picture.path.read_bytes()).decode("ascii")
    caption = f"<figcaption>{escape(picture.caption)}</figcaption>" if picture.caption else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(picture.alt)}">{caption}</figure>')
