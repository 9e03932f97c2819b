"""User-facing errors: each renders as one line and maps to an exit code."""

from __future__ import annotations


class P2PGanError(Exception):
    """An error caused by the user's input or environment, shown as one line (no traceback)."""

    exit_code = 1


class ConfigError(P2PGanError):
    """Bad scenario/topology input. Rendered as ``file:key: what is wrong (expected ...)``."""

    exit_code = 2

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}:{key}" if key else source
        super().__init__(f"{where}: {problem}")


class DataError(P2PGanError):
    """A dataset is missing or malformed."""

    exit_code = 2


class PeerError(P2PGanError):
    """A peer could not be reached or sent something invalid."""

    exit_code = 3

    def __init__(self, peer: str, problem: str) -> None:
        self.peer = peer
        super().__init__(f"peer {peer}: {problem}")
