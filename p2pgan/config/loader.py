"""YAML -> :class:`Scenario`, with ``--set`` overrides and one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from p2pgan.config.keys import KeySpace, KeyValues, parse_assignment
from p2pgan.config.schema import MAX_SECONDS, CutsSpec, Scenario
from p2pgan.config.yamlfile import load_yaml_mapping
from p2pgan.errors import ConfigError


def load_scenario(path: Path, overrides: Iterable[str | KeyValues] = ()) -> Scenario:
    """Read, override and validate a scenario file. Raises :class:`ConfigError`.

    ``overrides`` are ``--set`` texts (``key.path=value``, see :mod:`p2pgan.config.keys`) or
    already parsed :class:`KeyValues` of one value each."""
    path = Path(path)
    return scenario_from(read_scenario(path), path, overrides)


def read_scenario(path: Path) -> dict[str, Any]:
    """The scenario file's raw mapping (cut shorthands spelled out), before overrides."""
    return _normalise_cuts(load_yaml_mapping(Path(path), "scenario"))


def scenario_from(raw: dict[str, Any], path: Path, overrides: Iterable[str | KeyValues] = ()) -> Scenario:
    """``raw`` (left unchanged) with ``overrides`` applied, validated as the scenario at ``path``."""
    path = Path(path)
    raw = apply_overrides(_normalise_cuts(copy.deepcopy(raw)), overrides, str(path), base_dir=path.resolve().parent)
    return parse_scenario(raw, path)


