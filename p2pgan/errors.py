"""User-facing errors: each renders as one line and maps to an exit code.

Exit codes (every command follows this table; ``p2pgan.cli.main`` returns ``exc.exit_code``):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success
1     internal error: a bug (any exception that is not a :class:`P2PGanError`)
2     bad input: scenario/topology/peer files, ``--set`` values, flags, data, output paths,
      a results folder that is in use or not empty (:class:`ConfigError`, :class:`DataError`,
      and plain :class:`P2PGanError`)
3     a peer or the cluster failed during a run (:class:`PeerError`, :class:`ClusterError`)
130   interrupted (Ctrl-C or SIGTERM)
====  ==========================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_PEER = 3
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so a message stays one line
    whatever a user put in a key, a name or a path."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class P2PGanError(Exception):
    """An error caused by the user's input or environment, shown as one line (no traceback)."""

    exit_code = EXIT_BAD_INPUT

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(P2PGanError):
    """Bad scenario/topology input. Rendered as ``file:key: what is wrong (expected ...)``."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}:{key}" if key else source
        super().__init__(f"{where}: {problem}")


class DataError(P2PGanError):
    """A dataset is missing or malformed."""

    exit_code = EXIT_BAD_INPUT


class PeerError(P2PGanError):
    """A peer could not be reached or sent something invalid."""

    exit_code = EXIT_PEER

    def __init__(self, peer: str, problem: str) -> None:
        self.peer = peer
        super().__init__(f"peer {peer}: {problem}")


class ClusterError(P2PGanError):
    """The run failed as a whole (not one peer's fault): a node process died, the coordinator lost
    its control pipe, a deadline passed with nobody left to blame."""

    exit_code = EXIT_PEER
