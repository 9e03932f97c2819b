"""The results folder: everything a run produced, written as it happens.

Every line of ``rounds.jsonl`` and ``steps.jsonl`` is flushed as soon as it exists, so an
interrupted or failed run keeps all it had done. With ``faults:`` each round's line also says who
took part (``participants``: the fault plan as lived, peers dropped under ``policy: continue``
included, learnt from the server's ``ParticipationChanged`` events).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from p2pgan import __version__
from p2pgan.config.loader import parse_scenario
from p2pgan.config.schema import Scenario
from p2pgan.config.yamlfile import load_yaml_mapping
from p2pgan.data import load_domain
from p2pgan.errors import P2PGanError
from p2pgan.engine.participation import ParticipationView
from p2pgan.protocol.events import ClientLosses, ParticipationChanged
from p2pgan.plan.nodedata import PreparedRun, client_domains, speaking_clusters
from p2pgan.protocol.events import RoundClosed
from p2pgan.protocol.events import LogEvent, RunFinished
from p2pgan.model.assemble import AssembledGenerator


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def environment(prepared: PreparedRun) -> dict[str, Any]:
    """What produced these numbers: versions, threads, and where each domain's data came from."""
    root = prepared.scenario.data.root
    return {
        "versions": {"p2pgan": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "data_sources": {domain: str(load_domain(domain, "train", root, prepared.scenario.datasets.get(domain)).source)
                         for domain in prepared.domains},
    }


def load_run_config(directory: Path) -> Scenario:
    """The scenario a results folder was written with (``config.json``), validated again.

    ``config.json`` is the resolved scenario: its paths are absolute and ``source`` names the
    file it came from, which the loader sets itself (a scenario file may not), so it is taken out
    and handed over as the source. The results folder is wherever the folder now is.
    """
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise P2PGanError(f"{directory}: not a results folder (no config.json)")
    raw = load_yaml_mapping(path, "results config")  # JSON is YAML; the file checks apply
    source = raw.pop("source", None)
    raw.setdefault("output", {})
    if isinstance(raw["output"], dict):
        raw["output"] = {**raw["output"], "dir": str(directory.resolve())}
    return parse_scenario(raw, Path(source) if isinstance(source, str) and source else path)


class ResultsWriter:
    """An event-bus observer that writes the results folder."""

    name = "results"

    def __init__(self, prepared: PreparedRun, directory: Path) -> None:
        self._prepared = prepared
        self.directory = directory
        self._started = time.perf_counter()
        self._rounds_done = 0
        self._last_round: dict[str, Any] = {}
        self._domain_of = {r.client_id: r.domain for r in prepared.records}
        self._domains_of = client_domains(prepared.records)
        self.extra_summary: dict[str, Any] = {}
        self._participation = ParticipationView(prepared.faults)
        # The folder is the run's own: the command edge claimed it (refused if non-empty, cleared
        # with --force), so nothing of another run is left to mix with this one's files.
        directory.mkdir(parents=True, exist_ok=True)
        self._write_json("config.json", jsonable(prepared.scenario))
        self._write_json("plan.json", {
            "schedule": jsonable(prepared.plan.schedule),
            "clients": [
                {**jsonable(record), "cut": list(client.cut.as_tuple()), "num_examples": client.num_examples,
                 "full_local": client.full_local}
                for record, client in zip(prepared.records, prepared.plan.clients)
            ],
        })
        self._steps = (directory / "steps.jsonl").open("a", encoding="utf-8")
        self._rounds = (directory / "rounds.jsonl").open("a", encoding="utf-8")

    def __call__(self, event: object) -> None:
        if isinstance(event, ClientLosses):
            self._append(self._steps, jsonable(event))
        elif isinstance(event, RoundClosed):
            self._on_round(event)
        elif isinstance(event, ParticipationChanged):
            self._participation(event)
        elif isinstance(event, LogEvent):
            with (self.directory / "log.txt").open("a", encoding="utf-8") as log:
                log.write(f"[{event.level}] {event.message}\n")

    def _on_round(self, event: RoundClosed) -> None:
        self._rounds_done = event.round
        by_domain: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for cid, losses in event.losses.items():
            for key, value in losses.items():
                by_domain[self._domain_of[cid]][key].append(value)
        domain_means = {d: {k: sum(v) / len(v) for k, v in keys.items()} for d, keys in by_domain.items()}
        record = {
            "round": event.round,
            "wall_s": round(time.perf_counter() - self._started, 3),
            "losses": domain_means,
            "client_losses": event.losses,
            "clusters": event.result.clusters,
            "domain_clusters": speaking_clusters(event.result.clusters, self._domains_of, self._prepared.domains),
            "details": jsonable(event.details),
        }
        if self._prepared.faults.active:
            record["participants"] = self._participation.plan.participation(event.round)
        self._last_round = record
        self._append(self._rounds, record)
        if event.round == self._prepared.plan.schedule.rounds:
            self._write_models(event)

    def _write_models(self, event: RoundClosed) -> None:
        weights = self.directory / "weights"
        weights.mkdir(exist_ok=True)
        members: dict[int, list[str]] = defaultdict(list)
        for cid, cluster in event.result.clusters.items():
            members[cluster].append(cid)
        for cluster, model in event.result.cluster_models.items():
            flat = {f"{block}.{name}": t.contiguous() for block, state in model.items() for name, t in state.items()}
            # One metadata key: safetensors writes several keys in arbitrary order, which would
            # make identical runs produce different bytes.
            info = json.dumps({"clients": members[cluster], "round": event.round}, sort_keys=True)
            save_file(flat, str(weights / f"cluster-{cluster}.safetensors"), metadata={"p2pgan": info})
        self._write_json("weights/clusters.json", {str(k): v for k, v in sorted(members.items())})
        self.write_samples(event.result.cluster_models, event.result.clusters, self.directory / "samples")

    def write_samples(self, cluster_models: dict, clusters: dict[str, int], folder: Path, suffix: str = "") -> None:
        from p2pgan.metrics.plots import save_image_grid

        folder.mkdir(parents=True, exist_ok=True)
        spec = self._prepared.setup.model
        per_class = self._prepared.scenario.output.grid_samples_per_class
        for domain, cluster in speaking_clusters(clusters, self._domains_of, self._prepared.domains).items():
            generator = AssembledGenerator(spec, cluster_models[cluster])
            labels, z = generator.sample_grid_inputs(per_class, self._prepared.scenario.seed)
            images = generator(labels, z)
            save_image_grid(images, folder / f"{domain}{suffix}.png", nrow=per_class)

    # -- checkpoints (run/checkpoint.py) ------------------------------------------------------

    def checkpoint_round(self, round_: int) -> tuple[dict[str, Any], None]:
        """Called right after this writer recorded ``round_`` (the checkpointer observes after it)."""
        return {"rounds_done": self._rounds_done, "last_round": self._last_round}, None

    def restore(self, state, journal) -> None:
        self._rounds_done = int(state["rounds_done"])
        self._last_round = dict(state["last_round"])
        # rounds.jsonl's wall_s goes on from where the interrupted run stopped.
        self._started = time.perf_counter() - float(self._last_round.get("wall_s", 0.0))

    def finish(self, event: RunFinished) -> dict[str, Any]:
        self._steps.close()
        self._rounds.close()
        summary = {
            "scenario": self._prepared.scenario.name,
            "status": event.status,
            "detail": event.detail,
            "wall_s": round(event.wall_s, 3),
            "rounds_completed": self._rounds_done,
            "rounds_planned": self._prepared.plan.schedule.rounds,
            "final": self._last_round.get("losses", {}),
            "clusters": self._last_round.get("domain_clusters", {}),
            "environment": environment(self._prepared),
            **self.extra_summary,
        }
        self._write_json("summary.json", summary)
        return summary

    def _append(self, handle, record: dict[str, Any]) -> None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    def _write_json(self, name: str, value: Any) -> None:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
