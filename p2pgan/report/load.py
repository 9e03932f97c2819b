"""Read a results folder into a :class:`RunRecord`.

Only ``config.json`` is required (a run writes it first). Everything else is optional and read if
present: an interrupted run has no ``summary.json`` yet, a run without metrics has no
``metrics.jsonl``/``final_metrics.json``, a run without a topology has no ``latency.json``. What
is missing is listed in :attr:`RunRecord.missing` so the report can say so instead of guessing.

A file that exists but cannot be read (bad JSON, wrong shape) raises :class:`ResultsError` naming
the file; the one exception is a cut-off last line of a ``.jsonl`` file (a run killed mid-write),
which is skipped and reported in :attr:`RunRecord.notes`.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pgan.data import domain_spec
from p2pgan.errors import DataError, P2PGanError
from p2pgan.metrics import adjusted_rand

SERVER_ID = "server"  # the server's node id in every results file


class ResultsError(P2PGanError):
    """A folder that is not a (readable) results folder. One line naming the file."""

    exit_code = 2


# ----------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Environment:
    """What produced the run. Empty where the folder does not record it (older writers)."""

    versions: dict[str, str] = field(default_factory=dict)  # {"p2pgan": "0.1.0", "torch": "2.x", ...}
    threads: int | None = None
    data_sources: dict[str, str] = field(default_factory=dict)  # domain -> where its images came from
    host: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """What ran: the scenario as resolved (``config.json``) and the schedule (``plan.json``)."""

    name: str
    strategy: str
    strategy_options: dict[str, Any]
    seed: int
    transport: str
    processes: bool
    engine: str | None
    domains: dict[str, int]  # domain -> number of clients
    class_names: dict[str, tuple[str, ...]]
    partition: str
    model_width: float | None
    z_dim: int | None
    rounds_planned: int
    local_epochs: int
    steps_per_epoch: int | None
    batch_size: int
    learning_rate: float | None
    cut_policy: str
    cuts: dict[str, tuple[int, ...]]  # client -> cut
    client_domain: dict[str, str]
    client_examples: dict[str, int]
    topology: str | None
    metrics_budget: dict[str, Any] | None  # None: metrics were off
    grid_samples_per_class: int
    source_file: str | None
    environment: Environment

    @property
    def steps_per_round(self) -> int | None:
        return None if self.steps_per_epoch is None else self.steps_per_epoch * self.local_epochs

    @property
    def num_clients(self) -> int:
        return len(self.client_domain) or sum(self.domains.values())


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``rounds.jsonl``."""

    round: int
    wall_s: float | None  # since the writer started (includes that round's metrics evaluation)
    losses: dict[str, dict[str, float]]  # domain -> {"d_loss", "g_loss", "d_real", "d_fake"}
    clusters: dict[str, int]  # client -> cluster
    domain_clusters: dict[str, int]
    phase: str | None  # e.g. HuSCF "warmup" / "clustered"
    ari: float | None
    weights: dict[str, float] = field(default_factory=dict)  # client -> its aggregation weight

    @property
    def num_clusters(self) -> int:
        return len(set(self.clusters.values()))

    def members(self) -> dict[int, tuple[str, ...]]:
        out: dict[int, list[str]] = defaultdict(list)
        for cid, cluster in self.clusters.items():
            out[cluster].append(cid)
        return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class StepLoss:
    """One line of ``steps.jsonl``: one client's losses of one iteration."""

    node: str
    round: int
    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class DomainScore:
    cluster: int | None
    gen_score: float | None
    fid: float | None


@dataclass(frozen=True)
class MetricsRound:
    """One line of ``metrics.jsonl``."""

    round: int
    ari: float | None
    domains: dict[str, DomainScore]


@dataclass(frozen=True)
class FinalDomain:
    """One domain of ``final_metrics.json`` (percentages as written: 0..100)."""

    cluster: int | None
    gen_score: float | None
    fid: float | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    real_accuracy: float | None


