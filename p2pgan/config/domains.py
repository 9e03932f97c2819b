"""The ``domains:`` entries of a scenario: a built-in domain with its client count, or a dataset of
the user's own images.

.. code-block:: yaml

    domains:
      shapes:                        # any name that is not a built-in domain's
        clients: 3
        path: ../data/shapes32       # relative to the scenario file
        format: folder               # folder | npz | idx (optional: guessed from the path)
        image_size: 32               # 28 or 32; images of other sizes are resized
        channels: 3                  # 1 (grey) or 3 (RGB); images are converted
        classes: [circle, square, triangle, ...]   # label i is classes[i]

All domains of one scenario share one image shape and number of classes (the built-in domains are
28×28×1 with 10 classes), because their clients train one model. What the files hold is read when
the data is loaded (:mod:`p2pgan.data.user`); here only what can be checked without reading them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass as value
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass

BUILTIN_DOMAINS = ("mnist", "fashion-mnist", "kmnist", "glyphs")
USER_FORMATS = ("folder", "npz", "idx")
MAX_CLIENTS_PER_DOMAIN = 10_000
MAX_CLASSES = 100
# A domain's name becomes file names (samples/<name>.png, the judge's cache file) and is joined
# with "+" for a pooled client, so it keeps to a safe alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IDX_HINT = re.compile(r"idx\d-ubyte")


@value(frozen=True)
class DataShape:
    """What every domain of a scenario must share: image channels, image side, number of classes."""

    channels: int
    size: int
    num_classes: int

    def __str__(self) -> str:
        return f"{self.size}x{self.size}x{self.channels} images with {self.num_classes} classes"


BUILTIN_SHAPE = DataShape(channels=1, size=28, num_classes=10)


@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class UserDomain:
    """A domain read from the user's files (see the module doc)."""

    clients: Annotated[int, Field(ge=1, le=MAX_CLIENTS_PER_DOMAIN, strict=True)]
    path: Path
    """A folder of per-class image subfolders (optionally under ``train/`` and ``test/``), an
    ``.npz`` file, or a folder of IDX files; relative to the scenario file."""
    image_size: Literal[28, 32]
    channels: Literal[1, 3]
    classes: tuple[str, ...]
    """Class names in label order (for a folder: the subfolder names)."""
    format: Optional[Literal["folder", "npz", "idx"]] = None
    """Guessed from ``path`` when omitted: ``*.npz`` -> npz, a folder with IDX files -> idx, else folder."""
    test_fraction: float = Field(default=0.2, gt=0, lt=1, strict=True)
    """Share of each class held out as the test split when the files have no test split."""

    @field_validator("clients", "image_size", "channels", mode="before")
    @classmethod
    def _not_boolean(cls, number: object) -> object:
        if isinstance(number, bool):
            raise ValueError(f"expected a number, got {number!r} (YAML reads yes/no/on/off as booleans)")
        return number

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, names: object) -> object:
        if not isinstance(names, (list, tuple)):
            raise ValueError(f"expected a list of class names in label order, got {names!r}")
        out = []
        for name in names:
            if isinstance(name, bool) or not isinstance(name, (str, int)):
                raise ValueError(f"class names must be text, got {name!r}")
            text = str(name)
            if not text.strip() or not text.isprintable():
                raise ValueError(f"class names must be non-empty printable text, got {text!r}")
            out.append(text)
        if not 2 <= len(out) <= MAX_CLASSES:
            raise ValueError(f"expected 2 to {MAX_CLASSES} class names, got {len(out)}")
        repeated = sorted({n for n in out if out.count(n) > 1})
        if repeated:
            raise ValueError(f"class names must differ, {', '.join(map(repr, repeated))} repeats")
        return tuple(out)

    @property
    def shape(self) -> DataShape:
        return DataShape(self.channels, self.image_size, len(self.classes))


DomainEntry = Union[int, UserDomain]


def domain_entry(name: str, entry: object) -> object:
    """One raw ``domains:`` value -> a client count or a :class:`UserDomain` (before field checks).

    A mapping is validated here, so its errors name ``domains.<name>.<key>`` (the ``@`` prefix
    tells the loader which key to blame) rather than pydantic's union branches.
    """
    if isinstance(entry, UserDomain):
        return entry
    if isinstance(entry, Mapping):
        try:
            return UserDomain(**entry)
        except ValidationError as exc:
            raise ValueError(_entry_problem(name, exc)) from None
        except TypeError as exc:  # keys that are not text
            raise ValueError(f"@{name} {exc}") from None
    if isinstance(entry, bool) or not isinstance(entry, int):
        raise ValueError(f"{name} needs a whole number of clients, got {entry!r} (or, for your own data, "
                         "a mapping {clients, path, image_size, channels, classes})")
    return entry


