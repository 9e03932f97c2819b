"""``privacy: {enabled: true}``: the leakage audit, run at the end of training on the trained weights.

Each domain is audited with the generator and discriminator of the cluster that speaks for it
(the same choice the metrics make), over the cuts the run's clients actually used. Strategies
whose clients send no activations (every block local) have nothing for the audit to play.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pgan.bus import EventBus
from p2pgan.plan.nodedata import PreparedRun, client_domains, speaking_clusters
from p2pgan.plan.program import Program, U_SHAPED
from p2pgan.privacy.audit import audit_trained
from p2pgan.privacy.files import write_audit
from p2pgan.protocol.events import LogEvent, RoundAggregated


class PrivacyExtension:
    name = "privacy"

    def __init__(self, prepared: PreparedRun, bus: EventBus, directory: Path) -> None:
        self._prepared = prepared
        self._bus = bus
        self._directory = Path(directory)
        self._last: RoundAggregated | None = None

    def round_section(self, event: RoundAggregated) -> dict[str, Any]:
        self._last = event
        return {}

    def finish(self, status: str) -> dict[str, Any]:
        if status != "completed" or self._last is None:
            return {"privacy": {"note": f"run {status}: audit skipped"}}
        prepared, scenario = self._prepared, self._prepared.scenario
        cuts = sorted({c.cut for c in prepared.plan.clients}, key=lambda cut: cut.as_tuple())
        result = self._last.result
        speakers = speaking_clusters(result.clusters, client_domains(prepared.records), prepared.domains)
        weights = {domain: result.cluster_models[cluster] for domain, cluster in speakers.items()}
        audit = audit_trained({}, prepared.setup.model, list(prepared.domains), cuts, scenario.privacy,
                              domain_weights=weights, scenario=scenario.name, seed=scenario.seed,
                              batch_size=scenario.training.batch_size, data_root=scenario.data.root,
                              progress=lambda line: self._bus.publish(LogEvent(f"privacy: {line}")))
        files = write_audit(audit, self._directory / "privacy")
        return {"privacy": {
            "files": {kind: str(path.relative_to(self._directory)) for kind, path in files.items()
                      if isinstance(path, Path)},
            "cuts": [{"cut": list(row.cut.as_tuple()), "ssim": row.ssim, "psnr": row.psnr,
                      "label_accuracy": row.label_accuracy, "chance": row.chance} for row in audit.summary()],
        }}


def privacy_extension(prepared: PreparedRun, bus: EventBus, directory: Path, program: Program) -> PrivacyExtension | None:
    if not prepared.scenario.privacy.enabled:
        return None
    if program is not U_SHAPED or all(c.full_local for c in prepared.plan.clients):
        bus.publish(LogEvent("privacy audit skipped: this strategy's clients send no split activations", "warning"))
        return None
    return PrivacyExtension(prepared, bus, directory)
