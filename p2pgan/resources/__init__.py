"""Files shipped with p2pgan: the default topologies and the example scenarios.

The repository's top-level ``topologies/`` and ``scenarios/`` point here, so a checkout and an
installed copy (editable or not) read the same files through :func:`resource_path`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from p2pgan.errors import P2PGanError


def resource_path(*parts: str) -> Path:
    """A packaged file as a path; a loud error when the install lacks it."""
    path = Path(str(resources.files(__name__).joinpath(*parts)))
    if not path.is_file():
        raise P2PGanError(f"packaged file {'/'.join(parts)} is missing from this p2pgan install ({path}); "
                          "reinstall p2pgan")
    return path
