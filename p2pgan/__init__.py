"""p2pgan: HuSCF-GAN training across simulated heterogeneous peers.

The Python API (docs/api.md) is here, loaded on first use: ``import p2pgan.errors`` or the command
line's start must not pay for torch and the run machinery.

``p2pgan.run`` is the package holding the run machinery, so training a scenario is
``p2pgan.run_scenario``.
"""

import importlib

__version__ = "0.1.0"

_API = ("load_scenario", "run_scenario", "open_results", "Run", "Round", "Plan", "Client", "Summary", "Paths")


def __getattr__(name: str):
    # PEP 562: only an attribute nothing else defines arrives here. The module is named as a
    # string so that this package's own modules importing ``p2pgan`` (for __version__) do not
    # appear to import the API, which sits above them.
    if name in _API:
        return getattr(importlib.import_module("p2pgan.api"), name)
    raise AttributeError(f"module 'p2pgan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
