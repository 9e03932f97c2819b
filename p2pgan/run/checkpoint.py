"""Checkpoints: everything a run needs to continue after a round end, written atomically.

At the end of every ``checkpoint.every`` rounds (not the last: its results are final) a run writes

```
<results>/checkpoints/
  round-<r>/<node>.safetensors   one node's tensors (engine/state.py: blocks, Adam moments and
                                 steps, its random stream, its sampler's remaining order)
  round-<r>/<node>.json          node, round, and the safetensors file's size and sha256
  round-<r>/run.json             the run's side (process hosting the server): the results
                                 writer's rounds, the metric history, the latency state
  round-<r>/checkpoint.json      the completion marker, written last: every file and its sha256
  <name>-journal.jsonl           per-round entries an extension appends (the latency trace), so no
                                 checkpoint repeats the rounds before it
```

Every file is written to ``<name>.tmp``, fsynced, renamed over its name and the folder fsynced, so
a reader sees the old file or the new one, never part of one. A round counts only once its marker
exists; the last two complete rounds are kept. In one process the session's
:class:`RoundCheckpointer` writes it all; with a process per node every node process writes its own
files and reports them, and the coordinator's :class:`CheckpointMarkers` writes the marker once
every node (and the coordinator's own ``steps.jsonl``) has reached that round.

Nodes hand their state over through the loop's checkpoint hook after each round's federation;
the newest round every local node (and the run side) completed is kept in memory, so Ctrl-C or
SIGTERM (and a failed peer) write it even between two due checkpoints
(:meth:`RoundCheckpointer.flush`): the checkpoint is then that of the last completed round end,
never of a round in progress.

:func:`find_resume_point` picks the last complete round, :func:`rewind_results` cuts the results
files back to it (lines of later rounds are dropped), and the run continues from there,
appending exactly what an uninterrupted run appends. No pickle anywhere: tensors are safetensors,
the rest JSON.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from p2pgan.engine.state import NodeState
from p2pgan.errors import P2PGanError
from p2pgan.protocol.events import RoundClosed

FORMAT = 1
FOLDER = "checkpoints"
MARKER = "checkpoint.json"
RUN_FILE = "run.json"
KEEP = 2
"""Complete checkpoints kept on disk (the newest, and one in case the newest proves unreadable)."""
ROUNDED_FILES = ("rounds.jsonl", "steps.jsonl", "metrics.jsonl")
"""Results files with one JSON object per line, each naming its ``round``."""
ROUNDED_CSV = ("metrics.csv",)
"""Results tables whose first column is the round."""


# -- files -------------------------------------------------------------------------------------


def checkpoints_dir(results_dir: Path) -> Path:
    return Path(results_dir) / FOLDER


def round_dir(results_dir: Path, round_: int) -> Path:
    return checkpoints_dir(results_dir) / f"round-{round_}"


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` all at once (temp file, fsync, rename, fsync the folder); its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C mid-write: the old file stays, no half file is left
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _fsync_files(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8")


def write_node_state(folder: Path, round_: int, state: NodeState) -> dict[str, str]:
    """``<node>.safetensors`` and its ``<node>.json``; returns ``{file name: sha256}``."""
    info = json.dumps({"node": state.node_id, "round": round_, "format": FORMAT}, sort_keys=True)
    data = save_tensors(state.tensors, metadata={"p2pgan": info})
    tensors_name, info_name = f"{state.node_id}.safetensors", f"{state.node_id}.json"
    digest = write_atomic(folder / tensors_name, data)
    sidecar = {"format": FORMAT, "node": state.node_id, "round": round_, "file": tensors_name,
               "bytes": len(data), "sha256": digest, "tensors": len(state.tensors)}
    return {tensors_name: digest, info_name: write_atomic(folder / info_name, _json_bytes(sidecar))}


def read_node_state(folder: Path, node_id: str) -> NodeState:
    sidecar = _read_json(folder / f"{node_id}.json")
    data = _read_bytes(folder / f"{node_id}.safetensors")
    if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
        raise P2PGanError(f"{folder / (node_id + '.safetensors')}: checksum does not match {node_id}.json "
                          "(the checkpoint is damaged)")
    return NodeState(node_id, dict(load_tensors(data)))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise P2PGanError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read_bytes(path))
    except ValueError:
        raise P2PGanError(f"{path}: not a valid checkpoint file (malformed JSON)") from None
    if not isinstance(value, dict):
        raise P2PGanError(f"{path}: not a valid checkpoint file (expected a JSON object)")
    return value


# -- what the run side contributes ------------------------------------------------------------


@runtime_checkable
class Checkpointable(Protocol):
    """A run-side participant (the results writer, an extension) with state to carry over."""

    name: str

    def checkpoint_round(self, round_: int) -> tuple[dict[str, Any], list[Any] | None]:
        """Its state as of the end of ``round_`` (JSON), and that round's journal entries (or None)."""

    def restore(self, state: Mapping[str, Any], journal: Sequence[list[Any]]) -> None:
        """Continue from a checkpoint: ``journal`` holds its entries of every round up to it."""


