"""The ``privacy:`` section of a scenario: whether and how hard to audit what the wire reveals.

Budgets are per domain. The defaults finish in a few minutes on 2 CPU cores at width 0.25 for one
domain; tests pass much smaller ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataclasses import dataclass as value
from typing import Optional

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.dataclasses import dataclass as pydantic_dataclass

from p2pgan.errors import ConfigError

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
# strict=True on every field: YAML reads yes/on as booleans, and a lax int would take them as 1.


@dataclass(config=STRICT)
class PrivacyOptions:
    enabled: bool = Field(default=False, strict=True)
    """Run the audit after training, on the trained weights."""
    samples: int = Field(default=256, ge=8, le=100_000, strict=True)
    """Private images per domain (drawn from the train split, which the clients hold)."""
    aux_samples: int = Field(default=1000, ge=16, le=100_000, strict=True)
    """The attacker's auxiliary images per domain, from the test split (no client holds it)."""
    decoder_epochs: int = Field(default=20, ge=1, le=10_000, strict=True)
    """Epochs of the inversion decoder over the auxiliary images."""
    probe_epochs: int = Field(default=30, ge=1, le=10_000, strict=True)
    """Epochs of the linear label probe over the auxiliary tensors."""
    dcor_samples: int = Field(default=256, ge=4, le=4096, strict=True)
    """Cap on the samples distance correlation uses (O(n²) time and memory: 4096 is ~0.5 GB)."""
    png_samples: int = Field(default=10, ge=1, le=32, strict=True)
    """Originals shown beside their reconstructions per domain in each cut's PNG."""
    all_cuts: bool = Field(default=False, strict=True)
    """Audit all 16 cuts, not only those the scenario uses."""


def parse_privacy_options(raw: Mapping[str, Any] | None, source: str, key: str = "privacy") -> PrivacyOptions:
    """``raw`` (the YAML mapping) -> :class:`PrivacyOptions`, or a one-line ``source:key: problem``."""
    if raw is None:
        return PrivacyOptions()
    if not isinstance(raw, Mapping):
        raise ConfigError(source, key, f"expected a mapping, got {raw!r}")
    try:
        return PrivacyOptions(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join([key, *(str(part) for part in error["loc"])])
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            allowed = ", ".join(PrivacyOptions.__pydantic_fields__)
            raise ConfigError(source, loc, f"unknown key (expected one of: {allowed})") from None
        raise ConfigError(source, loc, f"{error['msg']}, got {error.get('input')!r}") from None


@value(frozen=True)
class Leakage:
    """What a server infers from one cut: reconstruction SSIM and label-probe accuracy, in [0, 1]."""

    ssim: float
    label_accuracy: float


@pydantic_dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False), frozen=True)
class CutPrivacyBudget:
    """Upper bounds on what the server may infer; an omitted bound does not constrain.

    Numbers must be written as numbers (``strict``: YAML's ``yes`` or ``"0.3"`` are refused), as in
    the rest of the scenario schema."""

    max_ssim: Optional[float] = Field(default=None, ge=0, le=1, strict=True)
    max_label_accuracy: Optional[float] = Field(default=None, ge=0, le=1, strict=True)

    @property
    def constrains(self) -> bool:
        return self.max_ssim is not None or self.max_label_accuracy is not None

    def admits(self, leakage: Leakage) -> bool:
        return ((self.max_ssim is None or leakage.ssim <= self.max_ssim)
                and (self.max_label_accuracy is None or leakage.label_accuracy <= self.max_label_accuracy))

    def exceeded_by(self, leakage: Leakage) -> list[str]:
        """Which bounds ``leakage`` exceeds (``["max_ssim"]``, ...), for messages."""
        out = []
        if self.max_ssim is not None and leakage.ssim > self.max_ssim:
            out.append("max_ssim")
        if self.max_label_accuracy is not None and leakage.label_accuracy > self.max_label_accuracy:
            out.append("max_label_accuracy")
        return out

    def __str__(self) -> str:
        parts = [f"{key} {value:g}" for key, value in (("max_ssim", self.max_ssim),
                                                       ("max_label_accuracy", self.max_label_accuracy))
                 if value is not None]
        return ", ".join(parts) or "none"
