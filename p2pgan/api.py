"""The Python API: load a scenario, run it, read its results as objects (docs/api.md).

```python
import p2pgan

scenario = p2pgan.load_scenario("scenarios/quick.yaml", {"training.rounds": 2})
run = p2pgan.run_scenario(scenario, out="runs/quick-api", force=True)
for round_ in run.rounds:
    print(round_.number, round_.losses["mnist"]["g_loss"], round_.num_clusters)
```

It runs what ``p2pgan scenario run`` runs: the same validation and key language as ``--set``, the
same results folder (claimed and locked, refused when not empty unless ``force``), the same
engines and files, without the live view. Bad input raises the :class:`~p2pgan.errors.P2PGanError`
the command would print (:class:`~p2pgan.errors.ConfigError` naming ``file:key``), a run that
fails raises its error, Ctrl-C raises :class:`KeyboardInterrupt`; the results written so far stay
in the folder either way (:func:`open_results` reads them). :class:`Run` is built on
:func:`p2pgan.report.load.load_run`, the reader behind ``p2pgan results show`` and the report.

It sits at the top of the layers, beside the command line (pyproject.toml's import contracts).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from p2pgan.config.keys import KeyValues
from p2pgan.config.loader import read_scenario, scenario_from
from p2pgan.config.schema import Scenario
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.report.load import (DomainScore, FinalDomain, Latency, RunRecord, StepLoss, Traffic, load_run)
from p2pgan.run.folder import claim_results_dir
from p2pgan.run.launch import launch
from p2pgan.run.session import RunOutcome
from p2pgan.strategies.catalogue import strategy_for

MAPPING_SOURCE = "<mapping>"
"""How errors name a scenario given as a mapping (its relative paths are read from the current folder)."""
API = "run_scenario"
"""How errors name the arguments of :func:`run_scenario` (``run_scenario:out: ...``)."""

Observer = Callable[[object], None]
Overrides = Mapping[str, Any] | Iterable[str] | str


# ----------------------------------------------------------------------------------- scenarios


def load_scenario(scenario: str | os.PathLike | Mapping[str, Any], overrides: Overrides = (), *,
                  source: str | None = None) -> Scenario:
    """A validated scenario from a YAML file or a mapping, with ``overrides`` applied.

    ``overrides`` are the keys of ``--set`` (:mod:`p2pgan.config.keys`): a mapping of dotted keys
    to values (``{"training.rounds": 2, "domains.mnist": 1}``, taken as they are) or
    ``"key=value"`` texts (read as YAML, as on the command line). A mapping scenario is named
    ``source`` (default ``<mapping>``) in errors. Raises :class:`~p2pgan.errors.ConfigError`.
    """
    if isinstance(scenario, Mapping):
        path = Path(source or MAPPING_SOURCE)
        raw = dict(scenario)
    elif isinstance(scenario, (str, os.PathLike)):
        path = Path(scenario)
        raw = read_scenario(path)
    else:
        raise TypeError(f"load_scenario takes a file path or a mapping, not {type(scenario).__name__}")
    return scenario_from(raw, path, _assignments(overrides, str(path)))


def _assignments(overrides: Overrides, source: str) -> list[str | KeyValues]:
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        found: list[str | KeyValues] = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(source, repr(key), "override keys are dotted scenario keys (e.g. training.rounds)")
            found.append(KeyValues.of(key.strip(), value))
        return found
    texts = list(overrides)
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(source, repr(text), "expected a mapping of keys to values or 'key=value' texts")
    return texts


# ----------------------------------------------------------------------------------- running


def run_scenario(scenario: Scenario, out: str | os.PathLike | None = None, force: bool = False,
                 observers: Sequence[Observer] = (), threads: int | None = None) -> "Run":
    """Train ``scenario`` into its results folder (``out``, else its ``output.dir``) -> :class:`Run`.

    ``force`` clears a previous run's folder first (as ``--force``); ``observers`` are called with
    every run event (:mod:`p2pgan.protocol.events`), as the live view is; ``threads`` sets torch's
    intra-op threads for the run (restored after it; default: this process's setting).
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"run_scenario takes a Scenario (p2pgan.load_scenario), not {type(scenario).__name__}")
    key = "output.dir"
    if out is not None:
        key = "out"
        scenario = dataclasses.replace(scenario, output=dataclasses.replace(
            scenario.output, dir=Path(out).expanduser().resolve()))
    strategy_for(scenario)  # the strategy's own options, as `scenario run` checks them
    if observers and scenario.transport.processes and scenario.execution.engine != "ray":
        raise ConfigError(str(scenario.source), "transport.processes",
                          "observers see the events of this process, and with a process per node it runs "
                          "none of the nodes (pass no observers, or run without transport.processes)")
    with _torch_threads(threads), claim_results_dir(scenario.results_dir, force=force, resume=False, key=key,
                                                    source=API if out is not None else ""):
        outcome = _train(scenario, observers)
    if outcome.status == "interrupted":
        raise KeyboardInterrupt(f"run interrupted; results so far in {scenario.results_dir}")
    if outcome.status != "completed":
        if isinstance(outcome.error, P2PGanError):
            raise outcome.error
        raise P2PGanError(f"run {outcome.status}: {outcome.summary.get('detail', '')} "
                          f"(results so far in {scenario.results_dir})")
    return open_results(scenario.results_dir)