def _entry_problem(name: str, exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    key = ".".join([name, *loc[:1]])
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"@{key} unknown key (expected one of: {', '.join(UserDomain.__pydantic_fields__)})"
    if error["type"] in ("missing", "missing_argument"):
        return f"@{key} required key is missing (a dataset needs clients, path, image_size, channels, classes)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] != "value_error" and "input" in error:
        message += f", got {error['input']!r}"[:80]
    return f"@{key} {message}"


def check_domain_names(domains: Mapping[str, DomainEntry]) -> None:
    """Names and counts, before paths: unknown built-ins, unsafe names, client bounds."""
    if not domains:
        raise ValueError("at least one domain is needed (expected e.g. {mnist: 4})")
    for name, entry in domains.items():
        if isinstance(entry, UserDomain):
            if name in BUILTIN_DOMAINS:
                raise ValueError(f"@{name} {name} is a built-in domain; give your dataset another name")
            if not _NAME.fullmatch(name):
                raise ValueError(f"@{name} a dataset's name must be 1-64 letters, digits, '_', '.' or '-' "
                                 f"starting with a letter or digit, got {name!r}")
            continue
        if name not in BUILTIN_DOMAINS:
            raise ValueError(f"unknown domain {name!r} (expected one of: {', '.join(BUILTIN_DOMAINS)}, "
                             "or your own dataset as {clients, path, image_size, channels, classes})")
        if entry < 1:
            raise ValueError(f"{name} needs at least 1 client, got {entry}")
        if entry > MAX_CLIENTS_PER_DOMAIN:
            raise ValueError(f"{name} asks for {entry} clients (expected at most {MAX_CLIENTS_PER_DOMAIN})")


def resolve_user_domains(domains: dict[str, DomainEntry], base: Path) -> None:
    """Make every dataset's path absolute (relative to ``base``, the scenario file's folder), check
    it exists, settle its format, and check that all domains share one :class:`DataShape`.

    Updates ``domains`` in place (it is the scenario's own, freshly validated mapping).
    """
    for name, entry in domains.items():
        if isinstance(entry, UserDomain):
            domains[name] = _resolved(name, entry, base)
    shapes = {name: entry.shape if isinstance(entry, UserDomain) else BUILTIN_SHAPE
              for name, entry in domains.items()}
    first = next(iter(shapes))
    for name, shape in shapes.items():
        if shape != shapes[first]:
            blamed = name if isinstance(domains[name], UserDomain) else first
            other = first if blamed == name else name
            raise ValueError(f"@domains.{blamed} its {shapes[blamed]} differ from {other}'s {shapes[other]} "
                             "(all domains of a scenario share one image shape and class count)")


def data_shape(domains: Mapping[str, DomainEntry]) -> DataShape:
    """The shape every domain shares (checked by :func:`resolve_user_domains`)."""
    for entry in domains.values():
        if isinstance(entry, UserDomain):
            return entry.shape
    return BUILTIN_SHAPE


def _resolved(name: str, entry: UserDomain, base: Path) -> UserDomain:
    path = Path(entry.path).expanduser()
    path = path if path.is_absolute() else (base / path).resolve()
    key = f"@domains.{name}.path"
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{key} unusable path {str(path)[:80]!r} ({exc})") from None
    if not exists:
        raise ValueError(f"{key} dataset not found: {path}")
    fmt = entry.format or _guess_format(path, is_dir)
    if fmt is None:
        raise ValueError(f"{key} {path} is a file but not an .npz (expected a folder of class subfolders, "
                         "an .npz file, or a folder of IDX files)")
    if (fmt == "npz") == is_dir:
        expected = "an .npz file" if fmt == "npz" else "a folder"
        raise ValueError(f"@domains.{name}.format {fmt} needs {expected}, but {path} is "
                         f"{'a folder' if is_dir else 'a file'}")
    return UserDomain(clients=entry.clients, path=path, image_size=entry.image_size, channels=entry.channels,
                      classes=entry.classes, format=fmt, test_fraction=entry.test_fraction)


def _guess_format(path: Path, is_dir: bool) -> Optional[str]:
    if not is_dir:
        return "npz" if path.suffix.lower() == ".npz" else None
    try:
        names = [child.name for child in path.iterdir() if child.is_file()]
    except OSError:
        return "folder"  # the loader says what is wrong with it
    return "idx" if any(_IDX_HINT.search(n) for n in names) else "folder"


def user_domains(domains: Mapping[str, Any]) -> dict[str, UserDomain]:
    return {name: entry for name, entry in domains.items() if isinstance(entry, UserDomain)}


def client_counts(domains: Mapping[str, DomainEntry]) -> dict[str, int]:
    return {name: entry.clients if isinstance(entry, UserDomain) else int(entry) for name, entry in domains.items()}


__all__ = ["BUILTIN_DOMAINS", "BUILTIN_SHAPE", "DataShape", "DomainEntry", "USER_FORMATS", "UserDomain",
           "check_domain_names", "client_counts", "data_shape", "domain_entry", "resolve_user_domains",
           "user_domains"]
