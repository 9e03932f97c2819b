"""A report as plain data: sections of paragraphs, notes, tables and pictures.

``content`` builds one from a run; ``markdown``, ``html`` and ``terminal`` render it, so the three
views always say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Note:
    """Something the reader should know to read the numbers right (shown highlighted)."""

    text: str


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    numeric: tuple[bool, ...] = ()  # per column: right-aligned
    key_value: bool = False  # two columns, the first is a label
    short_columns: tuple[str, ...] = ()  # headers for narrow terminals (same order), where the full ones are long
    narrow_drop: tuple[int, ...] = ()  # columns a narrow terminal leaves out (report.md and .html keep them)

    def is_numeric(self, column: int) -> bool:
        return column < len(self.numeric) and self.numeric[column]


@dataclass(frozen=True)
class Picture:
    path: Path  # absolute; renderers make it relative or embed it
    alt: str
    caption: str = ""


Block = Paragraph | Note | Table | Picture


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    lead: str  # one line: what this run is and how it ended
    sections: tuple[Section, ...]