class RunSide:
    """The run's participants, captured together at each round's close (on the loop's thread,
    right after the results writer recorded the round)."""

    def __init__(self, results_dir: Path, participants: Sequence[Checkpointable]) -> None:
        self._results_dir = Path(results_dir)
        self._participants = tuple(participants)

    def capture(self, round_: int) -> dict[str, Any]:
        states: dict[str, Any] = {}
        for participant in self._participants:
            state, journal = participant.checkpoint_round(round_)
            states[participant.name] = state
            if journal is not None:
                self._append_journal(participant.name, round_, journal)
        return {"format": FORMAT, "round": round_, "participants": states}

    def restore(self, point: "ResumePoint") -> None:
        states = point.run_state().get("participants", {})
        for participant in self._participants:
            if participant.name not in states:
                raise P2PGanError(f"{point.folder / RUN_FILE}: no state for {participant.name!r} "
                                  "(was the scenario changed since?)")
            participant.restore(states[participant.name], point.journal(participant.name))

    def _append_journal(self, name: str, round_: int, entries: list[Any]) -> None:
        path = journal_path(self._results_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"round": round_, "entries": entries}, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def journal_path(results_dir: Path, name: str) -> Path:
    return checkpoints_dir(results_dir) / f"{name}-journal.jsonl"


# -- writing, per process -----------------------------------------------------------------------


Completed = Callable[[int, Sequence[str], Mapping[str, str]], None]
"""Called with (round, nodes, {file: sha256}) once this process wrote its part of a round."""


class RoundCheckpointer:
    """This process's part of every checkpoint: its nodes' states, and the run side if it hosts it.

    It is the loops' checkpoint hook (``__call__(round, state)``) and a bus observer (a round's run
    side is captured when it closes). Nodes and the run side reach a round end at different
    moments; a round is written once both have and it is due.
    """

    def __init__(self, results_dir: Path, every: int, rounds: int, node_ids: Sequence[str],
                 run_side: RunSide | None, completed: Completed) -> None:
        self._results_dir = Path(results_dir)
        self._every = every
        self._rounds = rounds
        self._node_ids = tuple(node_ids)
        self._run_side = run_side
        self._completed = completed
        self._states: dict[int, dict[str, NodeState]] = {}
        self._run: dict[int, dict[str, Any]] = {}
        self._written = 0
        self.seconds: dict[int, float] = {}
        """Wall seconds each written round took (measurements and the report)."""

    def __call__(self, round_: int, state: NodeState) -> None:
        self._states.setdefault(round_, {})[state.node_id] = state
        self._try(round_)

    def observe(self, event: object) -> None:
        if isinstance(event, RoundClosed) and self._run_side is not None:
            self._run[event.round] = self._run_side.capture(event.round)
            self._try(event.round)

    def flush(self) -> None:
        """Write the last round every local node completed, if not written yet (Ctrl-C, failure)."""
        for round_ in sorted(self._states, reverse=True):
            if self._ready(round_) and round_ > self._written and round_ < self._rounds:
                self._write(round_)
                return

    def _due(self, round_: int) -> bool:
        return round_ % self._every == 0 and round_ < self._rounds

    def _ready(self, round_: int) -> bool:
        states = self._states.get(round_, {})
        return all(n in states for n in self._node_ids) and (self._run_side is None or round_ in self._run)

    def _try(self, round_: int) -> None:
        if self._due(round_) and round_ > self._written and self._ready(round_):
            self._write(round_)
        self._forget()

    def _write(self, round_: int) -> None:
        started = time.perf_counter()
        folder = round_dir(self._results_dir, round_)
        files: dict[str, str] = {}
        for node_id in self._node_ids:
            files.update(write_node_state(folder, round_, self._states[round_][node_id]))
        if self._run_side is not None:
            files[RUN_FILE] = write_atomic(folder / RUN_FILE, _json_bytes(self._run[round_]))
        self._written = round_
        self._completed(round_, self._node_ids, files)
        self.seconds[round_] = time.perf_counter() - started

    def _forget(self) -> None:
        """Keep only rounds newer than the newest ready one (still waiting for a node or the run
        side: the closer may lag behind training) and that one itself (for :meth:`flush`)."""
        ready = [r for r in self._states if self._ready(r)]
        keep_from = max(max(ready, default=0), self._written + 1)
        for kept in [r for r in self._states if r < keep_from]:
            del self._states[kept]
        for kept in [r for r in self._run if r < keep_from]:
            del self._run[kept]


