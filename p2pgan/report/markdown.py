"""A report document as Markdown, pictures linked relative to the file."""

from __future__ import annotations

from pathlib import Path

from p2pgan.report.content import relative
from p2pgan.report.document import Document, Note, Paragraph, Picture, Table


def render_markdown(document: Document, base: Path) -> str:
    """Markdown for ``document``; picture links are relative to folder ``base`` (where the file goes)."""
    lines = [f"# {document.title}", "", document.lead, ""]
    contents = " · ".join(f"[{s.title}](#{_anchor(s.title)})" for s in document.sections)
    lines += [contents, ""]
    for section in document.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _table(block)
            elif isinstance(block, Picture):
                lines.append(f"![{_escape(block.alt)}]({relative(block.path, base)})")
                if block.caption:
                    lines.append(f"*{_escape(block.caption)}*")
            elif isinstance(block, Note):
                lines.append(f"> **Note.** {block.text}")
            elif isinstance(block, Paragraph):
                lines.append(block.text)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _table(table: Table) -> list[str]:
    def row(cells) -> str:
        return "| " + " | ".join(_cell(c) for c in cells) + " |"

    align = ["---:" if table.is_numeric(i) else "---" for i in range(len(table.columns))]
    out = [row(table.columns), "| " + " | ".join(align) + " |"]
    out += [row(r) for r in table.rows]
    if table.caption:
        out += ["", f"*{_escape(table.caption)}*"]
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    return str(text).replace("*", "\\*").replace("[", "\\[").replace("]", "\\]")


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
