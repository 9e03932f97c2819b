"""The live dashboard: state bookkeeping, pure rendering, the observer's life cycle, and that
showing it changes nothing about a run's results."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from p2pgan.protocol.events import ClientLosses
from p2pgan.protocol.events import RoundClosed
from p2pgan.protocol.events import (
    ComputeEvent,
    FinalEvaluation,
    LogEvent,
    NodeInfo,
    NodeStateEvent,
    ParticipationChanged,
    PreparationStep,
    RunFinished,
    RunStarted,
    TransferEvent,
)
from p2pgan.protocol.federation import FederationResult
from p2pgan.ui.live import (
    D_WIN_LOSS,
    D_WIN_STEPS,
    FAKE_STD_MIN,
    G_COLLAPSE_LOSS,
    G_COLLAPSE_STEPS,
    DashboardState,
    LiveView,
    render,
)
from p2pgan.ui.live.rendering import sparkline

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "scenarios" / "quick.yaml"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class SimulatedTime:
    """What the latency engine is expected to publish (the live view's duck-typed seam)."""

    round: int
    step: int
    simulated_s: float
    wall_s: float


def text_of(renderable, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def cut_str(cut) -> str:
    return "(" + ",".join(str(c) for c in cut) + ")"


def started(num_clients: int = 30, rounds: int = 3, epochs: int = 2, steps: int = 4) -> RunStarted:
    nodes = [NodeInfo("server", "server")]
    for i in range(num_clients):
        cut = ((i >> 3) & 1, (i >> 2) & 1, (i >> 1) & 1, i & 1)
        nodes.append(NodeInfo(f"c{i:03d}", "client", "mnist" if i % 2 == 0 else "kmnist", cut,
                              profile=None if i % 3 == 0 else f"device{i % 7 + 1}", num_examples=100 + i))
    return RunStarted("demo", "huscf", "memory", 11, "/tmp/results/demo", rounds, epochs, steps, tuple(nodes))


def losses(client: str, round_: int, step: int, d: float = 0.6, g: float = 0.9) -> ClientLosses:
    return ClientLosses(client, round_, step, d_real=d * 0.9, d_fake=d * 1.1, d_loss=d, g_loss=g)


def aggregation(round_: int, clients: list[str], clusters: dict[str, int], metrics=None) -> RoundClosed:
    details = {"metrics": metrics, "ari": 0.75} if metrics else {}
    result = FederationResult({}, {}, clusters, {}, {})
    return RoundClosed(round_, result, {c: {"d_loss": 0.5, "g_loss": 1.0} for c in clients}, details, {})


def test_synthetic_run_renders_rounds_nodes_cuts_paging_and_federation():
    clock = FakeClock()
    state = DashboardState(clock)
    run = started()
    state.apply(run)
    clients = [n.node_id for n in run.nodes if n.role == "client"]
    spr = run.local_epochs * run.steps_per_epoch
    for round_ in (1, 2):
        for step in range(spr):
            clock.t += 2.0
            for cid in clients:
                state.apply(NodeStateEvent(cid, "computing"))
                state.apply(ComputeEvent(cid, round_, step, "g_fwd", "fwd", ("g0",), 32, 1e9))
                state.apply(TransferEvent(f"m{cid}{step}", cid, "server", "activation", round_, step, "g_fwd", 1000))
                state.apply(TransferEvent(f"s{cid}{step}", "server", cid, "activation", round_, step, "g_fwd", 500))
                state.apply(losses(cid, round_, step, d=0.7 - 0.01 * step, g=0.8 + 0.05 * step))
        clusters = {cid: (0 if i % 2 == 0 else 1) if round_ > 1 else 0 for i, cid in enumerate(clients)}
        state.apply(aggregation(round_, clients, clusters, {"mnist": {"gen_score": 1.5 * round_},
                                                            "kmnist": {"gen_score": 1.1 * round_}}))
    # Round 3 under way: epoch 2 of 2, iteration 2 of 4 finished.
    for step in range(6):
        clock.t += 2.0
        for cid in clients:
            state.apply(losses(cid, 3, step))
    state.apply(NodeStateEvent("c000", "waiting"))
    state.apply(NodeStateEvent("c001", "sending"))
    state.apply(SimulatedTime(3, 5, simulated_s=600.0, wall_s=120.0))
    state.apply(LogEvent("hello from the run loop"))

    snap = state.snapshot()
    assert snap.rounds_done == 2 and snap.steps_done == 2 * spr + 6
    assert snap.step_s == pytest.approx(2.0)

    page0 = text_of(render(snap, page=0, max_node_rows=10))
    assert "scenario demo" in page0 and "strategy huscf" in page0 and "transport memory" in page0
    assert "seed 11" in page0 and "/tmp/results/demo" in page0
    assert "2/3" in page0  # rounds
    assert "epochs (r3)" in page0 and "1/2" in page0  # epoch 2 of round 3 in progress
    assert "iterations" in page0 and "2/4" in page0
    assert "simulated 10:00" in page0 and "×5.00" in page0
    # Node table: the server, the first page of clients, their cuts and profiles; the rest summarised.
    for node in run.nodes[:11]:
        assert node.node_id in page0
        if node.cut is not None:
            line = next(line for line in page0.splitlines() if f" {node.node_id} " in f" {line} ")
            assert cut_str(node.cut) in line
            assert (node.profile or " - ") in line
            assert "16.0 kB" in line and "8.0 kB" in line  # 2 rounds x 8 iterations of 1000 B up, 500 B down
    assert "c010" not in page0
    assert "clients 1–10 of 30 (page 1/3)" in page0
    assert "all 30" in page0 and "waiting 1" in page0 and "sending 1" in page0
    # Health and federation per domain.
    assert "mnist" in page0 and "kmnist" in page0
    assert "#0×15" in page0 and "#1×15" in page0 and "r1:#0 r2:#0" in page0 and "r1:#0 r2:#1" in page0
    assert "3.00" in page0 and "2.20" in page0  # latest generation scores
    assert "2 clusters · ARI vs domains 0.75" in page0
    assert "hello from the run loop" in page0 and "round 2/3 aggregated: 2 clusters" in page0

    page2 = text_of(render(snap, page=2, max_node_rows=10))
    assert "c020" in page2 and "c029" in page2 and "c000 " not in page2 and "(page 3/3)" in page2
    # Paging follows the snapshot's clock when no page is given.
    assert "page" in text_of(render(snap, max_node_rows=10))


def test_render_before_start_and_after_finish():
    assert "waiting for the run" in text_of(render(DashboardState().snapshot()))
    clock = FakeClock()
    state = DashboardState(clock)
    state.apply(started(num_clients=2, rounds=1, epochs=1, steps=2))
    for step in range(2):
        for cid in ("c000", "c001"):
            state.apply(losses(cid, 1, step))
    state.apply(aggregation(1, ["c000", "c001"], {"c000": 0, "c001": 0}))
    clock.t += 42
    state.apply(RunFinished("completed", 42.0))
    clock.t += 100  # the wall clock stops with the run
    text = text_of(render(state.snapshot()))
    assert "status completed" in text and "wall 00:42" in text and "1/1" in text and "done" in text
    assert "simulated - (no latency engine)" in text and "(no metrics yet)" in text


def test_health_warnings_d_wins_then_g_collapse():
    state = DashboardState(FakeClock())
    state.apply(started(num_clients=2, rounds=1, epochs=1, steps=40))
    step = 0

    def feed(n: int, d: float, g: float, **extra) -> None:
        nonlocal step
        for _ in range(n):
            state.apply(losses("c000", 1, step, d=d, g=g))
            state.apply(losses("c001", 1, step))
            step += 1

    feed(D_WIN_STEPS - 1, D_WIN_LOSS / 2, 3.0)
    assert all(d.health == "ok" for d in state.snapshot().domains)
    feed(1, D_WIN_LOSS / 2, 3.0)
    mnist = next(d for d in state.snapshot().domains if d.domain == "mnist")
    assert mnist.health == "D wins" and mnist.unhealthy == ("c000",)
    feed(G_COLLAPSE_STEPS, D_WIN_LOSS / 2, G_COLLAPSE_LOSS * 2)
    snap = state.snapshot()
    assert next(d for d in snap.domains if d.domain == "mnist").health == "G collapse"
    assert next(d for d in snap.domains if d.domain == "kmnist").health == "ok"
    text = text_of(render(snap))
    assert "G collapse c000" in text and "c000 !" in text
    logs = [m for _, m in snap.logs]
    assert any(m.startswith("mnist: D wins on c000") for m in logs)
    assert any(m.startswith("mnist: G collapse on c000") for m in logs)
    feed(1, 0.6, 1.0)  # D no longer wins: healthy again
    snap = state.snapshot()
    assert all(d.health == "ok" for d in snap.domains) and snap.logs[-1][1].startswith("mnist: healthy again")

    @dataclass(frozen=True)
    class LossesWithSpread(ClientLosses):
        fake_std: float = 1.0

    state.apply(LossesWithSpread("c001", 1, step, 0.5, 0.5, 0.5, 0.9, fake_std=FAKE_STD_MIN / 10))
    assert next(d for d in state.snapshot().domains if d.domain == "kmnist").health == "G collapse"


def test_snapshot_is_a_copy_and_sparkline_is_bounded():
    state = DashboardState(FakeClock())
    state.apply(started(num_clients=2))
    state.apply(TransferEvent("m", "c000", "server", "activation", 1, 0, "g_fwd", 10))
    snap = state.snapshot()
    state.apply(TransferEvent("m2", "c000", "server", "activation", 1, 0, "g_fwd", 10))
    state.apply(NodeStateEvent("c000", "computing"))
    c000 = next(n for n in snap.nodes if n.node_id == "c000")
    assert c000.sent == 10 and c000.state == "idle"
    assert sparkline(range(100), points=24) == sparkline(range(76, 100), points=24)
    assert len(sparkline(range(100), points=24)) == 24 and sparkline([]) == ""


def test_live_view_lifecycle_is_safe():
    console = Console(file=io.StringIO(), record=True, width=140)
    view = LiveView(None, console=console, refresh_per_second=20)
    run = started(num_clients=3, rounds=1, epochs=1, steps=1)
    view(run)
    assert view.running
    view(object())  # unknown events are ignored
    view(ClientLosses("c000", 1, 0, "bad", 0.1, 0.1, 0.1))  # a broken event is counted, never raised
    view.stop()
    view.stop()  # twice is fine
    assert not view.running
    view(RunFinished("interrupted", 1.0, "stopped by Ctrl-C"))  # after stop: still fine
    assert view.state.observer_errors == 1
    text = console.export_text()
    assert "c000" in text and "c002" in text
    with LiveView(console=Console(file=io.StringIO())) as other:
        other(run)
        assert other.running
    assert not other.running


def test_command_picks_live_view():
    from p2pgan.commands.scenario import _live_view

    assert isinstance(_live_view(None), LiveView)


def _run(tmp: Path, observer_factory, *more_observers) -> tuple[Path, object]:
    from p2pgan.config import load_scenario
    from p2pgan.run.session import run_scenario

    scenario = load_scenario(QUICK, ["training.rounds=1", "training.max_batches_per_epoch=2", f"output.dir={tmp}"])
    observer = observer_factory(tmp)
    outcome = run_scenario(scenario, [observer, *more_observers])
    assert outcome.status == "completed"
    return tmp, observer


def _rounds_without_wall(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_s")
    return rows


def _split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(parsed header, raw tensor bytes). The header is compared parsed, not as bytes: safetensors
    writes ``__metadata__`` keys in hash-map order, which differs between two saves of the same
    file even within one process."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def test_live_and_plain_runs_give_identical_results(tmp_path):
    from p2pgan.ui.progress import PlainProgress

    def live(folder: Path) -> LiveView:
        handle = (tmp_path / "live-console.txt").open("w")
        # A terminal-like console, so that every refresh is fully laid out and written while training.
        console = Console(file=handle, record=True, width=160, height=50, force_terminal=True)
        return LiveView(console=console, refresh_per_second=20)

    steps: list[PreparationStep] = []

    live_dir, view = _run(tmp_path / "live", live, lambda event: steps.append(event)
                          if isinstance(event, PreparationStep) else None)
    plain_dir, _ = _run(tmp_path / "plain", lambda folder: PlainProgress(io.StringIO()))

    assert _rounds_without_wall(live_dir) == _rounds_without_wall(plain_dir)
    assert (live_dir / "steps.jsonl").read_bytes() == (plain_dir / "steps.jsonl").read_bytes()
    weights = sorted(p.name for p in (live_dir / "weights").iterdir())
    assert weights and weights == sorted(p.name for p in (plain_dir / "weights").iterdir())
    assert any(name.endswith(".safetensors") for name in weights)
    for name in weights:
        if not name.endswith(".safetensors"):
            assert (live_dir / "weights" / name).read_bytes() == (plain_dir / "weights" / name).read_bytes()
            continue
        live_header, live_data = _split_safetensors(live_dir / "weights" / name)
        plain_header, plain_data = _split_safetensors(plain_dir / "weights" / name)
        assert live_data == plain_data  # every tensor byte-for-byte
        assert live_header == plain_header

    # The dashboard of that real run shows its rounds, node ids and cut tuples.
    assert not view.running and view.frames >= 1
    plan = json.loads((live_dir / "plan.json").read_text())
    text = text_of(render(view.snapshot()))
    assert "scenario quick" in text and "status completed" in text and "1/1" in text and "2/2" in text
    for client in plan["clients"]:
        line = next(line for line in text.splitlines() if f" {client['client_id']} " in f" {line} ")
        assert cut_str(client["cut"]) in line and client["domain"] in line
    snap = view.snapshot()
    assert {d.domain for d in snap.domains} == {"mnist", "fashion-mnist"}
    assert all(d.latest for d in snap.domains) and snap.rounds_done == 1
    assert all(n.sent > 0 and n.received > 0 for n in snap.nodes)
    assert "c005" in view.console.export_text()  # what the Live itself drew
    # The preparation walk told the observers each step, started then done, before the run began.
    names = ["data mnist", "data fashion-mnist", "partition", "model costs", "cuts"]
    assert [(e.name, e.state) for e in steps] == [(n, state) for n in names for state in ("started", "done")]
    done = {e.name: e for e in steps if e.state == "done"}
    assert done["partition"].detail == "6 clients, non-iid" and done["cuts"].detail.startswith("policy mixed")
    assert all(e.seconds is not None and e.seconds >= 0 for e in done.values())
    assert [p.name for p in snap.preparation] == names and all(p.state == "done" for p in snap.preparation)
    assert any(message.startswith("prepared in ") for _, message in snap.logs)


@pytest.mark.parametrize("height", [30, 40, 60])
def test_dashboard_fits_the_terminal_height(height):
    clock = FakeClock()
    state = DashboardState(clock)
    run = started(num_clients=40)
    state.apply(run)
    for i in range(8):
        state.apply(LogEvent(f"line {i}"))
    snap = state.snapshot()
    console = Console(record=True, width=120, height=height, file=io.StringIO(), color_system=None)
    console.print(render(snap, height=height, page=0))
    lines = console.export_text().splitlines()
    assert len(lines) < height  # one line left for the cursor
    shown = [n.node_id for n in run.nodes if any(f"│ {n.node_id} " in line for line in lines)]
    assert shown[0] == "server" and shown[1] == "c000" and len(shown) >= 1 + 4


# -- preparation, final evaluation, dropped clients, small terminals ---------------------------


def lines_at(renderable, width: int, height: int) -> list[str]:
    """What a ``width`` x ``height`` terminal shows of ``renderable`` (rich's own layout)."""
    console = Console(record=True, width=width, height=height, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def finished_run(num_clients: int, clock: FakeClock, *, final: bool = True, dropped: int = 1) -> DashboardState:
    """A 3-round run fed its preparation, rounds, a dropout and (optionally) the final evaluation."""
    state = DashboardState(clock, title="demo")
    for name, seconds in (("data mnist", 0.2), ("model costs", 1.3), ("judge mnist", 2.5)):
        state.apply(PreparationStep(name, "started"))
        clock.t += seconds
        state.apply(PreparationStep(name, "done", f"{name} ready", seconds))
    run = started(num_clients=num_clients, rounds=3, epochs=1, steps=4)
    state.apply(run)
    clients = [n.node_id for n in run.nodes if n.role == "client"]
    for round_ in (1, 2, 3):
        for step in range(4):
            clock.t += 1.0
            for cid in clients:
                state.apply(losses(cid, round_, step))
                state.apply(TransferEvent(f"m{cid}", cid, "server", "activation", round_, step, "g_fwd", 1000))
        if round_ == 2 and dropped:
            gone = tuple(clients[:dropped])
            state.apply(ParticipationChanged(2, 3, tuple(clients[dropped:]), gone, f"{gone[0]} dropped out (scripted)"))
        state.apply(aggregation(round_, clients, {c: i % 2 for i, c in enumerate(clients)},
                                {"mnist": {"gen_score": 1.5}, "kmnist": {"gen_score": 1.2}}))
        state.apply(SimulatedTime(round_, 4 * round_, simulated_s=10.0 * round_, wall_s=4.0 * round_))
    if final:
        state.apply(FinalEvaluation("started", 3))
        clock.t += 4.0
        state.apply(FinalEvaluation("done", 3, {"mnist": {"gen_score": 1.51, "fid": 80.1, "accuracy": 61.0, "f1": 58.2},
                                                "kmnist": {"gen_score": 1.21, "fid": 95.1, "accuracy": 40.0, "f1": 38.0}},
                                    0.62, 4.0))
        state.apply(LogEvent("final metrics (round 3, ARI 0.620):\ndomain ...\nmnist ..."))
        state.apply(RunFinished("completed", 16.0))
    return state


def test_preparation_steps_show_as_a_checklist_before_the_run_starts():
    clock = FakeClock()
    view = LiveView(SimpleNamespace(name="demo"), console=Console(file=io.StringIO(), width=80, height=24),
                    clock=clock)
    view(PreparationStep("data mnist", "started"))
    assert view.running  # the display comes up with the first step, not only at RunStarted
    clock.t += 0.25
    view(PreparationStep("data mnist", "done", "5,000 train images", 0.25))
    view(PreparationStep("judge mnist", "started"))
    clock.t += 7.0
    text = "\n".join(lines_at(render(view.snapshot(), height=24), 80, 24))
    assert "p2pgan · demo · preparing" in text and "status preparing" in text and "scenario demo" in text
    assert "✓  data mnist" in text and "5,000 train images" in text and "0.2s" in text
    assert "…  judge mnist" in text and "running" in text and "7.0s" in text  # elapsed while it runs
    view(PreparationStep("judge mnist", "failed", "cannot read the cache"))
    text = "\n".join(lines_at(render(view.snapshot()), 80, 24))
    assert "status failed" in text and "✗  judge mnist" in text and "cannot read the cache" in text
    view(PreparationStep("judge kmnist", "started"))  # a failed judge does not end the preparation
    assert "status preparing" in "\n".join(lines_at(render(view.snapshot()), 80, 24))
    view.stop()
    assert not view.running


def test_no_latency_claim_before_the_first_round_closes():
    clock = FakeClock()
    state = DashboardState(clock)
    state.apply(started(num_clients=2))
    text = text_of(render(state.snapshot()))
    assert "simulated: after round 1" in text and "no latency engine" not in text
    state.apply(SimulatedTime(1, 3, simulated_s=30.0, wall_s=6.0))
    assert "simulated 00:30 (×5.00)" in text_of(render(state.snapshot()))


def test_final_evaluation_status_then_final_metrics_panel():
    clock = FakeClock()
    state = finished_run(6, clock, final=False)
    state.apply(FinalEvaluation("started", 3))
    clock.t += 12
    text = text_of(render(state.snapshot()))
    assert "status evaluating" in text and "final evaluation · round 3 · 00:12 so far" in text
    assert "final metrics ·" not in text
    state.apply(FinalEvaluation("done", 3, {"mnist": {"gen_score": 1.51, "fid": 80.14, "accuracy": 61.0, "f1": 58.2},
                                            "kmnist": {"gen_score": 1.21, "fid": 95.1, "accuracy": None}}, 0.62, 12.5))
    state.apply(LogEvent("final metrics (round 3, ARI 0.620):\ndomain  cluster ...\nmnist ..."))
    text = text_of(render(state.snapshot()))
    assert "status running" in text  # until RunFinished says how the run ended
    assert "final metrics · round 3 · ARI 0.62 · evaluated in 12.5s" in text
    mnist = next(line for line in text.splitlines() if line.startswith("│ mnist ") and "80.1" in line)
    assert "1.51" in mnist and "61.0" in mnist and "58.2" in mnist
    kmnist = next(line for line in text.splitlines() if line.startswith("│ kmnist ") and "95.1" in line)
    assert "1.21" in kmnist and kmnist.split()[-2:] == ["-", "│"]  # f1 unmeasured: a dash
    assert "mnist ..." not in text  # a multi-line log record shows its first line only
    state.apply(RunFinished("completed", 40.0))
    assert "status completed" in text_of(render(state.snapshot()))
    failed = finished_run(2, FakeClock(), final=False)
    failed.apply(FinalEvaluation("failed", 3, seconds=1.0, detail="final metrics failed: ValueError: boom"))
    assert "final evaluation failed" in text_of(render(failed.snapshot()))


def test_last_round_closing_is_shown_while_its_metrics_run():
    state = DashboardState(FakeClock())
    state.apply(started(num_clients=2, rounds=1, epochs=1, steps=2))
    for step in range(2):
        for cid in ("c000", "c001"):
            state.apply(losses(cid, 1, step))
    assert "status closing round 1" in text_of(render(state.snapshot()))
    state.apply(aggregation(1, ["c000", "c001"], {"c000": 0, "c001": 0}))
    assert "status running" in text_of(render(state.snapshot()))


def test_dropped_clients_are_marked_and_counted():
    clock = FakeClock()
    state = finished_run(6, clock, final=False, dropped=2)
    text = text_of(render(state.snapshot(), page=0))
    assert "clients 6 (2 dropped)" in text
    for cid, expected in (("c000", "dropped"), ("c001", "dropped"), ("c002", "idle")):
        row = next(line for line in text.splitlines() if f" {cid} " in line)
        assert f" {expected} " in row
    assert "round 2 step 3: c000 dropped out (scripted) (4 taking part)" in text
    many = finished_run(30, FakeClock(), final=False, dropped=3)
    summary = next(line for line in text_of(render(many.snapshot(), max_node_rows=10)).splitlines() if "all 30" in line)
    assert "dropped 3" in summary and "idle 27" in summary
    state.apply(ParticipationChanged(3, 0, tuple(f"c{i:03d}" for i in range(6)), (), "c000, c001 rejoined"))
    text = text_of(render(state.snapshot(), page=0))
    assert "clients 6   scenario" in text and "c000, c001 rejoined (6 taking part)" in text
    assert " idle " in next(line for line in text.splitlines() if " c000 " in line)


@pytest.mark.parametrize("width,height", [(80, 24), (120, 40)])
@pytest.mark.parametrize("num_clients", [6, 40])
@pytest.mark.parametrize("final", [False, True])
def test_dashboard_is_legible_at_common_terminal_sizes(width, height, num_clients, final):
    """Nothing essential is cut: the frame fits (a line left for the cursor), every line is one
    panel row (no wrapping), the status line is whole, node rows are whole rows (or one summary
    row), and the final metrics show when the run has them."""
    clock = FakeClock()
    state = finished_run(num_clients, clock, final=final)
    lines = lines_at(render(state.snapshot(), height=height, page=0), width, height)
    assert len(lines) <= height - 1
    assert lines[0].startswith("╭─ p2pgan · demo") and lines[-1].startswith("╰")
    for line in lines[1:-1]:  # one panel row each: wrapped or overflowing output breaks the borders
        assert line.startswith("│ ") and line.endswith(" │") and len(line) == width, line
    body = [line[2:-2] for line in lines[1:-1]]
    status = body[0]
    assert status.startswith(f"status {'completed' if final else 'running'}   clients {num_clients} (1 dropped)")
    assert "…" not in status
    assert any(line.startswith("results /tmp/results/demo") for line in body)
    assert any(line.startswith("rounds ") and "3/3" in line for line in body)
    node_rows = [line for line in body if line.startswith(("c0", "server "))]
    assert node_rows[0].startswith("server ")
    for row in node_rows[1:]:  # a client row is whole: id, domain, cut tuple, state, bytes
        cid = row.split()[0]
        index = int(cid[1:])
        assert cut_str(((index >> 3) & 1, (index >> 2) & 1, (index >> 1) & 1, index & 1)) in row
        assert ("dropped" if index == 0 else "idle") in row and "kB" in row and "…" not in row
    shown = len(node_rows) - 1
    if shown < num_clients:  # not all clients fit: paged or collapsed, with a summary row of all of them
        assert any(line.startswith(f"all {num_clients} ") and "dropped 1" in line for line in body)
    if num_clients == 6 and height >= 40:
        assert shown == 6
    if final:
        assert any(line.startswith("final metrics · round 3") for line in body)
        assert any(line.startswith("mnist ") and "80.1" in line and "58.2" in line for line in body)
    elif height >= 40 and num_clients == 6:
        assert any("dropped out (scripted)" in line for line in body)  # the log has room there
