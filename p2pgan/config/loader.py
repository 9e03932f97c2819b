"""YAML -> :class:`Scenario`, with ``--set`` overrides and one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from p2pgan.config.schema import CutsSpec, Scenario
from p2pgan.config.yamlfile import load_yaml_mapping
from p2pgan.errors import ConfigError


def load_scenario(path: Path, overrides: Iterable[str] = ()) -> Scenario:
    """Read, override and validate a scenario file. Raises :class:`ConfigError`."""
    path = Path(path)
    raw = load_yaml_mapping(path, "scenario")
    raw = apply_overrides(_normalise_cuts(raw), overrides, str(path))
    return parse_scenario(raw, path)


def _normalise_cuts(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept ``cuts: [g_head, g_tail, d_head, d_tail]`` and ``cuts: policy-name`` shorthands."""
    cuts = raw.get("cuts")
    if isinstance(cuts, (list, tuple)):
        raw = {**raw, "cuts": {"fixed": cuts}}
    elif isinstance(cuts, str):
        raw = {**raw, "cuts": {"policy": cuts}}
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars/lists."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(source, override, "override must look like key.path=value")
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(source, ".".join(parts[: i + 1]), "cannot set a key inside a non-mapping value")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(source, key, f"cannot parse override value {value!r}") from None
    return raw


def parse_scenario(raw: dict[str, Any], path: Path) -> Scenario:
    source = str(path)
    raw = _normalise_cuts(dict(raw))
    if "source" in raw:
        raise ConfigError(source, "source", "unknown key (set by the loader, not by the file)")
    try:
        scenario = Scenario(**raw, source=path)
    except ValidationError as exc:
        raise _config_error(source, exc) from None
    except TypeError as exc:  # e.g. a required key is missing at the top level
        raise ConfigError(source, "", str(exc)) from None
    return _resolve_paths(scenario, path)


def _resolve_paths(scenario: Scenario, path: Path) -> Scenario:
    base = path.resolve().parent
    data = dataclasses.replace(scenario.data, root=_under(base, scenario.data.root))
    # An explicit output.dir is relative to the scenario file; the default lands where the user is.
    output_dir = _under(base, scenario.output.dir) if scenario.output.dir is not None else (Path.cwd() / "runs" / scenario.name)
    output = dataclasses.replace(scenario.output, dir=output_dir)
    metrics = dataclasses.replace(scenario.metrics, cache_dir=_under(base, scenario.metrics.cache_dir))
    topology = _under(base, scenario.topology)
    if topology is not None and not topology.is_file():
        raise ConfigError(str(path), "topology", f"topology file not found: {topology}")
    return dataclasses.replace(scenario, data=data, output=output, metrics=metrics, topology=topology)


def _under(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    key = ".".join(loc)
    message = error["msg"].removeprefix("Value error, ")
    # Cross-field validators name the key they blame as "@dotted.key problem".
    if message.startswith("@"):
        blamed, _, message = message[1:].partition(" ")
        key = ".".join(loc + [blamed]) if loc else blamed
    if error["type"] == "unexpected_keyword_argument" or error["type"] == "extra_forbidden":
        message = f"unknown key (expected one of: {_allowed_keys(loc[:-1])})"
    elif error["type"] == "missing" or error["type"] == "missing_argument":
        message = "required key is missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message}, got {error['input']!r}"
    return ConfigError(source, key, message)


def _allowed_keys(loc: list[str]) -> str:
    section: Any = Scenario
    for part in loc:
        info = section.__pydantic_fields__.get(part)
        if info is None or not hasattr(info.annotation, "__pydantic_fields__"):
            break
        section = info.annotation
    return ", ".join(name for name in section.__pydantic_fields__ if name != "source")


__all__ = ["CutsSpec", "apply_overrides", "load_scenario", "parse_scenario"]