@dataclass(frozen=True)
class FinalMetrics:
    round: int | None
    ari: float | None
    budget: dict[str, Any]
    domains: dict[str, FinalDomain]


@dataclass(frozen=True)
class NodeLatency:
    node: str
    profile: str
    busy_s: float  # simulated compute seconds
    up_busy_s: float  # simulated seconds its uplink was busy
    down_busy_s: float
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class ProfileLatency:
    """All nodes of one device profile together."""

    profile: str
    nodes: tuple[str, ...]
    compute_s: float
    up_s: float
    down_s: float
    bytes_sent: int
    bytes_received: int

    @property
    def transfer_s(self) -> float:
        return self.up_s + self.down_s


@dataclass(frozen=True)
class PhaseLatency:
    """How far one phase of the iteration moved the critical path, split by what was running."""

    phase: str
    client_compute_s: float
    server_compute_s: float
    transfer_s: float

    @property
    def total_s(self) -> float:
        return self.client_compute_s + self.server_compute_s + self.transfer_s


@dataclass(frozen=True)
class CriticalPath:
    phases: tuple[PhaseLatency, ...]
    steps_shown: int
    steps_total: int
    covered_s: float  # simulated seconds the shown steps cover (all of it when complete)

    @property
    def complete(self) -> bool:
        return self.steps_shown >= self.steps_total


@dataclass(frozen=True)
class RoundLatency:
    round: int
    seconds: float
    federate_s: float  # the round-end exchange (parameters up, aggregate down)


@dataclass(frozen=True)
class Latency:
    """``latency.json`` (or, failing that, ``latency_nodes.csv``): simulated seconds."""

    topology: str | None
    total_s: float | None
    mean_iteration_s: float | None
    iterations: int
    rounds: tuple[RoundLatency, ...]
    nodes: tuple[NodeLatency, ...]
    profiles: tuple[ProfileLatency, ...]
    critical_path: CriticalPath | None


@dataclass(frozen=True)
class Traffic:
    """Bytes over the network as traced for the latency model (payload bytes, no protocol overhead)."""

    total_bytes: int
    upload_bytes: int  # client -> server
    download_bytes: int  # server -> client
    per_client_sent: dict[str, int]
    per_client_received: dict[str, int]
    rounds: int
    iterations: int

    @property
    def per_round_bytes(self) -> float | None:
        return self.total_bytes / self.rounds if self.rounds else None


@dataclass(frozen=True)
class Timing:
    wall_s: float | None  # training, from summary.json (preparation and final metrics not included)
    prepare_s: float | None  # estimated wall seconds before the first iteration
    wall_s_per_iteration: float | None
    sim_total_s: float | None
    sim_s_per_iteration: float | None
    wall_round_s: dict[int, float]  # wall seconds of each round (its metrics evaluation included)
    sim_round_s: dict[int, float]


@dataclass(frozen=True)
class RunRecord:
    """Everything a report needs from one results folder."""

    directory: Path
    info: RunInfo
    config: dict[str, Any]  # config.json as written (the resolved scenario)
    status: str  # completed | interrupted | failed | unknown
    detail: str
    rounds_completed: int
    rounds: tuple[RoundRecord, ...]
    steps: tuple[StepLoss, ...]
    metrics_rounds: tuple[MetricsRound, ...]
    final: FinalMetrics | None
    metrics_note: str | None
    latency: Latency | None
    traffic: Traffic | None
    timing: Timing
    samples: dict[str, Path]  # domain -> last round's grid
    round_samples: dict[int, dict[str, Path]]  # round -> domain -> grid
    log: tuple[str, ...]
    missing: tuple[str, ...]  # optional files that are absent
    notes: tuple[str, ...]  # what was tolerated while reading

    @property
    def label(self) -> str:
        return self.directory.name

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.info.domains)


