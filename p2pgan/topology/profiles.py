"""Topologies: device profiles, the server, the links between them and who gets which profile.

A topology file is YAML validated here once (config at the edge); everything below works on the
frozen :class:`Topology`. Units are part of every key name: ``clock_hz`` (Hz), ``flops_per_cycle``
(FLOPs per clock cycle per core), ``cores``, ``up_bps``/``down_bps`` (bit/s, "up" is always
towards the server), ``latency_s`` (one-way seconds), ``memory_bytes`` (optional, what a device can
hold for training: ``"4 GiB"``). See :mod:`p2pgan.topology.units` for the string forms (``"480 MHz"``).

A node's compute rate is ``clock_hz * flops_per_cycle * cores`` FLOP/s: one node runs one block
computation at a time (it is a single sequential resource), and that computation is
data-parallel over the batch, so all cores work on it. ``cores`` defaults to 1, which keeps the
paper's per-device figures (docs/design.md §1.2) as they are.

Traffic only ever flows between a client and the server. A client's path is its own access link
(dedicated to that client, one resource per direction), then the link's ``via`` shared segments,
then the server's ``via`` shared segments (e.g. its NIC). Shared segments are single resources
that every transfer crossing them queues for (FIFO, store-and-forward), which is how contention
shows. A topology without any shared segment is priced exactly by the analytic model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from p2pgan.ids import SERVER_ID
from p2pgan.config.schema import SEED_MAX
from p2pgan.config.yamlfile import load_yaml_mapping
from p2pgan.resources import resource_path
from p2pgan.errors import ConfigError
from p2pgan.topology.units import parse_quantity

SERVER_PROFILE = "server"
"""The profile name :meth:`Topology.assign_profiles` gives the server node."""


def _quantity(dimension: str):
    return BeforeValidator(lambda value: parse_quantity(value, dimension))


Hz = Annotated[float, _quantity("frequency"), Field(gt=0)]
BitRate = Annotated[float, _quantity("bitrate"), Field(gt=0)]
Seconds = Annotated[float, _quantity("time"), Field(ge=0)]
PerCycle = Annotated[float, _quantity("count"), Field(gt=0)]
Bytes = Annotated[float, _quantity("bytes"), Field(gt=0)]

_STRICT = ConfigDict(extra="forbid")
MAX_CORES = 1_000_000
"""Counts are strict whole numbers (``cores: yes`` is not 1 core) and bounded (rates stay finite)."""


class _LinkModel(BaseModel):
    model_config = _STRICT
    up_bps: BitRate
    down_bps: BitRate
    latency_s: Seconds = 0.0
    via: list[str] = Field(default_factory=list)


class _SharedModel(BaseModel):
    model_config = _STRICT
    up_bps: BitRate
    down_bps: BitRate
    latency_s: Seconds = 0.0


class _ProfileModel(BaseModel):
    model_config = _STRICT
    clock_hz: Hz
    flops_per_cycle: PerCycle
    cores: int = Field(default=1, ge=1, le=MAX_CORES, strict=True)
    link: Union[str, _LinkModel, None] = None
    memory_bytes: Optional[Bytes] = None


class _ServerModel(BaseModel):
    model_config = _STRICT
    clock_hz: Hz
    flops_per_cycle: PerCycle
    cores: int = Field(default=1, ge=1, le=MAX_CORES, strict=True)
    via: list[str] = Field(default_factory=list)


class _AssignmentModel(BaseModel):
    model_config = _STRICT
    mode: Literal["round-robin", "explicit", "weighted"] = "round-robin"
    profiles: Optional[list[str]] = None
    clients: Optional[dict[str, str]] = None
    default: Optional[str] = None
    weights: Optional[dict[str, Annotated[float, Field(ge=0)]]] = None
    seed: int = Field(default=0, ge=0, le=SEED_MAX, strict=True)


class _TopologyModel(BaseModel):
    model_config = _STRICT
    name: str
    description: str = ""
    profiles: dict[str, _ProfileModel]
    server: _ServerModel
    links: dict[str, _LinkModel] = Field(default_factory=dict)
    shared: dict[str, _SharedModel] = Field(default_factory=dict)
    assignment: _AssignmentModel = Field(default_factory=_AssignmentModel)

    @model_validator(mode="after")
    def _references(self) -> "_TopologyModel":
        if not self.profiles:
            raise ValueError("@profiles at least one device profile is needed")
        if SERVER_PROFILE in self.profiles:
            raise ValueError(f"@profiles.{SERVER_PROFILE} is reserved for the server (use the server: key)")
        shared = sorted(self.shared)
        for name, profile in self.profiles.items():
            if profile.link is None:
                raise ValueError(f"@profiles.{name}.link a client profile needs a link "
                                 f"(expected a link name or {{up_bps, down_bps, latency_s}})")
            if isinstance(profile.link, str) and profile.link not in self.links:
                raise ValueError(f"@profiles.{name}.link unknown link {profile.link!r} "
                                 f"(expected one of: {', '.join(sorted(self.links)) or 'none defined'})")
            if isinstance(profile.link, _LinkModel):
                _check_via(f"profiles.{name}.link.via", profile.link.via, shared)
        for name, link in self.links.items():
            _check_via(f"links.{name}.via", link.via, shared)
        _check_via("server.via", self.server.via, shared)
        self._check_assignment()
        return self

    def _check_assignment(self) -> None:
        spec, known = self.assignment, sorted(self.profiles)

        def check(key: str, names: Sequence[str]) -> None:
            for name in names:
                if name not in self.profiles:
                    raise ValueError(f"@assignment.{key} unknown profile {name!r} (expected one of: {', '.join(known)})")

        if spec.mode == "round-robin":
            if spec.profiles is not None and not spec.profiles:
                raise ValueError("@assignment.profiles round-robin needs at least one profile")
            check("profiles", spec.profiles or [])
        elif spec.mode == "explicit":
            if spec.clients is None:
                raise ValueError("@assignment.clients explicit assignment needs clients: {client-id: profile}")
            check("clients", list(spec.clients.values()))
            check("default", [spec.default] if spec.default else [])
        else:
            if not spec.weights or sum(spec.weights.values()) <= 0:
                raise ValueError("@assignment.weights weighted assignment needs weights with a positive sum")
            check("weights", list(spec.weights))


def _check_via(key: str, via: Sequence[str], shared: Sequence[str]) -> None:
    for name in via:
        if name not in shared:
            raise ValueError(f"@{key} unknown shared segment {name!r} "
                             f"(expected one of: {', '.join(shared) or 'none defined under shared:'})")


# -- the validated, frozen form ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    clock_hz: float
    flops_per_cycle: float
    cores: int = 1
    memory_bytes: float | None = None
    """What a client of this profile can hold for training (``None``: not modelled, unlimited).
    The cut search never places more on it; see :mod:`p2pgan.sim.feasibility`."""

    @property
    def flops_per_s(self) -> float:
        return self.clock_hz * self.flops_per_cycle * self.cores


@dataclass(frozen=True)
class Link:
    """A client's access link (one instance per client) or a shared segment (one in all)."""

    name: str
    up_bps: float
    down_bps: float
    latency_s: float = 0.0
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hop:
    """One resource a transfer crosses: ``resource`` names the SimPy resource it queues for."""

    resource: str
    bps: float
    latency_s: float
    shared: bool


