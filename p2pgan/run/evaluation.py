"""Metrics during and after a run (docs/design.md §1.5), written into the results folder.

:func:`metrics_extension` gives the session an extension for the process that hosts the server.
The round closer (:mod:`p2pgan.run.closer`) asks it for each round's section, off the event
loop; every ``metrics.every`` rounds and at the last round it:

* builds each domain's generator from the round's ``cluster_models``. The cluster that speaks for
  a domain is the one holding most of that domain's clients (lowest cluster id on ties); a client
  whose record names several domains (``"mnist+fashion-mnist"``: the centralized baseline's pooled
  client) votes for each of them;
* computes the generation score over ``metrics.score_samples`` samples with the domain's judge
  classifier (the small CNN trained on the domain's real train split, cached on disk keyed by
  the data and the seed: ``metrics.cache_dir``, default ``$XDG_CACHE_HOME/p2pgan/classifiers`` or
  ``~/.cache/p2pgan/classifiers``) and the Fréchet distance between the judge's penultimate
  features of the real test split and of those samples, plus the adjusted Rand index of the
  round's clusters against the true domains;
* appends them to ``metrics.csv`` and ``metrics.jsonl``, writes ``samples/round-<r>/<domain>.png``
  and redraws ``gen_scores.png``; its section ``{"metrics": {domain: {"gen_score", "fid"}},
  "ari": ...}`` goes into the round's ``RoundClosed`` record, so ``rounds.jsonl`` and the live
  view carry them.

When the run completes, the returned finisher evaluates the last round's generators in full —
generation score, FID, and the classification utility (a fresh CNN trained only on
``metrics.utility_samples`` generated labelled samples, tested on the real test split: accuracy,
macro precision, recall, F1 and macro FPR, in %) — and writes ``final_metrics.json`` and
``final_metrics.csv``; the same numbers go into ``summary.json`` under ``"metrics"``.

Metrics never change training: every random draw comes from generators seeded from the scenario
seed and the domain (:func:`p2pgan.metrics.derive_seed`), model construction happens inside
``fork_rng``, and nothing is sent to any node. A round's evaluation runs on the round closer's
worker thread while training goes on, so no peer waits for it; the judges are prepared before
the run starts.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pgan.bus import EventBus
from p2pgan.plan.nodedata import client_domains, speaking_clusters
from p2pgan.protocol.events import FinalEvaluation, LogEvent, RoundAggregated
from p2pgan.run.steps import Progress, preparation_step

CSV_FIELDS = ("round", "domain", "cluster", "gen_score", "fid", "ari")
FINAL_FIELDS = ("domain", "cluster", "gen_score", "fid", "accuracy", "precision", "recall", "f1", "fpr",
                "real_accuracy")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2pgan" / "classifiers"


def clustering_ari(clusters: Mapping[str, int], domains_of: Mapping[str, tuple[str, ...]]) -> float | None:
    """ARI of the clusters against the true domains; ``None`` when undefined (pooled or < 2 clients)."""
    from p2pgan.metrics import adjusted_rand

    if len(clusters) < 2 or any(len(domains_of[c]) != 1 for c in clusters):
        return None
    return adjusted_rand(dict(clusters), {c: domains_of[c][0] for c in clusters})


class RunEvaluator:
    """The observer behind :func:`metrics_extension` (see the module doc)."""

    def __init__(self, prepared, bus: EventBus, directory: Path, fresh: bool = True) -> None:
        from p2pgan.metrics import ClassifierCache, MetricsConfig

        scenario = prepared.scenario
        spec = scenario.metrics
        self.prepared = prepared
        self.bus = bus
        self.directory = Path(directory)
        self.spec = spec
        self.domains = tuple(prepared.domains)
        self.domains_of = client_domains(prepared.records)
        cache_dir = Path(spec.cache_dir) if spec.cache_dir is not None else default_cache_dir()
        self.config = MetricsConfig(score_samples=spec.score_samples, utility_samples=spec.utility_samples,
                                    classifier_epochs=spec.classifier_epochs, utility_epochs=spec.utility_epochs,
                                    seed=scenario.seed, cache_dir=str(cache_dir),
                                    num_classes=scenario.data_shape.num_classes)
        self._cache = ClassifierCache(cache_dir)
        self.rounds = prepared.plan.schedule.rounds
        self.history: dict[str, dict[int, float]] = {d: {} for d in self.domains}
        self.per_round: list[dict[str, Any]] = []
        self.last_event: RoundAggregated | None = None
        self.disabled_reason: str | None = None
        self._disabled_round: int | None = None
        self._judges: dict[str, Any] = {}
        self._tests: dict[str, Any] = {}
        self._started = time.perf_counter()
        # Rounds are evaluated on the closer's thread; a checkpoint reads the history on the loop's.
        self._lock = threading.Lock()
        if fresh:  # a resumed run continues the files (cut back to its checkpoint) instead
            for stale in ("metrics.csv", "metrics.jsonl", "final_metrics.json", "final_metrics.csv", "gen_scores.png"):
                (self.directory / stale).unlink(missing_ok=True)

    # -- data and judges ----------------------------------------------------------------------

    def prepare(self, progress: Progress | None = None) -> None:
        """Load every domain's test split and judge classifier now, before any node starts
        (``progress`` is told each domain's step).

        Training a judge takes much longer than scoring a round; done lazily inside the first
        evaluated round it would stall every node past the transport's receive timeout.
        """
        started = time.perf_counter()
        for domain in self.domains:
            with preparation_step(progress, f"judge {domain}") as step:
                self.test_split(domain)
                trained = self._cache.trained
                self.judge(domain)
                step.detail = (f"trained ({self.config.classifier_epochs} epochs), cached"
                               if self._cache.trained > trained else "from the cache")
        took = time.perf_counter() - started
        if took > 1.0:
            self.bus.publish(LogEvent(f"judge classifiers ready in {took:.1f}s (cache {self.config.cache_dir})"))

    def judge(self, domain: str):
        if domain not in self._judges:
            from p2pgan.data import load_domain
            from p2pgan.metrics import domain_classifier

            scenario = self.prepared.scenario
            train = load_domain(domain, "train", scenario.data.root, scenario.datasets.get(domain))
            self._judges[domain] = domain_classifier(domain, train, self.config, cache=self._cache)
        return self._judges[domain]

    def test_split(self, domain: str):
        if domain not in self._tests:
            from p2pgan.data import load_domain

            scenario = self.prepared.scenario
            self._tests[domain] = load_domain(domain, "test", scenario.data.root, scenario.datasets.get(domain))
        return self._tests[domain]

    def generator(self, cluster_models: Mapping[int, Any], cluster: int):
        from p2pgan.model.assemble import AssembledGenerator

        return AssembledGenerator(self.prepared.setup.model, cluster_models[cluster])

    # -- per round ----------------------------------------------------------------------------

    name = "metrics"

    def round_section(self, event: RoundAggregated) -> dict[str, Any]:
        """Every ``metrics.every`` rounds and at the last: generation score, FID, ARI (off the loop)."""
        self.last_event = event
        if self.disabled_reason is not None:
            return {}
        if event.round % self.spec.every and event.round != self.rounds:
            return {}
        try:
            return self.evaluate_round(event)
        except Exception as exc:  # never let evaluation kill training
            with self._lock:
                self.disabled_reason = f"{type(exc).__name__}: {exc}"
                self._disabled_round = event.round
            (self.directory / "metrics_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            return {"log": [("error", f"metrics disabled after an error in round {event.round}: "
                                      f"{self.disabled_reason}")]}

    def evaluate_round(self, event: RoundAggregated) -> dict[str, Any]:
        from p2pgan.metrics import evaluate_domain, plot_generation_scores, save_image_grid

        result = event.result
        speakers = speaking_clusters(result.clusters, self.domains_of, self.domains)
        ari = clustering_ari(result.clusters, self.domains_of)
        per_domain: dict[str, dict[str, Any]] = {}
        per_class = self.prepared.scenario.output.grid_samples_per_class
        for domain in self.domains:
            cluster = speakers[domain]
            gen = self.generator(result.cluster_models, cluster)
            m = evaluate_domain(domain, gen, gen.z_dim, test=self.test_split(domain), config=self.config,
                                classifier=self.judge(domain), utility=False, fid=True)
            per_domain[domain] = {"cluster": cluster, "gen_score": m.gen_score, "fid": m.fid}
            with self._lock:
                self.history[domain][event.round] = m.gen_score
            labels, z = gen.sample_grid_inputs(per_class, self.prepared.scenario.seed)
            save_image_grid(gen(labels, z), self.directory / "samples" / f"round-{event.round}" / f"{domain}.png",
                            nrow=per_class)
        record = {"round": event.round, "wall_s": round(time.perf_counter() - self._started, 3), "ari": ari,
                  "domains": per_domain}
        with self._lock:
            self.per_round.append(record)
        self._append_csv(event.round, per_domain, ari)
        with (self.directory / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        plot_generation_scores(self.history, self.directory / "gen_scores.png")
        shown = " ".join(f"{d}={v['gen_score']:.2f}" for d, v in per_domain.items())
        section: dict[str, Any] = {
            "metrics": {d: {"gen_score": v["gen_score"], "fid": v["fid"]} for d, v in per_domain.items()},
            "log": [("info", f"round {event.round} generation score {shown}"
                             + (f" ARI={ari:.2f}" if ari is not None else ""))],
        }
        if ari is not None:
            section["ari"] = ari
        return section

    def _append_csv(self, round_: int, per_domain: Mapping[str, Mapping[str, Any]], ari: float | None) -> None:
        path = self.directory / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(CSV_FIELDS)
            for domain, values in per_domain.items():
                writer.writerow([round_, domain, values["cluster"], _fmt(values["gen_score"]), _fmt(values["fid"]),
                                 _fmt(ari)])

    # -- checkpoints (run/checkpoint.py) ------------------------------------------------------

    def checkpoint_round(self, round_: int) -> tuple[dict[str, Any], None]:
        """The metric history up to ``round_`` (later rounds may be in evaluation meanwhile)."""
        with self._lock:
            disabled = (self.disabled_reason if self._disabled_round is not None and self._disabled_round <= round_
                        else None)
            return {
                "per_round": [record for record in self.per_round if record["round"] <= round_],
                "history": {d: {str(r): v for r, v in h.items() if r <= round_} for d, h in self.history.items()},
                "disabled": None if disabled is None else {"round": self._disabled_round, "reason": disabled},
            }, None

    def restore(self, state, journal) -> None:
        with self._lock:
            self.per_round = [dict(record) for record in state["per_round"]]
            self.history = {d: {} for d in self.domains}
            for domain, scores in state["history"].items():
                self.history.setdefault(domain, {}).update({int(r): float(v) for r, v in scores.items()})
            disabled = state.get("disabled")
            if disabled:
                self.disabled_reason, self._disabled_round = str(disabled["reason"]), int(disabled["round"])
            if self.per_round:  # metrics.jsonl's wall_s goes on from where the run stopped
                self._started = time.perf_counter() - float(self.per_round[-1].get("wall_s", 0.0))

    # -- at the end ---------------------------------------------------------------------------

    def finish(self, status: str) -> dict[str, Any]:
        event = self.last_event
        if event is None:
            return {}
        if status != "completed" or self.disabled_reason is not None:
            note = self.disabled_reason or f"run {status}: final metrics skipped"
            return {"metrics": {"round": self.per_round[-1]["round"] if self.per_round else None,
                                "per_round_last": self.per_round[-1] if self.per_round else None, "note": note}}
        self.bus.publish(FinalEvaluation("started", event.round))
        started = time.perf_counter()
        try:
            final = self.final_metrics(event)
        except Exception as exc:
            (self.directory / "metrics_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            problem = f"final metrics failed: {type(exc).__name__}: {exc}"
            self.bus.publish(FinalEvaluation("failed", event.round, seconds=time.perf_counter() - started,
                                             detail=problem))
            self.bus.publish(LogEvent(problem, "error"))
            return {"metrics": {"note": problem}}
        self.bus.publish(FinalEvaluation("done", event.round, final["domains"], final["ari"],
                                         time.perf_counter() - started))
        # One record (the table's lines together), so a log view shows it as one entry.
        self.bus.publish(LogEvent(format_final_table(final)))
        return {"metrics": final}

    def final_metrics(self, event: RoundAggregated) -> dict[str, Any]:
        from p2pgan.metrics import evaluate_domain

        result = event.result
        speakers = speaking_clusters(result.clusters, self.domains_of, self.domains)
        domains: dict[str, dict[str, Any]] = {}
        for domain in self.domains:
            gen = self.generator(result.cluster_models, speakers[domain])
            test = self.test_split(domain)
            judge = self.judge(domain)
            m = evaluate_domain(domain, gen, gen.z_dim, test=test, config=self.config, classifier=judge,
                                utility=self.spec.utility, fid=True)
            row = {"cluster": speakers[domain], **{k: v for k, v in m.to_json().items() if k != "domain"}}
            row["real_accuracy"] = 100.0 * judge.accuracy(test.images, test.labels)
            domains[domain] = row
        final = {
            "round": event.round,
            "strategy": self.prepared.scenario.strategy.name,
            "ari": clustering_ari(result.clusters, self.domains_of),
            "clusters": dict(result.clusters),
            "config": {"score_samples": self.config.score_samples, "utility_samples": self.config.utility_samples,
                       "classifier_epochs": self.config.classifier_epochs,
                       "utility_epochs": self.config.utility_epochs, "utility": self.spec.utility},
            "domains": domains,
        }
        (self.directory / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n", encoding="utf-8")
        with (self.directory / "final_metrics.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(FINAL_FIELDS)
            for domain, row in domains.items():
                writer.writerow([domain] + [_fmt(row.get(k)) for k in FINAL_FIELDS[1:]])
        return final


def format_final_table(final: Mapping[str, Any]) -> str:
    """The final per-domain table as plain text (also used by ``p2pgan compare``)."""
    header = ["domain", "cluster", "gen", "FID", "acc%", "prec%", "rec%", "F1%", "FPR%", "real acc%"]
    rows = []
    for domain, row in final.get("domains", {}).items():
        rows.append([domain, str(row.get("cluster", "")), _num(row.get("gen_score")), _num(row.get("fid")),
                     _num(row.get("accuracy")), _num(row.get("precision")), _num(row.get("recall")),
                     _num(row.get("f1")), _num(row.get("fpr")), _num(row.get("real_accuracy"))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["final metrics (round {}{}):".format(final.get("round"),
                                                 f", ARI {final['ari']:.3f}" if final.get("ari") is not None else "")]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _fmt(value: Any) -> str:
    return "" if value is None else repr(round(float(value), 6))


def metrics_extension(prepared, bus: EventBus, directory: Path, fresh: bool = True,
                      progress: Progress | None = None) -> RunEvaluator | None:
    """A prepared :class:`RunEvaluator` when ``metrics.enabled`` (judges trained before the run).
    ``fresh=False``: a resumed run, whose metric files and history go on. ``progress``: told the
    judges' preparation steps."""
    if not prepared.scenario.metrics.enabled:
        return None
    evaluator = RunEvaluator(prepared, bus, Path(directory), fresh)
    try:
        evaluator.prepare(progress)
    except Exception as exc:
        evaluator.disabled_reason = f"{type(exc).__name__}: {exc}"
        bus.publish(LogEvent(f"metrics disabled: cannot prepare the judge classifiers ({evaluator.disabled_reason})",
                             "error"))
    return evaluator


__all__ = ["RunEvaluator", "clustering_ari", "default_cache_dir", "format_final_table",
           "metrics_extension", "speaking_clusters"]