class CheckpointMarkers:
    """Writes a round's completion marker once every node reported its files for that round."""

    def __init__(self, results_dir: Path, node_ids: Sequence[str], rounds: int, mode: str) -> None:
        self._results_dir = Path(results_dir)
        self._node_ids = tuple(node_ids)
        self._rounds = rounds
        self._mode = mode
        self._reported: dict[int, dict[str, str]] = {}
        self._nodes: dict[int, set[str]] = {}
        self.complete: list[int] = []

    def report(self, round_: int, nodes: Iterable[str], files: Mapping[str, str]) -> bool:
        """Record what ``nodes`` wrote for ``round_``; ``True`` once the round is complete."""
        self._nodes.setdefault(round_, set()).update(nodes)
        self._reported.setdefault(round_, {}).update(files)
        if not set(self._node_ids) <= self._nodes[round_] or RUN_FILE not in self._reported[round_]:
            return False
        marker = {"format": FORMAT, "round": round_, "rounds": self._rounds, "mode": self._mode,
                  "nodes": list(self._node_ids), "files": dict(sorted(self._reported.pop(round_).items()))}
        del self._nodes[round_]
        _fsync_files(self._results_dir / name for name in ROUNDED_FILES + ROUNDED_CSV)  # the lines it vouches for
        write_atomic(round_dir(self._results_dir, round_) / MARKER, _json_bytes(marker))
        self.complete.append(round_)
        self._prune()
        return True

    def _prune(self) -> None:
        """Keep the newest :data:`KEEP` complete rounds; older round folders go."""
        complete = sorted(complete_rounds(self._results_dir))
        if len(complete) <= KEEP:
            return
        oldest_kept = complete[-KEEP]
        for round_, folder in _round_folders(self._results_dir):
            if round_ < oldest_kept:
                shutil.rmtree(folder, ignore_errors=True)


def _round_folders(results_dir: Path) -> list[tuple[int, Path]]:
    base = checkpoints_dir(results_dir)
    found = []
    if base.is_dir():
        for entry in base.iterdir():
            number = entry.name.removeprefix("round-")
            if entry.is_dir() and entry.name.startswith("round-") and number.isdigit():
                found.append((int(number), entry))
    return sorted(found)


def complete_rounds(results_dir: Path) -> list[int]:
    return [r for r, folder in _round_folders(results_dir) if (folder / MARKER).is_file()]