@dataclass(frozen=True)
class Assignment:
    mode: str
    profiles: tuple[str, ...] = ()
    clients: tuple[tuple[str, str], ...] = ()
    default: str | None = None
    weights: tuple[tuple[str, float], ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    profiles: Mapping[str, DeviceProfile]
    profile_links: Mapping[str, Link]
    server: DeviceProfile
    server_via: tuple[str, ...]
    shared: Mapping[str, Link]
    assignment: Assignment
    source: str = "<topology>"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The validated YAML mapping, kept so what-if studies can re-derive variants from it."""

    @property
    def has_shared_capacity(self) -> bool:
        """True when some transfer crosses a shared segment (SimPy may then exceed the analytic model)."""
        return bool(self.server_via) or any(link.via for link in self.profile_links.values())

    def profile(self, name: str) -> DeviceProfile:
        return self.server if name == SERVER_PROFILE else self.profiles[name]

    def assign_profiles(self, client_ids: Sequence[str]) -> dict[str, str]:
        """Client id -> profile name, plus ``"server" -> "server"``. Deterministic in its inputs."""
        spec = self.assignment
        ids = [cid for cid in client_ids if cid != SERVER_ID]
        if spec.mode == "round-robin":
            order = spec.profiles or tuple(self.profiles)
            out = {cid: order[i % len(order)] for i, cid in enumerate(ids)}
        elif spec.mode == "explicit":
            table = dict(spec.clients)
            out = {}
            for cid in ids:
                name = table.get(cid, spec.default)
                if name is None:
                    raise ConfigError(self.source, "assignment.clients",
                                      f"no profile for client {cid!r} (expected it listed, or assignment.default)")
                out[cid] = name
        else:
            names = [name for name, _ in spec.weights]
            weights = np.array([w for _, w in spec.weights], dtype=float)
            rng = np.random.default_rng(spec.seed)
            picks = rng.choice(len(names), size=len(ids), p=weights / weights.sum())
            out = {cid: names[k] for cid, k in zip(ids, picks)}
        out[SERVER_ID] = SERVER_PROFILE
        return out

    def path(self, client_id: str, profile_name: str, direction: str) -> tuple[Hop, ...]:
        """Hops of a transfer between ``client_id`` and the server, ``direction`` "up" or "down"."""
        link = self.profile_links[profile_name]
        up = direction == "up"
        access = Hop(f"{client_id}:{direction}", link.up_bps if up else link.down_bps, link.latency_s, False)
        shared = [self._shared_hop(name, direction) for name in (*link.via, *self.server_via)]
        return (access, *shared) if up else (*reversed(shared), access)

    def _shared_hop(self, name: str, direction: str) -> Hop:
        seg = self.shared[name]
        return Hop(f"shared:{name}:{direction}", seg.up_bps if direction == "up" else seg.down_bps,
                   seg.latency_s, True)

    def replaced(self, values: Mapping[str, Any]) -> "Topology":
        """A variant with dotted keys set (``*`` matches every key of a mapping), re-validated."""
        raw = copy.deepcopy(dict(self.raw))
        for key, value in values.items():
            _set_dotted(raw, key.split("."), value, key, self.source)
        return topology_from_mapping(raw, self.source)


def _set_dotted(node: Any, parts: list[str], value: Any, key: str, source: str) -> None:
    head, rest = parts[0], parts[1:]
    if not isinstance(node, dict):
        raise ConfigError(source, key, "cannot set a key inside a non-mapping value")
    targets = list(node) if head == "*" else [head]
    if head == "*" and not targets:
        raise ConfigError(source, key, "'*' matched nothing")
    for name in targets:
        if not rest:
            node[name] = value
            continue
        if name not in node or node[name] is None:
            node[name] = {}
        _set_dotted(node[name], rest, value, key, source)


# -- loading ----------------------------------------------------------------------------------


def load_topology(path: Path, overrides: Mapping[str, Any] | None = None) -> Topology:
    """Read and validate a topology file, then set ``overrides`` (dotted keys, a scenario's
    ``topology_overrides``). Raises :class:`ConfigError` with ``file:key: problem``."""
    raw = load_yaml_mapping(Path(path), "topology")
    source = str(path)
    topology = topology_from_mapping(raw, source)
    return topology.replaced(overrides) if overrides else topology


def topology_from_mapping(raw: Mapping[str, Any], source: str = "<topology>") -> Topology:
    try:
        model = _TopologyModel.model_validate(dict(raw))
    except ValidationError as exc:
        raise _config_error(source, exc) from None
    links = {name: _link(name, spec) for name, spec in model.links.items()}
    profile_links = {}
    for name, spec in model.profiles.items():
        profile_links[name] = links[spec.link] if isinstance(spec.link, str) else _link(f"{name}.link", spec.link)
    assignment = model.assignment
    return Topology(
        name=model.name,
        description=model.description,
        profiles={name: DeviceProfile(name, p.clock_hz, p.flops_per_cycle, p.cores, p.memory_bytes)
                  for name, p in model.profiles.items()},
        profile_links=profile_links,
        server=DeviceProfile(SERVER_PROFILE, model.server.clock_hz, model.server.flops_per_cycle, model.server.cores),
        server_via=tuple(model.server.via),
        shared={name: Link(name, s.up_bps, s.down_bps, s.latency_s) for name, s in model.shared.items()},
        assignment=Assignment(
            mode=assignment.mode,
            profiles=tuple(assignment.profiles or ()),
            clients=tuple((assignment.clients or {}).items()),
            default=assignment.default,
            weights=tuple((assignment.weights or {}).items()),
            seed=assignment.seed,
        ),
        source=source,
        raw=copy.deepcopy(dict(raw)),
    )


def _link(name: str, spec: _LinkModel) -> Link:
    return Link(name, spec.up_bps, spec.down_bps, spec.latency_s, tuple(spec.via))


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    errors = exc.errors()
    # A union (a link name or an inline link) reports one error per branch: the deepest is the
    # one that says what is wrong inside the value the user actually wrote.
    error = max(errors, key=lambda e: (len(e["loc"]), -errors.index(e)))
    loc = [str(part) for part in error["loc"]
           if not str(part).startswith("function-") and str(part) not in ("str", "_LinkModel")]
    key = ".".join(loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("@"):
        blamed, _, message = message[1:].partition(" ")
        key = ".".join(loc + [blamed]) if loc else blamed
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message}, got {error['input']!r}"
    return ConfigError(source, key, message.splitlines()[0])


def default_topology_path() -> Path:
    """The packaged ``topologies/paper-edge.yaml``: the reference's seven devices (docs/design.md §1.2)."""
    return resource_path("topologies", "paper-edge.yaml")
