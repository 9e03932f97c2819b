"""Privacy budgets for the cut search: what each cut leaks, and how much a scenario allows.

A :class:`Leakage` is what an honest-but-curious server infers from one cut's traffic (measured by
the leakage audit, :mod:`p2pgan.privacy`): the SSIM of its best reconstruction of a client's
private images, and the accuracy of its best probe for the client's labels. A cut whose leakage
exceeds a :class:`CutPrivacyBudget` is infeasible for the search. Training the whole model on
the device (``full-local``) sends no activation or gradient, so it leaks nothing of this kind.

Scenario syntax (the section class is parsed once, at the edge)::

    cuts: {search: exact, privacy: {max_ssim: 0.3, max_label_accuracy: 0.5}}

The two value types live in :mod:`p2pgan.config.privacy`, so the scenario schema holds them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from p2pgan.config.privacy import CutPrivacyBudget, Leakage
from p2pgan.config.yamlfile import read_text_file
from p2pgan.errors import ConfigError
from p2pgan.model.segments import ClientCut


NO_LEAKAGE = Leakage(0.0, 0.0)
"""Full-local training sends no activation or gradient during iterations."""

LeakageTable = Mapping[ClientCut, Leakage]


NO_BUDGET = CutPrivacyBudget()


def parse_budget(raw: Any, source: str, key: str = "cuts.privacy") -> CutPrivacyBudget:
    """``raw`` (a mapping from YAML or flags) as a budget; bad input -> ``source:key.field: problem``."""
    if raw is None:
        return NO_BUDGET
    if not isinstance(raw, Mapping):
        raise ConfigError(source, key, f"expected a mapping such as {{max_ssim: 0.3}}, got {raw!r}")
    try:
        return CutPrivacyBudget(**dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        problem = "unknown key" if error["type"] in ("unexpected_keyword_argument", "extra_forbidden") else (
            f"{error['msg']}, got {error['input']!r}")
        raise ConfigError(source, f"{key}.{field}" if field else key, problem) from None
    except TypeError as exc:  # a key that is not a string
        raise ConfigError(source, key, str(exc)) from None


def budget_from_flags(max_ssim: str | None, max_label_accuracy: str | None,
                      base: CutPrivacyBudget = NO_BUDGET) -> CutPrivacyBudget:
    """``--max-ssim`` / ``--max-label-accuracy`` (text from the command line) over ``base``."""
    values = {"max_ssim": base.max_ssim, "max_label_accuracy": base.max_label_accuracy}
    for name, text in (("max_ssim", max_ssim), ("max_label_accuracy", max_label_accuracy)):
        if text is None:
            continue
        flag = "--" + name.replace("_", "-")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 <= value <= 1:
            raise ConfigError(flag, "", f"expected a number in [0, 1], got {text!r}")
        values[name] = value
    return CutPrivacyBudget(**values)


def _cut_of(text: str) -> ClientCut | None:
    digits = [ch for ch in str(text) if ch.isdigit()]
    return ClientCut.of([int(d) for d in digits]) if len(digits) == 4 else None


def _fraction(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(source, key, f"expected a number in [0, 1], got {value!r}")
    return float(value)


def leakage_from_mapping(raw: Any, source: str) -> dict[ClientCut, Leakage]:
    """A leakage table from JSON-like data.

    Accepts the audit's ``privacy.json`` (its ``summary`` list of ``{cut, ssim, label_accuracy}``
    rows) or a plain mapping ``{"0110": {"ssim": .., "label_accuracy": ..}, ...}``.
    """
    if isinstance(raw, Mapping) and "summary" in raw:
        rows = raw["summary"]
        if not isinstance(rows, list):
            raise ConfigError(source, "summary", "expected a list of {cut, ssim, label_accuracy} rows")
        items = [(row.get("cut") if isinstance(row, Mapping) else None, row, f"summary.{i}")
                 for i, row in enumerate(rows)]
    elif isinstance(raw, Mapping):
        items = [(cut, row, str(cut)) for cut, row in raw.items()]
    else:
        raise ConfigError(source, "", "expected a mapping from cut to {ssim, label_accuracy} (or privacy.json)")
    table: dict[ClientCut, Leakage] = {}
    for text, row, key in items:
        cut = _cut_of(text) if text is not None else None
        if cut is None:
            raise ConfigError(source, key, f"expected a cut such as 0110 or (0,1,1,0), got {text!r}")
        if not isinstance(row, Mapping):
            raise ConfigError(source, key, "expected {ssim, label_accuracy}")
        for name in ("ssim", "label_accuracy"):
            if name not in row:
                raise ConfigError(source, f"{key}.{name}", "required key is missing")
        table[cut] = Leakage(_fraction(row["ssim"], source, f"{key}.ssim"),
                             _fraction(row["label_accuracy"], source, f"{key}.label_accuracy"))
    return table


def load_leakage(path: Path) -> dict[ClientCut, Leakage]:
    """A leakage table from a JSON file (see :func:`leakage_from_mapping`)."""
    try:
        raw = json.loads(read_text_file(Path(path), "leakage"))  # UTF-8, bounded, one-line errors
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), "", f"malformed JSON (line {exc.lineno}: {exc.msg})") from None
    return leakage_from_mapping(raw, str(path))