def _normalise_cuts(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept ``cuts: [g_head, g_tail, d_head, d_tail]`` and ``cuts: policy-name`` shorthands."""
    cuts = raw.get("cuts")
    if isinstance(cuts, (list, tuple)):
        raw = {**raw, "cuts": {"fixed": cuts}}
    elif isinstance(cuts, str):
        raw = {**raw, "cuts": {"policy": cuts}}
    return raw


def _normalise_strategy(raw: dict[str, Any]) -> dict[str, Any]:
    """``strategy: {name: n, k: v}`` -> ``{name: n, options: {k: v}}``: the options are the
    strategy's own section, validated by its ``Options`` class, not by this schema."""
    strategy = raw.get("strategy")
    if not isinstance(strategy, dict):
        return raw
    options = strategy.get("options")
    if options is not None and not isinstance(options, dict):
        return raw  # the schema says what is wrong with it
    # A run's config.json writes ``{name, options: {...}}``; ``--set strategy.k=v`` on it adds a flat key.
    flat = {k: v for k, v in strategy.items() if k not in ("name", "options")}
    merged = {**(options or {}), **flat}
    return {**raw, "strategy": {**({"name": strategy["name"]} if "name" in strategy else {}), "options": merged}}


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str | KeyValues], source: str,
                    base_dir: Path | None = None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides in order (values parsed as the file's YAML), in place.

    Keys are the key language of :mod:`p2pgan.config.keys`: dotted scenario paths with ``*``
    wildcards, ``topology.<key>`` for the topology file, and the aliases ``clients``,
    ``batch_size``, ``cuts`` and bare topology keys. ``base_dir`` is where a relative
    ``topology:`` path is read from (the scenario file's folder)."""
    space = KeySpace(raw, source, base_dir)
    for override in overrides:
        assignment = override if isinstance(override, KeyValues) else parse_assignment(override, source=source)
        space.apply(assignment)
    return raw


def parse_scenario(raw: dict[str, Any], path: Path) -> Scenario:
    source = str(path)
    raw = _normalise_strategy(_normalise_cuts(dict(raw)))
    _drop_provenance(raw, source)
    try:
        scenario = Scenario(**raw, source=path)
    except ValidationError as exc:
        raise _config_error(source, exc) from None
    except TypeError as exc:  # e.g. a required key is missing at the top level
        raise ConfigError(source, "", str(exc)) from None
    return _resolve_paths(scenario, path)


def _drop_provenance(raw: dict[str, Any], source: str) -> None:
    """A run's ``config.json`` is the resolved scenario and may be run again as one: its
    ``source`` (the file it was resolved from) is a record, not a setting. The file being read
    is the scenario's source now, and every path in a resolved config is already absolute."""
    if "source" not in raw:
        return
    if raw["source"] is not None and not isinstance(raw["source"], str):
        raise ConfigError(source, "source", "expected the path of the scenario file this config was resolved "
                                            f"from (a run's config.json records it), got {_shown(raw['source'])}")
    del raw["source"]


def _resolve_paths(scenario: Scenario, path: Path) -> Scenario:
    base = path.resolve().parent
    data = dataclasses.replace(scenario.data, root=_under(base, scenario.data.root))
    # An explicit output.dir is relative to the scenario file; the default lands where the user is.
    output_dir = _under(base, scenario.output.dir) if scenario.output.dir is not None else (Path.cwd() / "runs" / scenario.name)
    output = dataclasses.replace(scenario.output, dir=output_dir)
    metrics = dataclasses.replace(scenario.metrics, cache_dir=_under(base, scenario.metrics.cache_dir))
    logging = dataclasses.replace(scenario.logging, dir=_under(base, scenario.logging.dir))
    topology = _under(base, scenario.topology)
    if topology is not None and not topology.is_file():
        raise ConfigError(str(path), "topology", f"topology file not found: {topology}")
    source = str(path)
    if data.root is not None:
        check_input_dir(data.root, "data.root", source=source)  # else it would silently use the offline copy
    check_output_path(output_dir, "output.dir", source=source)
    if metrics.cache_dir is not None:
        check_output_path(metrics.cache_dir, "metrics.cache_dir", source=source)
    if logging.dir is not None:
        check_output_path(logging.dir, "logging.dir", source=source)
    return dataclasses.replace(scenario, data=data, output=output, metrics=metrics, topology=topology,
                               logging=logging)


def _under(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = [str(part) if not isinstance(part, int) else f"[{part}]" for part in error["loc"]
           if not str(part).startswith("function-")]
    key = ".".join(loc).replace(".[", "[")  # list items as the YAML reader names them: dropout[0].clients
    message = error["msg"].removeprefix("Value error, ")
    # Cross-field validators name the key they blame as "@dotted.key problem".
    if message.startswith("@"):
        blamed, _, message = message[1:].partition(" ")
        key = ".".join(loc + [blamed]).replace(".[", "[") if loc else blamed
    if error["type"] == "unexpected_keyword_argument" or error["type"] == "extra_forbidden":
        message = f"unknown key (expected one of: {_allowed_keys(loc[:-1])})"
    elif error["type"] == "missing" or error["type"] == "missing_argument":
        message = "required key is missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message}, got {_shown(error['input'])}"
        if isinstance(error["input"], bool):
            message += " (YAML reads yes/no/on/off as booleans; write a number)"
    return ConfigError(source, key, message)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(loc: list[str]) -> str:
    section: Any = Scenario
    for part in loc:
        if part.startswith("["):  # an item of a list of sections (faults.dropout[0])
            continue
        info = section.__pydantic_fields__.get(part)
        annotation = info.annotation if info is not None else None
        if typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        if not hasattr(annotation, "__pydantic_fields__"):
            break
        section = annotation
    return ", ".join(name for name in section.__pydantic_fields__ if name != "source")


# -- paths and flags checked at the edge (no file is created here; ``validate`` uses them too) -----


def check_output_path(path: Path, key: str, *, source: str = "",
                      kind: Literal["folder", "file"] = "folder") -> Path:
    """``path`` if a run could write there (it exists as a writable ``kind``, or its nearest
    existing ancestor is a writable folder), else a one-line :class:`ConfigError` naming
    ``source:key`` (``source`` defaults to the path itself; for a flag pass the command, e.g.
    ``check_output_path(args.out, "--out", source="compare")``)."""
    path = Path(path)
    where = source or str(path)
    expected = "a folder" if kind == "folder" else "a file path"
    if "\0" in str(path):  # pathlib answers False to every question about such a path
        raise ConfigError(where, key, f"unusable path {str(path)[:80]!r} (it contains a NUL byte)")
    try:
        if path.is_symlink() and not path.exists():
            raise ConfigError(where, key, f"{path} is a broken symbolic link (expected {expected})")
        if path.exists():
            if kind == "folder" and not path.is_dir():
                raise ConfigError(where, key, f"{path} is a file (expected {expected})")
            if kind == "file" and path.is_dir():
                raise ConfigError(where, key, f"{path} is a folder (expected {expected})")
            if not os.access(path, os.W_OK | (os.X_OK if kind == "folder" else 0)):
                raise ConfigError(where, key, f"{path} is not writable")
            return path
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            if ancestor.is_symlink():
                raise ConfigError(where, key, f"cannot create {path}: {ancestor} is a broken symbolic link")
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ConfigError(where, key, f"cannot create {path}: {ancestor} is a file, not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(where, key, f"cannot create {path}: {ancestor} is not writable")
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError(where, key, f"unusable path {str(path)[:80]!r} ({exc.strerror or exc})") from None
    except ValueError as exc:  # an embedded NUL byte
        raise ConfigError(where, key, f"unusable path {str(path)[:80]!r} ({exc})") from None
    return path


def check_input_dir(path: Path, key: str, *, source: str = "") -> Path:
    """``path`` if it is an existing, readable folder, else a one-line :class:`ConfigError`."""
    path = Path(path)
    where = source or str(path)
    if "\0" in str(path):
        raise ConfigError(where, key, f"unusable path {str(path)[:80]!r} (it contains a NUL byte)")
    try:
        if not path.exists():
            raise ConfigError(where, key, f"folder not found: {path}")
        if not path.is_dir():
            raise ConfigError(where, key, f"{path} is a file (expected a folder)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(where, key, f"{path} is not readable")
    except (OSError, ValueError) as exc:
        raise ConfigError(where, key, f"unusable path {str(path)[:80]!r} ({exc})") from None
    return path


def check_duration(seconds: float, key: str, *, source: str, allow_zero: bool = True) -> float:
    """A finite number of seconds in ``[0, MAX_SECONDS]`` (``(0, ...]`` unless ``allow_zero``);
    NaN would make every deadline comparison false and a wait loop spin forever."""
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not math.isfinite(seconds) or not low_ok or seconds > MAX_SECONDS:
        low = ">= 0" if allow_zero else "> 0"
        raise ConfigError(source, key, f"expected a finite number of seconds {low} and <= {MAX_SECONDS:g}, "
                                       f"got {seconds!r}")
    return seconds


__all__ = ["CutsSpec", "apply_overrides", "check_duration", "check_input_dir", "check_output_path",
           "load_scenario", "parse_scenario", "read_scenario", "scenario_from"]