def _train(scenario: Scenario, observers: Sequence[Observer]) -> RunOutcome:
    """The engines of ``p2pgan scenario run``, without its console."""
    with open(os.devnull, "w", encoding="utf-8") as quiet:  # a coordinator's round lines
        return launch(scenario, observers, coordinator_out=quiet)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(API, "threads", f"expected a whole number >= 1, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Client:
    id: str
    domain: str
    cut: tuple[int, ...]  # (g_head, g_tail, d_head, d_tail): 1 = that segment runs on the client
    examples: int


@dataclass(frozen=True)
class Plan:
    """Who trained what: the clients (domain, cut, examples) and the schedule."""

    clients: tuple[Client, ...]
    domains: Mapping[str, int]  # domain -> number of clients
    strategy: str
    seed: int
    rounds: int
    local_epochs: int
    steps_per_round: int | None
    batch_size: int

    @property
    def cuts(self) -> Mapping[str, tuple[int, ...]]:
        return MappingProxyType({client.id: client.cut for client in self.clients})


@dataclass(frozen=True)
class Round:
    """One round: ``rounds.jsonl`` joined with its metrics (if evaluated) and its simulated time."""

    number: int
    losses: Mapping[str, Mapping[str, float]]  # domain -> d_loss, g_loss, d_real, d_fake (mean over clients)
    clusters: Mapping[str, int]  # client -> cluster after the round's aggregation
    domain_clusters: Mapping[str, int]  # domain -> the cluster that speaks for it
    weights: Mapping[str, float]  # client -> aggregation weight
    metrics: Mapping[str, DomainScore]  # domain -> generation score, FID; empty on rounds not evaluated
    ari: float | None  # the clusters against the true domains
    phase: str | None  # e.g. HuSCF's "warmup" / "clustered"
    simulated_s: float | None  # the round's simulated seconds (latency.json), None without a topology
    wall_s: float | None  # the round's wall seconds, its evaluation included

    @property
    def num_clusters(self) -> int:
        return len(set(self.clusters.values()))


@dataclass(frozen=True)
class Summary:
    status: str  # completed | interrupted | failed | unknown (no summary.json: the run was killed)
    detail: str
    rounds_completed: int
    rounds_planned: int
    wall_s: float | None  # training wall seconds (preparation and final metrics not included)
    simulated_s: float | None  # simulated seconds of the whole run
    traffic_bytes: int | None  # bytes clients and server exchanged (payload, as priced)


@dataclass(frozen=True)
class Paths:
    """The files of a results folder (None or empty where the run wrote none)."""

    directory: Path
    config: Path
    summary: Path | None
    rounds: Path | None
    steps: Path | None
    weights: Mapping[int, Path]  # cluster -> its generator and discriminator (safetensors)
    samples: Mapping[str, Path]  # domain -> the last round's sample grid
    report_html: Path | None
    report_md: Path | None
    tensorboard: Path | None


@dataclass(frozen=True, repr=False)
class Run:
    """A results folder as typed, read-only values (``record``: everything the reader found)."""

    directory: Path
    name: str
    status: str
    summary: Summary
    config: Mapping[str, Any]  # the resolved scenario the run was started with (config.json)
    plan: Plan
    rounds: tuple[Round, ...]
    steps: tuple[StepLoss, ...]  # one per client per iteration (steps.jsonl)
    final: Mapping[str, FinalDomain]  # domain -> final metrics (percentages 0..100); empty without metrics
    final_ari: float | None
    latency: Latency | None
    traffic: Traffic | None
    paths: Paths
    record: RunRecord

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def round(self, number: int) -> Round:
        for found in self.rounds:
            if found.number == number:
                return found
        raise KeyError(f"{self.directory}: no round {number} (rounds {self.rounds[0].number if self.rounds else '-'}"
                       f"..{self.rounds[-1].number if self.rounds else '-'})")

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, {self.status}, {self.summary.rounds_completed}/{self.summary.rounds_planned} "
                f"rounds, {str(self.directory)!r})")


