"""The key language shared by ``--set`` and ``whatif --vary``: dotted scenario paths.

A key is a dotted path into the scenario (``training.batch_size``, ``domains.mnist``,
``strategy.clusters``, ``metrics.score_samples``) or, below ``topology.``, into the topology file
the scenario prices on (``topology.links.device1.up_bps``; the packaged paper-edge topology when
the scenario names none). ``*`` stands for every entry present at that level (``domains.*``,
``topology.links.*.up_bps``). Short aliases:

* ``batch_size`` is ``training.batch_size``;
* ``clients=N`` spreads N clients over the scenario's domains (the first domains take the
  remainder: 7 over mnist, fashion-mnist is 4 + 3);
* ``cuts=V`` sets the cut plan: ``exact`` / ``ga`` (a search), a policy name (``mixed``,
  ``all-offload``, ...), four digits such as ``0110`` (one cut for every client) or a list;
* a bare topology key (``server.clock_hz``, ``links.*.up_bps``, ``profiles.device1.clock_hz``)
  is ``topology.<key>``.

``--set KEY=VALUE`` takes one value and ``--vary KEY=V1,V2,...`` several (split at top-level
commas, so ``[0,1,1,0]`` stays one value); both read every value with the scenario file's strict
YAML reader, so the same text gives the same value. Scenario keys are checked against the schema
(a default the file does not write is still a valid key); topology keys change entries the
topology file has. A key that names nothing is refused with the valid keys near it.

Topology keys are kept in the scenario's ``topology_overrides`` (concrete dotted paths) and
applied wherever the run or a command loads its topology.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from p2pgan.config.schema import Scenario
from p2pgan.config.yamlfile import load_yaml_mapping, parse_yaml
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.resources import resource_path

ALIASES = {"batch_size": "training.batch_size"}
CLIENTS = "clients"
CUTS = "cuts"
TOPOLOGY = "topology"
OVERRIDES_FIELD = "topology_overrides"
"""Scenario field holding the topology keys (set through ``topology.<key>``, not listed itself)."""
CUT_CHOICES = ("fixed", "per_client", "policy", "search")
"""The mutually exclusive ways of ``cuts:``; setting one drops the others."""
SEARCHES = ("exact", "ga")
DEFAULT_TOPOLOGY = ("topologies", "paper-edge.yaml")
"""What a run prices on without ``topology:`` (``p2pgan.topology.profiles.default_topology_path``)."""

_LEAF = "leaf"
_OPEN = "open"  # a mapping whose entries the schema does not name (domains, the strategy's options)
_CUT_TEXT = re.compile(r"^[\s(\[]*\d[\s,]*\d[\s,]*\d[\s,]*\d[\s)\]]*$")

Kind = Literal["scenario", "topology", "clients", "cuts"]


@dataclass(frozen=True)
class KeyValues:
    """One ``KEY=V1,V2,...`` as written: the key, each value's text and its parsed value."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]

    def at(self, index: int) -> "KeyValues":
        """The same key with only its ``index``-th value (one point of a grid)."""
        return KeyValues(self.key, (self.texts[index],), (self.values[index],))

    @classmethod
    def of(cls, key: str, value: Any) -> "KeyValues":
        """An already parsed value (a path, a number), bypassing YAML (a path may hold ``: ``)."""
        return cls(key, (str(value),), (value,))


def parse_assignment(text: str, flag: str = "--set", *, many: bool = False, source: str = "") -> KeyValues:
    """``KEY=VALUE`` (``many``: ``KEY=V1,V2,...``) -> :class:`KeyValues`; errors name ``source``
    (default the flag)."""
    where = source or flag
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key:
        problem = ("expected KEY=V1,V2,... (e.g. server.clock_hz=21e9,42e9)" if many
                   else "override must look like key.path=value")
        raise ConfigError(where, text, problem)
    if not many:
        return KeyValues(key, (rest,), (_parse_value(key, rest, where),))
    if not rest.strip():
        raise ConfigError(where, key, "expected KEY=V1,V2,... with at least one value")
    texts = [part.strip() for part in split_top_level(rest)]
    if any(not part for part in texts):
        raise ConfigError(where, key, f"empty value in {rest!r}")
    return KeyValues(key, tuple(texts), tuple(_parse_value(key, part, where) for part in texts))


