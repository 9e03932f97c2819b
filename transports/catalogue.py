"""The transports a scenario can name, as an explicit table.

Each entry is imported only when a run asks for it (http pulls in aiohttp). An import that
fails inside a transport propagates as it is: a broken install is not an "unknown transport".
"""

from __future__ import annotations

import importlib
from typing import Any

from p2pgan.errors import ConfigError
from p2pgan.protocol.endpoint import Transport

TRANSPORTS: dict[str, str] = {
    "memory": "transports.memory:MemoryTransport",
    "http": "transports.http:HttpTransport",
    "ray": "transports.ray:RayTransport",
}
"""Transport name -> ``module:class``."""


def available_transports() -> list[str]:
    return sorted(TRANSPORTS)


def transport_class(name: str) -> type[Transport]:
    try:
        target = TRANSPORTS[name]
    except KeyError:
        raise ConfigError(f"unknown transport {name!r} (known: {', '.join(available_transports())})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_transport(name: str, **options: Any) -> Transport:
    return transport_class(name)(**options)
