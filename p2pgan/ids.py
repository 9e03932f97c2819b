"""Node ids and the one order every part of a run agrees on.

Client ids end in a number (``c1`` .. ``c1001``); ordering them as text would put ``c10``
before ``c2``. Everything that orders clients (plans, the server's batching, traces, results)
uses :func:`natural_key`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SERVER_ID = "server"

_DIGITS = re.compile(r"(\d+)")


def client_id(index: int) -> str:
    """The id of the ``index``-th client (0-based) in domain-mix order: ``c000`` .. ``c999``, ``c1000``."""
    return f"c{index:03d}"


def natural_key(node_id: str) -> tuple:
    """Sort key that orders embedded numbers by value: c2 < c10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(node_id))


def natural_sorted(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=natural_key)
