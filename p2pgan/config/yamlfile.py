"""Reading a YAML file that must hold a mapping, with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from p2pgan.errors import ConfigError


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of ``path``; ``what`` names the kind of file in error messages."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read {what} file ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, where, f"malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping of {what} keys at the top level")
    return raw