def open_results(run_dir: str | os.PathLike) -> Run:
    """The results folder ``run_dir`` as a :class:`Run`; :class:`~p2pgan.report.load.ResultsError`
    if it is not one (or a file in it is corrupt)."""
    return _run(load_run(Path(run_dir)))


def _run(record: RunRecord) -> Run:
    folder = record.directory
    info = record.info
    metrics = {m.round: m for m in record.metrics_rounds}
    simulated = {r.round: r.seconds for r in record.latency.rounds} if record.latency is not None else {}
    rounds = tuple(Round(
        number=r.round,
        losses=_frozen(r.losses),
        clusters=_frozen(r.clusters),
        domain_clusters=_frozen(r.domain_clusters),
        weights=_frozen(r.weights),
        metrics=_frozen(metrics[r.round].domains) if r.round in metrics else MappingProxyType({}),
        ari=r.ari if r.ari is not None else (metrics[r.round].ari if r.round in metrics else None),
        phase=r.phase,
        simulated_s=simulated.get(r.round),
        wall_s=record.timing.wall_round_s.get(r.round),
    ) for r in record.rounds)
    plan = Plan(
        clients=tuple(Client(cid, info.client_domain[cid], tuple(info.cuts.get(cid, ())),
                             info.client_examples.get(cid, 0)) for cid in info.client_domain),
        domains=_frozen(info.domains),
        strategy=info.strategy,
        seed=info.seed,
        rounds=info.rounds_planned,
        local_epochs=info.local_epochs,
        steps_per_round=info.steps_per_round,
        batch_size=info.batch_size,
    )
    summary = Summary(
        status=record.status,
        detail=record.detail,
        rounds_completed=record.rounds_completed,
        rounds_planned=info.rounds_planned,
        wall_s=record.timing.wall_s,
        simulated_s=record.timing.sim_total_s,
        traffic_bytes=record.traffic.total_bytes if record.traffic is not None else None,
    )
    return Run(
        directory=folder,
        name=info.name,
        status=record.status,
        summary=summary,
        config=_frozen(record.config),
        plan=plan,
        rounds=rounds,
        steps=record.steps,
        final=_frozen(record.final.domains) if record.final is not None else MappingProxyType({}),
        final_ari=record.final.ari if record.final is not None else None,
        latency=record.latency,
        traffic=record.traffic,
        paths=_paths(record),
        record=record,
    )


def _paths(record: RunRecord) -> Paths:
    folder = record.directory

    def present(name: str) -> Path | None:
        return folder / name if (folder / name).exists() else None

    weights = {}
    for path in sorted((folder / "weights").glob("cluster-*.safetensors")):
        number = path.stem.removeprefix("cluster-")
        if number.isdigit():
            weights[int(number)] = path
    return Paths(
        directory=folder,
        config=folder / "config.json",
        summary=present("summary.json"),
        rounds=present("rounds.jsonl"),
        steps=present("steps.jsonl"),
        weights=MappingProxyType(dict(sorted(weights.items()))),
        samples=MappingProxyType(dict(record.samples)),
        report_html=present("report.html"),
        report_md=present("report.md"),
        tensorboard=_tensorboard_dir(record),
    )


def _tensorboard_dir(record: RunRecord) -> Path | None:
    logging = record.config.get("logging")
    if not isinstance(logging, Mapping) or not logging.get("tensorboard"):
        return None
    folder = Path(logging["dir"]) if logging.get("dir") else record.directory / "tensorboard"
    return folder if folder.is_dir() else None


def _frozen(value: Any) -> Any:
    """Mappings (nested ones too) as read-only views, lists as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


__all__ = ["Client", "DomainScore", "FinalDomain", "Latency", "Paths", "Plan", "Round", "Run", "StepLoss",
           "Summary", "Traffic", "load_scenario", "open_results", "run_scenario"]
