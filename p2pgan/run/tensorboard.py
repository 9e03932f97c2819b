"""``logging: {tensorboard: true}``: the run's numbers as TensorBoard scalars (docs/api.md).

:func:`tensorboard_extension` gives the session an extension that observes the run's bus and
writes, into ``logging.dir`` (default ``<results>/tensorboard``):

============================  ======================================================  ===========
tag                           value                                                   step
============================  ======================================================  ===========
``train/<loss>``              mean over the clients that ran the iteration            iteration
``client/<id>/<loss>``        that client's loss (``steps.jsonl``)                    iteration
``round/<domain>/<loss>``     the round's mean over the domain's clients              round
                              (``rounds.jsonl`` ``losses``)
``clusters/count``            clusters after the round's aggregation                  round
``score/<domain>/gen_score``  generation score, FID, and ``score/ari``, on the rounds  round
``score/<domain>/fid``        the metrics evaluated (``metrics.jsonl``)
``latency/simulated_s``       simulated seconds after the round (the run's estimate)  round
``latency/round_s``           the round's simulated seconds and its round-end         round
``latency/federate_s``        exchange, priced when the run ends (``latency.json``)
``final/<domain>/<metric>``   the final evaluation (``final_metrics.json``)           last round
============================  ======================================================  ===========

``<loss>`` is ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake``. The iteration of step ``s`` of
round ``r`` is ``(r - 1) * steps_per_round + s + 1``, so round ``r`` ends at iteration
``r * steps_per_round``. A round's step scalars are written when the round closes (the mean of an
iteration needs every client's loss), those of an unfinished round when the run ends.

A fresh run replaces the event files in its folder. A resumed run rewrites them once: it keeps
the scalars of the rounds up to its checkpoint (the interrupted run may have got further, and
``rewind_results`` cut the results files back the same way), drops those written at the end, and
writes on into the same file, so every step holds one value, as in an uninterrupted run. With
``transport.processes`` the server's process writes the results and sees no client step, so
there are no ``train/`` or ``client/`` scalars.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.bus import EventBus
from p2pgan.config.schema import Scenario
from p2pgan.protocol.events import ClientLosses, FinalEvaluation, LogEvent, RoundAggregated, RoundClosed

LOSSES = ("d_loss", "g_loss", "d_real", "d_fake")
ITERATION_TAGS = ("train/", "client/")
"""Tags whose step is the iteration; every other tag's step is the round."""
AT_END_TAGS = ("final/", "latency/round_s", "latency/federate_s")
"""Tags written when the run ends (a resumed run writes them again, for every round)."""
FINAL_METRICS = ("gen_score", "fid", "accuracy", "precision", "recall", "f1", "fpr", "real_accuracy")
EVENT_FILES = "events.out.tfevents.*"


def tensorboard_dir(scenario: Scenario) -> Path:
    """Where a run of ``scenario`` writes its event files (the loader made ``logging.dir`` absolute)."""
    return Path(scenario.logging.dir) if scenario.logging.dir is not None else scenario.results_dir / "tensorboard"


def tensorboard_extension(prepared, bus: EventBus, fresh: bool = True) -> "TensorBoardLog | None":
    """A :class:`TensorBoardLog` observing ``bus`` when ``logging.tensorboard``; ``fresh=False``: a
    resumed run's (its checkpoint's :meth:`TensorBoardLog.restore` rewinds the folder)."""
    scenario = prepared.scenario
    if not scenario.logging.tensorboard:
        return None
    domain_of = {record.client_id: record.domain for record in prepared.records}
    log = TensorBoardLog(tensorboard_dir(scenario), prepared.plan.schedule.steps_per_round, domain_of,
                         scenario.results_dir, bus, fresh)
    bus.subscribe(log)
    return log


