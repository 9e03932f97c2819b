"""Reading YAML the project trusts: bounded, strict, and with one-line errors naming the file.

Every scenario, topology and ``--set`` value goes through :class:`StrictLoader`, which refuses what
PyYAML would otherwise accept silently or die on with a traceback:

* a file that is not UTF-8 text, or larger than :data:`MAX_FILE_BYTES` (``/dev/zero`` must not hang);
* a mapping that repeats a key (PyYAML keeps the last one without a word);
* a number that is not finite (``.inf``, ``-.inf``, ``.nan``, ``1e999``) anywhere in the file;
* nesting deeper than :data:`MAX_DEPTH` (PyYAML's composer recurses: a few hundred ``[`` end in
  ``RecursionError``);
* aliases that expand to more than :data:`MAX_VALUES` values ("billion laughs": a few lines that
  every later walk over the data, pydantic's included, would expand exponentially), and aliases
  that refer to their own ancestor (a cycle no walk ends on).

Numbers with an exponent and no dot (``1e-4``) are floats, as in YAML 1.2 (YAML 1.1 makes them
strings). The checks run on the composed node graph, before any Python object is built, so they cost one
pass over the file's own nodes however the aliases multiply them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from p2pgan.errors import ConfigError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Scenario and topology files are a few KiB; anything this large is a mistake."""
MAX_DEPTH = 64
"""Nesting bound, counting aliased content where it is used (real files nest fewer than 8 levels)."""
MAX_VALUES = 100_000
"""Bound on the number of values the document holds once aliases are expanded."""

_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$")


class _Refused(Exception):
    """Raised inside the loader; turned into a :class:`ConfigError` with the file name outside."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader whose composer bounds nesting and alias expansion (see the module docstring).

    The pure-Python loader on purpose: libyaml's composer recurses in C, where no bound can be put.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # YAML 1.1 reads ``1e-4`` and ``2E5`` (an exponent without a dot) as strings, and the strict
        # numeric fields would refuse them; YAML 1.2 and every user read them as numbers.
        if kind is ScalarNode and implicit[0] and _EXPONENT_FLOAT.match(value):
            return _FLOAT_TAG
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._expanded:  # its anchor is still open: the alias is inside it
                raise _Refused(_line(mark), "alias refers to its own enclosing anchor (a cycle)")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(_line(self.peek_event().start_mark), f"nested deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        values, depth = 1, 1
        for child in _children(node):
            child_values, child_depth = self._expanded[id(child)]
            values += child_values
            depth = max(depth, child_depth + 1)
        if values > MAX_VALUES:
            raise _Refused(_line(node.start_mark),
                           f"expands to more than {MAX_VALUES} values (aliases repeating aliases?)")
        if depth > MAX_DEPTH:
            raise _Refused(_line(node.start_mark), f"nested deeper than {MAX_DEPTH} levels once aliases expand")
        self._expanded[id(node)] = (values, depth)
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else ""


def _check_values(root: Node, loader: StrictLoader, show_lines: bool = True) -> None:
    """Refuse repeated keys and non-finite numbers, naming the dotted key where each sits.

    Each node is checked once (aliased content is shared, not copied), so this is linear in the
    file; the path reported is the first one that reaches a node.
    """
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            if node.tag == _FLOAT_TAG and not math.isfinite(loader.construct_yaml_float(node)):
                at = f" at {_line(node.start_mark)}" if show_lines else ""
                raise _Refused(path or _line(node.start_mark),
                               f"not a finite number ({node.value}{at}; expected a finite number)")
        elif isinstance(node, SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            children = []
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # ``<<: *base``: the merged keys live at this level
                    child_path = path
                elif isinstance(key_node, ScalarNode):
                    key = loader.construct_object(key_node, deep=True)
                    child_path = f"{path}.{key}" if path else str(key)
                    line = key_node.start_mark.line + 1
                    if key in first_line:
                        raise _Refused(child_path, f"duplicate key at line {line} (first at line "
                                                   f"{first_line[key]}; a key may appear once)")
                    first_line[key] = line
                else:
                    child_path = f"{path}.<key>" if path else "<key>"
                    stack.append((key_node, child_path))
                children.append((value_node, child_path))
            stack.extend(reversed(children))


def parse_yaml(text: str, source: str, key: str = "") -> Any:
    """The data in ``text`` after the strict checks; errors name ``source`` and the offending key
    (prefixed by ``key`` when ``text`` is the value of that key, as in ``--set key=text``)."""
    try:
        loader = StrictLoader(text)  # the reader refuses control characters already here
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_values(node, loader, show_lines=not key)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        where = key or f"line {text.count(chr(10), 0, exc.position) + 1}"
        raise ConfigError(source, where, f"malformed YAML: character #x{exc.character:04x} is not allowed "
                                         "(control characters must be escaped in a double-quoted string)") from None
    except _Refused as exc:
        where = exc.key
        if key:  # ``--set key=text``: the text's own paths hang below ``key``, its lines mean nothing
            where = key if not where or where.startswith("line ") else \
                f"{key}{'' if where.startswith('[') else '.'}{where}"
        raise ConfigError(source, where, exc.problem) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = key or (_line(mark) if mark is not None else "")
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, where, f"malformed YAML: {problem}") from None
    except RecursionError:  # a safety net only: the depth bound stops nesting well before this
        raise ConfigError(source, key, f"nested too deeply (more than {MAX_DEPTH} levels)") from None


def read_text_file(path: Path, what: str) -> str:
    """A small UTF-8 text file's contents, or a one-line :class:`ConfigError`."""
    source = str(path)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read {what} file ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise ConfigError(source, "", f"cannot read {what} file ({exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(source, "", f"{what} file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(source, f"line {line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                                  f"{exc.start}; save the file as UTF-8)") from None


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of ``path``; ``what`` names the kind of file in error messages."""
    source = str(path)
    raw = parse_yaml(read_text_file(path, what), source)
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping of {what} keys at the top level")
    return raw