# ----------------------------------------------------------------------------------- reading


def load_run(directory: Path | str) -> RunRecord:
    """Read ``directory``; :class:`ResultsError` if it is missing, not a results folder or corrupt."""
    folder = Path(directory)
    if not folder.exists():
        raise ResultsError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ResultsError(f"{folder}: not a folder (expected a results folder holding config.json)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        nested = sorted(p.parent.name for p in folder.glob("*/config.json"))
        hint = (f"; it holds results folders {', '.join(nested[:6])}{', ...' if len(nested) > 6 else ''}"
                f" (try: p2pgan results compare {folder}/*)") if nested else ""
        raise ResultsError(f"{config_path}: missing, so {folder} is not a results folder{hint}")
    notes: list[str] = []
    missing: list[str] = []

    def optional(name: str) -> Path | None:
        path = folder / name
        if path.is_file():
            return path
        missing.append(name)
        return None

    config = _read_json_object(config_path)
    plan = _read_json_object(p) if (p := optional("plan.json")) else {}
    summary = _read_json_object(p) if (p := optional("summary.json")) else {}
    rounds = tuple(_round_record(path, n, row) for path, n, row in _jsonl(optional("rounds.jsonl"), notes))
    steps = tuple(_step_loss(path, n, row) for path, n, row in _jsonl(optional("steps.jsonl"), notes))
    metrics_rounds = tuple(_metrics_round(path, n, row)
                           for path, n, row in _jsonl(optional("metrics.jsonl"), notes))
    final_path = optional("final_metrics.json")
    final = _final_metrics(final_path, _read_json_object(final_path)) if final_path else None
    latency_path = optional("latency.json")
    if latency_path is not None:
        latency = _latency(latency_path, _read_json_object(latency_path))
    elif (nodes_csv := folder / "latency_nodes.csv").is_file():
        latency = _latency_from_csv(nodes_csv)
        notes.append("latency.json is missing; latency read from latency_nodes.csv (no per-round split)")
    else:
        latency = None
    info = _run_info(config_path, config, plan, summary)
    rounds = tuple(r if r.ari is not None else replace(r, ari=clustering_ari(r.clusters, info.client_domain))
                   for r in rounds)
    status = str(summary.get("status", "unknown")) if summary else "unknown"
    rounds_completed = int(summary.get("rounds_completed", len(rounds))) if summary else len(rounds)
    metrics_section = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    metrics_note = metrics_section.get("note") if metrics_section else None
    if (folder / "metrics_error.txt").is_file() and not metrics_note:
        metrics_note = "metrics stopped after an error (see metrics_error.txt)"
    log = tuple((folder / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()) \
        if (folder / "log.txt").is_file() else ()
    return RunRecord(
        directory=folder,
        info=info,
        config=config,
        status=status,
        detail=str(summary.get("detail", "") or ""),
        rounds_completed=rounds_completed,
        rounds=rounds,
        steps=steps,
        metrics_rounds=metrics_rounds,
        final=final,
        metrics_note=metrics_note,
        latency=latency,
        traffic=_traffic(latency, rounds_completed) if latency is not None else None,
        timing=_timing(summary, rounds, latency),
        samples=_samples(folder / "samples", info.domains),
        round_samples=_round_samples(folder / "samples", info.domains),
        log=log,
        missing=tuple(missing),
        notes=tuple(notes),
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _jsonl(path: Path | None, notes: list[str]):
    """(path, line number, object) per line; a cut-off last line is skipped with a note."""
    if path is None:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot be read ({exc})") from None
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the writer was stopped mid-line
                notes.append(f"{path.name}: the last line is cut off (run stopped while writing it); skipped")
                continue
            raise ResultsError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ResultsError(f"{path}:{number}: expected a JSON object per line")
        yield path, number, row


def _bad(path: Path, where: str, problem: str) -> ResultsError:
    return ResultsError(f"{path}:{where}: {problem}")


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _run_info(path: Path, config: Mapping[str, Any], plan: Mapping[str, Any],
              summary: Mapping[str, Any]) -> RunInfo:
    try:
        domains = _domain_counts(config["domains"])
        name = str(config["name"])
    except (KeyError, TypeError, ValueError):
        raise _bad(path, "domains", "expected the scenario's name and domains (is this a p2pgan results folder?)") \
            from None
    section = lambda key: config.get(key) if isinstance(config.get(key), Mapping) else {}  # noqa: E731
    strategy, transport, training = section("strategy"), section("transport"), section("training")
    metrics, model, output = section("metrics"), section("model"), section("output")
    schedule = plan.get("schedule") if isinstance(plan.get("schedule"), Mapping) else {}
    clients = [c for c in plan.get("clients", []) if isinstance(c, Mapping)]
    cuts_section = section("cuts")
    cut_policy = next((f"{k}: {v}" if k != "policy" else str(v) for k, v in cuts_section.items() if v is not None),
                      "default")
    return RunInfo(
        name=name,
        strategy=str(strategy.get("name", "?")),
        strategy_options={k: v for k, v in strategy.items() if k != "name"},
        seed=int(config.get("seed", 0)),
        transport=str(transport.get("kind", "memory")),
        processes=bool(transport.get("processes", False)),
        engine=str(config["engine"]) if config.get("engine") is not None else summary.get("engine"),
        domains=domains,
        class_names={d: class_names(d, config["domains"]) for d in domains},
        partition=_partition_text(section("partition")),
        model_width=_float(model.get("width")),
        z_dim=_int(model.get("z_dim")),
        rounds_planned=int(schedule.get("rounds", training.get("rounds", summary.get("rounds_planned", 0)))),
        local_epochs=int(schedule.get("local_epochs", training.get("local_epochs", 1))),
        steps_per_epoch=_int(schedule.get("steps_per_epoch")),
        batch_size=int(schedule.get("batch_size", training.get("batch_size", 0))),
        learning_rate=_float(training.get("lr")),
        cut_policy=cut_policy,
        cuts={str(c.get("client_id")): tuple(c.get("cut", ())) for c in clients},
        client_domain={str(c.get("client_id")): str(c.get("domain", "?")) for c in clients},
        client_examples={str(c.get("client_id")): int(c.get("num_examples", 0)) for c in clients},
        topology=str(config["topology"]) if config.get("topology") else None,
        metrics_budget=({k: metrics.get(k) for k in ("every", "score_samples", "utility_samples",
                                                     "classifier_epochs", "utility_epochs", "utility")}
                        if metrics.get("enabled") else None),
        grid_samples_per_class=int(output.get("grid_samples_per_class", 4)),
        source_file=str(config["source"]) if config.get("source") else None,
        environment=_environment(summary, config),
    )


def _domain_counts(domains: Any) -> dict[str, int]:
    """``{domain: clients}``; a domain given as a mapping (a user dataset) names its ``clients``."""
    out = {}
    for name, value in dict(domains).items():
        if isinstance(value, Mapping):
            value = value.get("clients", 0)
        out[str(name)] = int(value)
    return out


def class_names(domain: str, domains_config: Any) -> tuple[str, ...]:
    """A domain's class names: from its scenario entry if it has them (a user dataset's
    ``classes``), else the built-in registry.

    Unknown: an empty tuple (the figures then number the rows).
    """
    entry = domains_config.get(domain) if isinstance(domains_config, Mapping) else None
    if isinstance(entry, Mapping):
        names = entry.get("classes") or entry.get("class_names")
        if isinstance(names, (list, tuple)) and names:
            return tuple(str(n) for n in names)
    try:
        return tuple(domain_spec(domain).class_names)
    except DataError:
        return ()


def clustering_ari(clusters: Mapping[str, int], domain_of: Mapping[str, str]) -> float | None:
    """ARI of a round's clusters against the clients' true domains (what the metrics write, also
    for runs without metrics); ``None`` where undefined: under two clients, or a pooled client."""
    if len(clusters) < 2 or any("+" in domain_of.get(c, "+") for c in clusters):
        return None
    return adjusted_rand(dict(clusters), {c: domain_of[c] for c in clusters})


def _partition_text(partition: Mapping[str, Any]) -> str:
    kind = str(partition.get("kind", "iid"))
    extra = ", ".join(f"{k}={v}" for k, v in partition.items() if k != "kind" and v is not None)
    return f"{kind} ({extra})" if extra else kind


def _environment(summary: Mapping[str, Any], config: Mapping[str, Any]) -> Environment:
    """``summary.json``'s ``environment`` section (see the report's notes for what it holds)."""
    env = summary.get("environment") if isinstance(summary.get("environment"), Mapping) else {}
    versions = env.get("versions") if isinstance(env.get("versions"), Mapping) else {}
    sources = env.get("data_sources") if isinstance(env.get("data_sources"), Mapping) else {}
    return Environment(
        versions={str(k): str(v) for k, v in versions.items()},
        threads=_int(env.get("threads")),
        data_sources={str(k): str(v) for k, v in sources.items()},
        host=str(env["host"]) if env.get("host") else None,
    )


def _round_record(path: Path, number: int, row: Mapping[str, Any]) -> RoundRecord:
    try:
        details = row.get("details") if isinstance(row.get("details"), Mapping) else {}
        return RoundRecord(
            round=int(row["round"]),
            wall_s=_float(row.get("wall_s")),
            losses={str(d): {str(k): float(v) for k, v in vals.items()} for d, vals in row.get("losses", {}).items()},
            clusters={str(c): int(k) for c, k in row.get("clusters", {}).items()},
            domain_clusters={str(d): int(k) for d, k in row.get("domain_clusters", {}).items()},
            phase=str(details["phase"]) if details.get("phase") is not None else None,
            ari=_float(details.get("ari")),
            weights={str(c): float(w) for c, w in (details.get("weights") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, str(number), f"not a round record ({type(exc).__name__}: {exc})") from None


def _step_loss(path: Path, number: int, row: Mapping[str, Any]) -> StepLoss:
    try:
        values = {k: float(v) for k, v in row.items() if k not in ("node", "round", "step") and v is not None}
        return StepLoss(str(row["node"]), int(row["round"]), int(row["step"]), values)
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, str(number), f"not a step record ({type(exc).__name__}: {exc})") from None


def _metrics_round(path: Path, number: int, row: Mapping[str, Any]) -> MetricsRound:
    try:
        domains = {str(d): DomainScore(_int(v.get("cluster")), _float(v.get("gen_score")), _float(v.get("fid")))
                   for d, v in row.get("domains", {}).items()}
        return MetricsRound(int(row["round"]), _float(row.get("ari")), domains)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, str(number), f"not a metrics record ({type(exc).__name__}: {exc})") from None


def _final_metrics(path: Path, data: Mapping[str, Any]) -> FinalMetrics:
    try:
        domains = {}
        for domain, row in data.get("domains", {}).items():
            domains[str(domain)] = FinalDomain(
                cluster=_int(row.get("cluster")), gen_score=_float(row.get("gen_score")), fid=_float(row.get("fid")),
                accuracy=_float(row.get("accuracy")), precision=_float(row.get("precision")),
                recall=_float(row.get("recall")), f1=_float(row.get("f1")), fpr=_float(row.get("fpr")),
                real_accuracy=_float(row.get("real_accuracy")))
        budget = data.get("config") if isinstance(data.get("config"), Mapping) else {}
        return FinalMetrics(_int(data.get("round")), _float(data.get("ari")), dict(budget), domains)
    except (TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, "domains", f"unexpected shape ({type(exc).__name__}: {exc})") from None


def _latency(path: Path, data: Mapping[str, Any]) -> Latency:
    try:
        profiles_of = {str(k): str(v) for k, v in data.get("profiles", {}).items()}
        links = {str(k): float(v) for k, v in data.get("links_busy_s", {}).items()}
        nodes = tuple(
            NodeLatency(node=str(node), profile=profiles_of.get(node, ""), busy_s=float(v.get("busy_s", 0.0)),
                        up_busy_s=links.get(f"{node}:up", 0.0), down_busy_s=links.get(f"{node}:down", 0.0),
                        bytes_sent=int(v.get("bytes_sent", 0)), bytes_received=int(v.get("bytes_received", 0)))
            for node, v in data.get("nodes", {}).items())
        rounds = tuple(RoundLatency(int(r["round"]), float(r["seconds"]), float(r.get("federate_s", 0.0)))
                       for r in data.get("rounds", []))
        path_lines = [str(line) for line in data.get("critical_path", [])]
        critical = _critical_path(path_lines, int(data.get("critical_path_length", len(path_lines)))) \
            if path_lines else None
        return Latency(
            topology=str(data["topology"]) if data.get("topology") else None,
            total_s=_float(data.get("total_s")),
            mean_iteration_s=_float(data.get("mean_iteration_s")),
            iterations=len(data.get("iterations", [])),
            rounds=rounds,
            nodes=_sorted_nodes(nodes),
            profiles=_profiles(nodes),
            critical_path=critical,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, "nodes", f"unexpected shape ({type(exc).__name__}: {exc})") from None


def _latency_from_csv(path: Path) -> Latency:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        nodes = tuple(NodeLatency(r["node"], r.get("profile", ""), float(r["busy_s"]), 0.0, 0.0,
                                  int(r["bytes_sent"]), int(r["bytes_received"])) for r in rows)
    except (KeyError, TypeError, ValueError, csv.Error) as exc:
        raise ResultsError(f"{path}: unexpected content ({type(exc).__name__}: {exc})") from None
    return Latency(None, None, None, 0, (), _sorted_nodes(nodes), _profiles(nodes), None)


def _sorted_nodes(nodes: tuple[NodeLatency, ...]) -> tuple[NodeLatency, ...]:
    return tuple(sorted(nodes, key=lambda n: (n.node == SERVER_ID, n.node)))


def _profiles(nodes: tuple[NodeLatency, ...]) -> tuple[ProfileLatency, ...]:
    groups: dict[str, list[NodeLatency]] = defaultdict(list)
    for node in _sorted_nodes(nodes):
        groups[node.profile or node.node].append(node)
    return tuple(
        ProfileLatency(profile, tuple(n.node for n in members), sum(n.busy_s for n in members),
                       sum(n.up_busy_s for n in members), sum(n.down_busy_s for n in members),
                       sum(n.bytes_sent for n in members), sum(n.bytes_received for n in members))
        for profile, members in groups.items())


# "0.017562-0.081787s c000->server activation (401408 B) r1/s0/g_fwd" or
# "0.081787-0.084348s server fwd [g1,g2,g3] x192 (1.72e+09 FLOP) r1/s0/g_fwd"
_PATH_STEP = re.compile(r"^(?P<start>[0-9.eE+-]+)-(?P<end>[0-9.eE+-]+)s (?P<node>\S+) .* r\d+/[^/\s]+/(?P<phase>\S+)$")


def _critical_path(lines: list[str], total_steps: int) -> CriticalPath | None:
    """Per phase, how much each step advanced the end of the critical path.

    Steps of the path overlap where a transfer queues behind another on a shared link, so their
    durations add up to more than the path; the advance (this step's end minus the previous
    step's end) adds up to exactly the simulated time the shown steps cover.
    """
    by_phase: dict[str, list[float]] = {}
    previous_end: float | None = None
    first_start: float | None = None
    for line in lines:
        match = _PATH_STEP.match(line)
        if match is None:
            return None  # a format this reader does not know: show nothing rather than a wrong split
        start, end = float(match["start"]), float(match["end"])
        if first_start is None:
            first_start = start
        advance = max(0.0, end - (start if previous_end is None else previous_end))
        previous_end = end if previous_end is None else max(previous_end, end)
        node = match["node"]
        slot = 2 if "->" in node else (1 if node == SERVER_ID else 0)
        by_phase.setdefault(match["phase"], [0.0, 0.0, 0.0])[slot] += advance
    if previous_end is None or first_start is None:
        return None
    phases = tuple(PhaseLatency(phase, *values) for phase, values in by_phase.items())
    return CriticalPath(phases, len(lines), total_steps, previous_end - first_start)


def _traffic(latency: Latency, rounds: int) -> Traffic | None:
    if not latency.nodes:
        return None
    clients = [n for n in latency.nodes if n.node != SERVER_ID]
    upload = sum(n.bytes_sent for n in clients)
    download = sum(n.bytes_received for n in clients)
    return Traffic(
        total_bytes=upload + download,
        upload_bytes=upload,
        download_bytes=download,
        per_client_sent={n.node: n.bytes_sent for n in clients},
        per_client_received={n.node: n.bytes_received for n in clients},
        rounds=len(latency.rounds) or rounds,
        iterations=latency.iterations,
    )


def _timing(summary: Mapping[str, Any], rounds: tuple[RoundRecord, ...], latency: Latency | None) -> Timing:
    section = summary.get("latency") if isinstance(summary.get("latency"), Mapping) else {}
    wall_round: dict[int, float] = {}
    previous = 0.0
    ordered = [r for r in sorted(rounds, key=lambda r: r.round) if r.wall_s is not None]
    for record in ordered:
        wall_round[record.round] = record.wall_s - previous
        previous = record.wall_s
    wall = _float(summary.get("wall_s"))
    # rounds.jsonl counts wall seconds from when the results folder was opened, so round 1 also
    # holds the preparation (data, judge classifiers, cut search); the summary's wall time starts
    # after it. Their difference at the last round is that preparation.
    prepare = None
    if ordered and wall is not None and summary.get("status") == "completed" \
            and 0.0 < ordered[-1].wall_s - wall < wall_round[ordered[0].round]:
        prepare = ordered[-1].wall_s - wall
        wall_round[ordered[0].round] -= prepare
    return Timing(
        wall_s=wall,
        prepare_s=prepare,
        wall_s_per_iteration=_float(section.get("wall_s_per_iteration")),
        sim_total_s=_float(section.get("sim_total_s")) if section else (latency.total_s if latency else None),
        sim_s_per_iteration=(_float(section.get("sim_s_per_iteration")) if section
                             else (latency.mean_iteration_s if latency else None)),
        wall_round_s=wall_round,
        sim_round_s={r.round: r.seconds for r in latency.rounds} if latency else {},
    )


def _samples(folder: Path, domains: Mapping[str, int]) -> dict[str, Path]:
    return {d: folder / f"{d}.png" for d in domains if (folder / f"{d}.png").is_file()}


def _round_samples(folder: Path, domains: Mapping[str, int]) -> dict[int, dict[str, Path]]:
    out: dict[int, dict[str, Path]] = {}
    if not folder.is_dir():
        return out
    for sub in folder.glob("round-*"):
        number = _int(sub.name.removeprefix("round-"))
        if number is None or not sub.is_dir():
            continue
        found = _samples(sub, domains)
        if found:
            out[number] = found
    return dict(sorted(out.items()))


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """The results folders among ``paths``: each one itself, or the results folders directly inside it."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir() and not (path / "config.json").is_file():
            nested = sorted(p.parent for p in path.glob("*/config.json"))
            if nested:
                found.extend(nested)
                continue
        found.append(path)
    return found