# -- resuming -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePoint:
    """A complete checkpoint: the round a run continues after, and where its files are."""

    results_dir: Path
    round: int

    @property
    def folder(self) -> Path:
        return round_dir(self.results_dir, self.round)

    @property
    def first_round(self) -> int:
        return self.round + 1

    def marker(self) -> dict[str, Any]:
        return _read_json(self.folder / MARKER)

    def node_state(self, node_id: str) -> NodeState:
        return read_node_state(self.folder, node_id)

    def node_states(self, node_ids: Iterable[str]) -> dict[str, NodeState]:
        return {node_id: self.node_state(node_id) for node_id in node_ids}

    def run_state(self) -> dict[str, Any]:
        return _read_json(self.folder / RUN_FILE)

    def journal(self, name: str) -> list[list[Any]]:
        """The journal's entries for rounds 1..round, in round order (one list per round)."""
        by_round = {r: line["entries"] for r, line in _rounded_lines(journal_path(self.results_dir, name))
                    if r <= self.round}
        if not by_round:
            return []
        missing = [r for r in range(1, self.round + 1) if r not in by_round]
        if missing:
            raise P2PGanError(f"{journal_path(self.results_dir, name)}: rounds {missing[:5]} missing "
                              "(the checkpoint journal is damaged)")
        return [by_round[r] for r in range(1, self.round + 1)]

    def verify(self) -> None:
        """Every file the marker lists exists with its recorded sha256."""
        marker = self.marker()
        if marker.get("format") != FORMAT or marker.get("round") != self.round:
            raise P2PGanError(f"{self.folder / MARKER}: not a checkpoint this version can resume")
        for name, digest in dict(marker.get("files", {})).items():
            if hashlib.sha256(_read_bytes(self.folder / name)).hexdigest() != digest:
                raise P2PGanError(f"{self.folder / name}: checksum does not match the checkpoint marker")


def find_resume_point(results_dir: Path, rounds: int) -> ResumePoint:
    """The newest complete, intact checkpoint of a results folder (one-line error if none)."""
    results_dir = Path(results_dir)
    complete = complete_rounds(results_dir)
    if not complete:
        why = ("it has no checkpoints/ folder" if not checkpoints_dir(results_dir).is_dir()
               else "no round has a complete checkpoint yet")
        raise P2PGanError(f"{results_dir}: nothing to resume from ({why}; checkpoints are written at "
                          "each round end unless checkpoint.enabled is false)")
    problem = None
    for round_ in reversed(complete):
        point = ResumePoint(results_dir, round_)
        try:
            point.verify()
        except P2PGanError as exc:
            problem = problem or exc
            continue
        if round_ >= rounds:
            raise P2PGanError(f"{results_dir}: the run already trained all {rounds} rounds")
        return point
    assert problem is not None
    raise problem


def rewind_results(results_dir: Path, round_: int) -> None:
    """Cut every per-round results file back to rounds <= ``round_`` and drop later checkpoints."""
    results_dir = Path(results_dir)
    recorded = {r for r, _ in _rounded_lines(results_dir / "rounds.jsonl")}
    missing = [r for r in range(1, round_ + 1) if r not in recorded]
    if missing:
        raise P2PGanError(f"{results_dir / 'rounds.jsonl'}: rounds {missing[:5]} missing although the checkpoint "
                          f"of round {round_} is complete (the results folder was changed)")
    journals = sorted(checkpoints_dir(results_dir).glob("*-journal.jsonl"))
    for path in [results_dir / name for name in ROUNDED_FILES] + journals:
        if path.is_file():
            kept = [raw for r, raw in _rounded_lines(path, raw=True) if r <= round_]
            write_atomic(path, "".join(kept).encode("utf-8"))
    for name in ROUNDED_CSV:
        path = results_dir / name
        if path.is_file():
            write_atomic(path, _rewound_csv(path, round_))
    for number, folder in _round_folders(results_dir):
        if number > round_:
            shutil.rmtree(folder, ignore_errors=True)
    for stray in checkpoints_dir(results_dir).rglob("*.tmp"):  # a write a SIGKILL cut short
        stray.unlink(missing_ok=True)


def _rounded_lines(path: Path, raw: bool = False) -> list[tuple[int, Any]]:
    """(round, record) for every complete line naming a whole-number ``round``; a line cut short
    by a kill (no newline, or not JSON) is dropped."""
    if not path.is_file():
        return []
    found = []
    with path.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("round"), int):
                found.append((record["round"], line if raw else record))
    return found


def _rewound_csv(path: Path, round_: int) -> bytes:
    with path.open(encoding="utf-8", newline="") as handle:
        text = handle.read()
    lines = text.splitlines(keepends=True)
    kept = lines[:1]
    for line in lines[1:]:
        if not line.endswith("\n"):
            continue
        row = next(csv.reader(io.StringIO(line)), [])
        if row and row[0].isdigit() and int(row[0]) <= round_:
            kept.append(line)
    return "".join(kept).encode("utf-8")
