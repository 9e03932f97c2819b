"""Measured leakage per cut for a privacy-constrained cut search, cached on disk.

The leakage audit (:mod:`p2pgan.privacy`) plays an honest-but-curious server against every cut at
the scenario's model, width, domains and seed; the search then treats cuts that exceed the
scenario's ``cuts.privacy`` budget as infeasible. The audit takes minutes, so its per-cut summary
is cached under the metrics cache (``metrics.cache_dir`` or ``~/.cache/p2pgan``), keyed by
everything that changes its numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from p2pgan.config.privacy import Leakage
from p2pgan.config.schema import Scenario
from p2pgan.data import load_domain
from p2pgan.model.segments import ClientCut
from p2pgan.privacy.audit import audit_initial
from p2pgan.run.evaluation import default_cache_dir
from p2pgan.sim.budgets import load_leakage

AUDIT_VERSION = 1
"""Bump when the audit's method changes, so cached tables are measured again."""


def leakage_cache_key(scenario: Scenario) -> str:
    facts = {
        "version": AUDIT_VERSION,
        "model": dataclasses.asdict(scenario.model_spec),
        "domains": sorted(scenario.domains),
        "data": {d: str(load_domain(d, "train", scenario.data.root, scenario.datasets.get(d)).source) for d in sorted(scenario.domains)},
        "seed": scenario.seed,
        "batch_size": scenario.training.batch_size,
        "audit": dataclasses.asdict(dataclasses.replace(scenario.privacy, enabled=False, all_cuts=True)),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def measured_leakage(scenario: Scenario, progress=None) -> dict[ClientCut, Leakage]:
    """Leakage of every cut (measured once, then read from the cache)."""
    folder = Path(scenario.metrics.cache_dir or default_cache_dir().parent) / "leakage"
    path = folder / f"{leakage_cache_key(scenario)}.json"
    if path.is_file():
        return load_leakage(path)
    options = dataclasses.replace(scenario.privacy, all_cuts=True)
    audit = audit_initial(scenario.model_spec, list(scenario.domains), (), options, scenario=scenario.name,
                          seed=scenario.seed, batch_size=scenario.training.batch_size,
                          data_root=scenario.data.root, progress=progress)
    table = {"".join(str(v) for v in row.cut.as_tuple()): {"ssim": row.ssim, "label_accuracy": row.label_accuracy}
             for row in audit.summary()}
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return load_leakage(path)