def _parse_value(key: str, text: str, source: str) -> Any:
    if key == CUTS and cut_digits(text) is not None:
        return text  # "0110" is a cut, not the octal number 72
    return parse_yaml(text, source, key)


def split_top_level(text: str) -> list[str]:
    """``text`` split at commas outside brackets and quotes: ``[0,1,1,0],0110`` is two values."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def cut_digits(text: str) -> list[int] | None:
    """``"0110"``, ``"0,1,1,0"`` or ``"(0,1,1,0)"`` as four digits; ``None`` when it is not a cut."""
    if not _CUT_TEXT.match(str(text)):
        return None
    return [int(ch) for ch in str(text) if ch.isdigit()]


# -- the schema as a tree of keys ---------------------------------------------------------------------


def _section_tree(cls: type) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, info in cls.__pydantic_fields__.items():
        annotation = info.annotation
        if hasattr(annotation, "__pydantic_fields__"):
            tree[name] = _section_tree(annotation)
        elif typing.get_origin(annotation) is dict:
            tree[name] = _OPEN
        else:
            tree[name] = _LEAF
    return tree


def scenario_tree() -> dict[str, Any]:
    """Scenario keys: a section is a dict, a value :data:`_LEAF`, a free mapping :data:`_OPEN`."""
    tree = _section_tree(Scenario)
    for hidden in ("source", OVERRIDES_FIELD):
        tree.pop(hidden, None)
    tree["strategy"] = _OPEN  # written flat (strategy: {name: huscf, clusters: 2}); its class checks it
    return tree


class KeySpace:
    """The valid keys of one scenario file (its schema, its raw mapping, its topology's mapping),
    and how an assignment changes the raw mapping. ``raw`` is changed in place."""

    def __init__(self, raw: dict[str, Any], source: str, base_dir: Path | None = None) -> None:
        self.raw = raw
        self.source = source
        self.base_dir = base_dir
        self.tree = scenario_tree()
        self._topology: tuple[Path, dict[str, Any]] | None = None

    # -- the topology file ------------------------------------------------------------------------

    def topology_path(self) -> Path:
        value = self.raw.get(TOPOLOGY)
        if value is None:
            return resource_path(*DEFAULT_TOPOLOGY)
        path = Path(str(value)).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def topology_raw(self) -> dict[str, Any]:
        path = self.topology_path()
        if self._topology is None or self._topology[0] != path:
            if not path.is_file():
                raise ConfigError(self.source, TOPOLOGY, f"topology file not found: {path}")
            self._topology = (path, load_yaml_mapping(path, "topology"))
        return self._topology[1]

    def _topology_sections(self) -> dict[str, Any]:
        """The topology's top-level keys for bare keys; empty when the file cannot be read (the
        scenario's own check reports that)."""
        try:
            return self.topology_raw()
        except P2PGanError:
            return {}

    # -- naming -----------------------------------------------------------------------------------

    def kind_of(self, key: str) -> tuple[Kind, str]:
        """(kind, canonical key): aliases and bare topology keys spelled out."""
        key = ALIASES.get(key, key)
        if key == CLIENTS:
            return "clients", key
        if key == CUTS:
            return "cuts", key
        first = key.split(".", 1)[0]
        if first == TOPOLOGY and key != TOPOLOGY:
            return "topology", key
        if first not in self.tree and first in self._topology_sections():
            return "topology", f"{TOPOLOGY}.{key}"
        return "scenario", key

    def resolve(self, key: str) -> tuple[Kind, list[tuple[str, ...]]]:
        """The kind of ``key`` and the concrete paths it names (wildcards expanded)."""
        kind, canonical = self.kind_of(key)
        if kind in ("clients", "cuts"):
            return kind, [(canonical,)]
        parts = canonical.split(".")
        if any(not part for part in parts):
            raise ConfigError(self.source, key, "empty part in the key (expected a.b.c)")
        if kind == "topology":
            return kind, self._walk(key, parts[1:], None, self.topology_raw(), (TOPOLOGY,))
        return kind, self._walk(key, parts, self.tree, self.raw, ())

    def _walk(self, key: str, parts: list[str], tree: Any, raw: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        """Paths below ``prefix`` matching ``parts``. ``tree`` ``None``: the raw mapping is the
        schema (topology keys name entries the file has)."""
        found = [(prefix, tree, raw)]
        for part in parts:
            following = []
            for path, node, data in found:
                if node == _LEAF or (node is None and not isinstance(data, dict)):
                    raise ConfigError(self.source, key, f"{'.'.join(path)} is a value, not a section "
                                                        "(nothing can be set inside it)")
                entries = list(data) if isinstance(data, dict) else []
                if isinstance(node, dict):
                    names = list(node)
                    entries = [e for e in entries if e in node]
                else:
                    names = entries
                if part == "*":
                    chosen = entries
                    if not chosen:
                        raise ConfigError(self.source, key, f"'*' matched nothing under {'.'.join(path) or 'the top'}"
                                                            f" (entries there: {', '.join(names) or 'none'})")
                elif node == _OPEN or part in names:
                    chosen = [part]
                else:
                    raise self._unknown(key, path, names)
                for name in chosen:
                    child = node.get(name) if isinstance(node, dict) else (_OPEN if node == _OPEN else None)
                    following.append((path + (name,), child, data.get(name) if isinstance(data, dict) else None))
            found = following
        return [path for path, _, _ in found]

    def _unknown(self, key: str, path: tuple[str, ...], names: list[str]) -> ConfigError:
        _, canonical = self.kind_of(key)
        close = difflib.get_close_matches(canonical, self.valid_keys(), n=3, cutoff=0.75)
        here = ", ".join(names) if path else ", ".join([*names, *ALIASES, CLIENTS, f"{TOPOLOGY}.<key>"])
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return ConfigError(self.source, key, f"unknown key ({hint}valid under {'.'.join(path) or 'the top level'}: "
                                             f"{here})")

    def valid_keys(self, wildcards: bool = True) -> list[str]:
        """Every key this scenario accepts, aliases and topology keys included."""
        keys: list[str] = []
        _leaf_keys(self.tree, self.raw, (), keys)
        if "strategy.name" not in keys:
            keys.append("strategy.name")
        keys += [*ALIASES, CLIENTS]
        try:
            topology = self.topology_raw()
        except P2PGanError:
            topology = {}
        topo: list[str] = []
        _leaf_keys(None, topology, (TOPOLOGY,), topo)
        keys += topo
        if wildcards:
            keys += _wildcard_forms(topology, (TOPOLOGY,))
        return list(dict.fromkeys(keys))

    # -- changing the raw mapping -----------------------------------------------------------------

    def apply(self, assignment: KeyValues) -> None:
        """Set ``assignment`` (one value) in the raw mapping."""
        if len(assignment.values) != 1:
            raise ConfigError(self.source, assignment.key, "expected one value")
        key, text, value = assignment.key, assignment.texts[0], assignment.values[0]
        kind, paths = self.resolve(key)
        if kind == "clients":
            self.raw["domains"] = spread_clients(value, self.raw.get("domains"), self.source)
        elif kind == "cuts":
            self.raw["cuts"] = cuts_section(text, value, self.raw.get("cuts"), self.source)
        elif kind == "topology":
            table = self.raw.get(OVERRIDES_FIELD)
            table = dict(table) if isinstance(table, dict) else {}
            for path in paths:
                table[".".join(path[1:])] = copy.deepcopy(value)
            self.raw[OVERRIDES_FIELD] = table
        else:
            for path in paths:
                _set_path(self.raw, path, copy.deepcopy(value), key, self.source)
                if len(path) == 2 and path[0] == "cuts" and path[1] in CUT_CHOICES and isinstance(self.raw["cuts"], dict):
                    for other in CUT_CHOICES:
                        if other != path[1]:
                            self.raw["cuts"].pop(other, None)


def _leaf_keys(tree: Any, raw: Any, prefix: tuple[str, ...], out: list[str]) -> None:
    if isinstance(tree, dict):
        for name, child in tree.items():
            _leaf_keys(child, raw.get(name) if isinstance(raw, dict) else None, prefix + (name,), out)
    elif tree == _LEAF:
        out.append(".".join(prefix))
    elif isinstance(raw, dict) and raw:  # an open mapping or the topology: what the file has
        for name, child in raw.items():
            _leaf_keys(None, child, prefix + (str(name),), out)
    elif tree == _OPEN:
        out.append(".".join(prefix) + ".<name>")
    else:
        out.append(".".join(prefix))


def _wildcard_forms(raw: Mapping[str, Any], prefix: tuple[str, ...]) -> list[str]:
    """``topology.links.*.up_bps`` for every field that several entries of a mapping share."""
    forms: list[str] = []
    for name, child in raw.items():
        if not isinstance(child, dict):
            continue
        records = [v for v in child.values() if isinstance(v, dict)]
        if len(records) >= 2:
            fields = dict.fromkeys(f for record in records for f in record if not isinstance(record[f], dict))
            forms += [".".join((*prefix, str(name), "*", str(f))) for f in fields]
        forms += _wildcard_forms(child, prefix + (str(name),))
    return forms


def _set_path(raw: dict[str, Any], path: tuple[str, ...], value: Any, key: str, source: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(source, ".".join(path[: i + 1]), "cannot set a key inside a non-mapping value")
        node = child
    node[path[-1]] = value


def spread_clients(value: Any, domains: Any, source: str) -> dict[str, Any]:
    """``clients=N``: N clients over the scenario's domains, the first ones taking the remainder."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(source, CLIENTS, f"expected a positive whole number, got {value!r}")
    if not isinstance(domains, dict) or not domains:
        raise ConfigError(source, CLIENTS, "the scenario has no domains to spread clients over")
    if value < len(domains):
        raise ConfigError(source, CLIENTS, f"{value} clients for {len(domains)} domains (expected at least one "
                                           "per domain; set domains.<name> to choose them one by one)")
    base, extra = divmod(value, len(domains))
    counts = {name: base + (1 if i < extra else 0) for i, name in enumerate(domains)}
    # A user dataset's entry is a mapping: only its client count changes.
    return {name: {**entry, "clients": counts[name]} if isinstance(entry, dict) else counts[name]
            for name, entry in domains.items()}


def cuts_section(text: str, value: Any, current: Any, source: str) -> dict[str, Any]:
    """``cuts=V``: a search, a policy, one cut for all (digits or a list), per-client cuts, or a
    whole section. Other ``cuts`` keys (not one of :data:`CUT_CHOICES`) are kept."""
    digits = cut_digits(text)
    if digits is not None:
        chosen: dict[str, Any] = {"fixed": digits}
    elif isinstance(value, str):
        chosen = {"search": value} if value in SEARCHES else {"policy": value}
    elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        chosen = {"per_client": value}
    elif isinstance(value, list):
        chosen = {"fixed": value}
    elif isinstance(value, dict):
        return value
    else:
        raise ConfigError(source, CUTS, f"expected exact, ga, a policy name or four cut digits, got {value!r}")
    kept = {k: v for k, v in current.items() if k not in CUT_CHOICES} if isinstance(current, dict) else {}
    return {**kept, **chosen}


KEYS_HELP = """\
keys (the same for --set and --vary):
  any dotted scenario key      training.batch_size, training.rounds, domains.mnist, model.width,
                               strategy.clusters, metrics.score_samples, seed ...
  topology.<key>               a key of the topology file: topology.links.device1.up_bps,
                               topology.server.clock_hz, topology.profiles.device3.clock_hz
  *                            every entry at that level: domains.*, topology.links.*.up_bps
aliases:
  clients=N                    N clients spread over the scenario's domains
  batch_size=B                 training.batch_size
  cuts=PLAN                    exact, ga, all-offload, all-local, full-model, mixed, or four cut
                               digits such as 0110 (one cut for every client)
  server.clock_hz, links.*.up_bps, profiles.X.clock_hz, shared.X.up_bps ...
                               a bare topology key is topology.<key>
values: YAML scalars, units allowed for topology values ("50 Mbit/s", "1.4 GHz", "5 ms");
--vary splits values at commas outside brackets (cuts=[0,1,1,0],0110 is two values).
An unknown key is refused with the valid keys near it; --list-keys prints them all."""