class TensorBoardLog:
    """The bus observer and run extension behind :func:`tensorboard_extension` (see the module doc)."""

    name = "tensorboard"

    def __init__(self, directory: Path, steps_per_round: int, domain_of: Mapping[str, str], results_dir: Path,
                 bus: EventBus, fresh: bool = True) -> None:
        self.directory = Path(directory)
        self._steps_per_round = steps_per_round
        self._domain_of = dict(domain_of)
        self._results_dir = Path(results_dir)
        self._bus = bus
        self._writer = None
        self._pending: dict[tuple[int, int], dict[str, ClientLosses]] = defaultdict(dict)
        self._failed: str | None = None
        if fresh:  # no scalar of an earlier run in this folder may mix with this one's
            for stale in self.directory.glob(EVENT_FILES):
                stale.unlink()

    # -- the run's events (on the event loop's thread) -----------------------------------------

    def __call__(self, event: object) -> None:
        if self._failed is not None:
            return
        try:
            if isinstance(event, ClientLosses):
                self._pending[(event.round, event.step)][event.node] = event
            elif isinstance(event, RoundClosed):
                self._write_steps(up_to_round=event.round)
                self._write_round(event)
                self._open().flush()  # a TensorBoard watching the run sees each round as it closes
            elif isinstance(event, FinalEvaluation) and event.state == "done":
                self._write_final(event)
        except Exception as exc:  # like every extension, it never stops training
            self._fail(exc)

    def iteration(self, round_: int, step: int) -> int:
        return (round_ - 1) * self._steps_per_round + step + 1

    def _write_steps(self, up_to_round: int | None = None) -> None:
        for key in sorted(self._pending):
            round_, step = key
            if up_to_round is not None and round_ > up_to_round:
                continue
            losses = self._pending.pop(key)
            iteration = self.iteration(round_, step)
            for loss in LOSSES:
                values = [getattr(losses[node], loss) for node in sorted(losses)]
                self._scalar(f"train/{loss}", sum(values) / len(values), iteration)
            for node in sorted(losses):
                for loss in LOSSES:
                    self._scalar(f"client/{node}/{loss}", getattr(losses[node], loss), iteration)

    def _write_round(self, event: RoundClosed) -> None:
        round_ = event.round
        by_domain: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for client, losses in event.losses.items():
            for loss, value in losses.items():
                by_domain[self._domain_of.get(client, "?")][loss].append(value)
        for domain, losses in by_domain.items():
            for loss, values in losses.items():
                self._scalar(f"round/{domain}/{loss}", sum(values) / len(values), round_)
        self._scalar("clusters/count", len(set(event.result.clusters.values())), round_)
        metrics = event.sections.get("metrics", {})
        for domain, scores in metrics.get("metrics", {}).items():
            for score in ("gen_score", "fid"):
                if scores.get(score) is not None:
                    self._scalar(f"score/{domain}/{score}", scores[score], round_)
        if metrics.get("ari") is not None:
            self._scalar("score/ari", metrics["ari"], round_)
        if event.simulated_s is not None:
            self._scalar("latency/simulated_s", event.simulated_s, round_)

    def _write_final(self, event: FinalEvaluation) -> None:
        for domain, row in event.domains.items():
            for metric in FINAL_METRICS:
                if row.get(metric) is not None:
                    self._scalar(f"final/{domain}/{metric}", row[metric], event.round)
        if event.ari is not None:
            self._scalar("final/ari", event.ari, event.round)

    def _write_priced_latency(self) -> None:
        """The simulator's price of each round, written by the latency extension as the run ended."""
        path = self._results_dir / "latency.json"
        if not path.is_file():
            return
        for entry in json.loads(path.read_text(encoding="utf-8")).get("rounds", []):
            self._scalar("latency/round_s", entry["seconds"], int(entry["round"]))
            if entry.get("federate_s") is not None:
                self._scalar("latency/federate_s", entry["federate_s"], int(entry["round"]))

    # -- the writer ----------------------------------------------------------------------------

    def _open(self):
        if self._writer is None:
            # The optional extra, imported only by a run that asked for it (the schema checked it is there).
            from torch.utils.tensorboard import SummaryWriter

            self.directory.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.directory), max_queue=1000, flush_secs=30)
        return self._writer

    def _scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        self._open().add_scalar(tag, float(value), global_step=step, walltime=walltime)

    def _fail(self, exc: BaseException) -> None:
        self._failed = f"{type(exc).__name__}: {exc}"
        self._bus.publish(LogEvent(f"tensorboard: stopped writing to {self.directory} ({self._failed})", "warning"))

    # -- run extension ---------------------------------------------------------------------------

    def round_section(self, event: RoundAggregated) -> Mapping[str, Any]:
        return {}  # it writes what the closed round holds (scores, latency): see __call__

    def finish(self, status: str) -> dict[str, Any]:
        """The steps of an unfinished round, the priced latency, then the files closed. The
        final evaluation was published before (the metrics extension finishes first)."""
        if self._failed is None:
            try:
                self._write_steps()
                self._write_priced_latency()
            except Exception as exc:
                self._fail(exc)
        if self._writer is not None:
            self._writer.close()
        section: dict[str, Any] = {"dir": str(self.directory)}
        if self._failed is not None:
            section["error"] = self._failed
        return {"tensorboard": section}

    # -- checkpoints (run/checkpoint.py) ---------------------------------------------------------

    def checkpoint_round(self, round_: int) -> tuple[dict[str, Any], None]:
        """Called once ``round_`` is written (this observer runs before the checkpointer's)."""
        if self._writer is not None:
            self._writer.flush()
        return {"round": round_}, None

    def restore(self, state: Mapping[str, Any], journal: Sequence[list[Any]]) -> None:
        """Continue after the checkpoint's round: the folder's scalars cut back to it."""
        rewind_event_files(self.directory, int(state["round"]), self._steps_per_round, self._open)


def read_scalars(directory: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """``{tag: {step: (wall_time, value)}}`` of every event file in ``directory``, the last value
    of a step kept (files in the order TensorBoard reads them)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    # Nothing dropped: no sampling (0 = keep all), no purge of steps that go back in time.
    accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    accumulator.Reload()
    found: dict[str, dict[int, tuple[float, float]]] = {}
    for tag in accumulator.Tags()[SCALARS]:
        found[tag] = {event.step: (event.wall_time, event.value) for event in accumulator.Scalars(tag)}
    return found


def rewind_event_files(directory: Path, round_: int, steps_per_round: int, open_writer) -> None:
    """Rewrite ``directory``'s scalars of rounds up to ``round_`` through ``open_writer()`` (a new
    event file) and remove the older files. Killed half-way, the next rewind reads both and keeps
    one value per step, so it can be repeated."""
    old = sorted(directory.glob(EVENT_FILES))
    if not old:
        return
    kept = read_scalars(directory)
    writer = open_writer()
    last_iteration = round_ * steps_per_round
    for tag, steps in sorted(kept.items()):
        if tag.startswith(AT_END_TAGS):
            continue
        last = last_iteration if tag.startswith(ITERATION_TAGS) else round_
        for step, (wall_time, value) in sorted(steps.items()):
            if step <= last:
                writer.add_scalar(tag, value, global_step=step, walltime=wall_time)
    writer.flush()
    for path in old:
        path.unlink(missing_ok=True)
