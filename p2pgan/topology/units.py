"""Physical quantities in topology files: plain numbers in SI base units, or strings with a unit.

Every numeric topology key names its unit (``clock_hz``, ``up_bps``, ``latency_s``), so a bare
number is unambiguous. A string such as ``"480 MHz"``, ``"50 Mbit/s"`` or ``"5 ms"`` is accepted
too and converted; a unit of the wrong kind (``"5 ms"`` for a bandwidth) is an error, which is
the point of writing units at all. Note that YAML 1.1 reads ``480e6`` as a string; that string
is accepted here as the number it spells. Sizes (``memory_bytes``) take decimal (``"4 GB"``) or
binary (``"4 GiB"``) multiples of a byte.
"""

from __future__ import annotations

import math
import re

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SMALL = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9}

# dimension -> {unit spelling: factor to the SI base unit}
_UNITS: dict[str, dict[str, float]] = {
    "frequency": {f"{p}Hz": f for p, f in _PREFIX.items()},
    "bitrate": {
        **{f"{p}bit/s": f for p, f in _PREFIX.items()},
        **{f"{p}bps": f for p, f in _PREFIX.items()},
        **{f"{p}b/s": f for p, f in _PREFIX.items()},
        **{f"{p}B/s": 8 * f for p, f in _PREFIX.items()},
    },
    "time": {f"{p}s": f for p, f in _SMALL.items()},
    "count": {"": 1.0},
    # Decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) multiples of a byte.
    "bytes": {
        "B": 1.0,
        **{f"{p}B": f for p, f in _PREFIX.items() if p},
        **{f"{p}iB": float(1024**k) for k, p in enumerate(("K", "M", "G", "T"), start=1)},
    },
}

_EXAMPLE = {"frequency": "480e6 or '480 MHz'", "bitrate": "50e6 or '50 Mbit/s'",
            "time": "0.005 or '5 ms'", "count": "a number", "bytes": "4294967296 or '4 GiB'"}

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")


def parse_quantity(value: object, dimension: str) -> float:
    """``value`` as a float in the SI base unit of ``dimension``; ``ValueError`` says why not."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_EXAMPLE[dimension]}, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _QUANTITY.match(value)
        if not match:
            raise ValueError(f"expected {_EXAMPLE[dimension]}, got {value!r}")
        unit = (match.group(2) or "").strip()
        factor = 1.0 if not unit else _UNITS[dimension].get(unit)
        if factor is None:
            raise ValueError(f"unit {unit!r} is not a {dimension} unit (expected {_EXAMPLE[dimension]})")
        number = float(match.group(1)) * factor
    else:
        raise ValueError(f"expected {_EXAMPLE[dimension]}, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number
