"""Every strategy runs end to end over the same nodes and transport; run shapes do what they say."""

from __future__ import annotations

import json

import pytest
import torch

from p2pgan.config import load_scenario
from p2pgan.errors import ConfigError
from p2pgan.strategies.catalogue import STRATEGIES, strategy_class
from p2pgan.strategies.fedavg import DEFAULT_USPLIT_CUT
from p2pgan.ids import SERVER_ID
from p2pgan.protocol.messages import MessageKind
from p2pgan.run.prepare import prepare_run
from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR
from p2pgan.run.session import run_scenario
from transports.memory import MemoryTransport


def tiny(repo_root, tmp_path, strategy, *extra):
    return load_scenario(repo_root / "scenarios" / "quick.yaml", [
        f"strategy.name={strategy}", "training.rounds=2", "training.max_batches_per_epoch=2",
        f"output.dir={tmp_path / strategy}", *extra])


def run_tapped(scenario):
    transport = MemoryTransport(receive_timeout_s=60)
    seen = []
    transport.add_tap(seen.append)
    outcome = run_scenario(scenario, transport=transport)
    return outcome, seen


def test_the_catalogue_names_every_strategy_once_and_refuses_others():
    assert all(cls.name == name for name, cls in STRATEGIES.items())
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        strategy_class("nope")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_end_to_end_and_writes_results(repo_root, tmp_path, strategy):
    scenario = tiny(repo_root, tmp_path, strategy)
    outcome, seen = run_tapped(scenario)
    assert outcome.status == "completed", outcome.summary
    out = scenario.results_dir
    for name in ("config.json", "plan.json", "rounds.jsonl", "steps.jsonl", "summary.json", "weights/clusters.json"):
        assert (out / name).is_file(), name
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert list(out.glob("samples/*.png"))
    losses = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert losses and all(torch.isfinite(torch.tensor([s["d_loss"], s["g_loss"]])).all() for s in losses)
    # parameters travel as messages every round (so the latency model counts their bytes)
    assert any(m.kind is MessageKind.PARAMS for m in seen) and any(m.kind is MessageKind.AGGREGATE for m in seen)


def test_fedavg_gan_clients_never_send_activations(repo_root, tmp_path):
    scenario = tiny(repo_root, tmp_path, "fedavg-gan")
    outcome, seen = run_tapped(scenario)
    assert outcome.status == "completed"
    assert all(c.full_local for c in outcome.prepared.plan.clients)
    assert outcome.prepared.plan.server_blocks() == ()
    kinds = {m.kind for m in seen}
    assert kinds == {MessageKind.PARAMS, MessageKind.AGGREGATE}
    # every client sends its whole G and D at round end
    first = next(m for m in seen if m.kind is MessageKind.PARAMS)
    assert {k.split(".")[0] for k in first.tensors} == set(GENERATOR.block_names + DISCRIMINATOR.block_names)


def test_usplit_uses_one_homogeneous_cut(repo_root, tmp_path):
    default = prepare_run(tiny(repo_root, tmp_path, "usplit-fedavg", "cuts.policy=mixed"))
    assert {c.cut for c in default.plan.clients} == {DEFAULT_USPLIT_CUT}
    fixed = prepare_run(load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "strategy.name=usplit-fedavg", "cuts={fixed: [1, 0, 1, 0]}", f"output.dir={tmp_path}"]))
    assert {c.cut.as_tuple() for c in fixed.plan.clients} == {(1, 0, 1, 0)}
    assert not any(c.full_local for c in fixed.plan.clients)


def test_centralized_pools_every_partition_into_one_client(repo_root, tmp_path):
    split = prepare_run(tiny(repo_root, tmp_path, "huscf"))
    pooled = prepare_run(tiny(repo_root, tmp_path, "centralized"))
    assert len(pooled.plan.clients) == 1
    (client,) = pooled.plan.clients
    assert client.full_local
    assert client.num_examples == sum(c.num_examples for c in split.plan.clients)
    assert pooled.records[0].domain == "mnist+fashion-mnist"
    data = pooled.client_data[client.client_id]
    assert len(data) == client.num_examples
    assert torch.equal(data.labels, torch.cat([split.client_data[c].labels for c in split.plan.client_ids]))


def test_md_gan_generator_on_server_synthetic_images_down(repo_root, tmp_path):
    scenario = tiny(repo_root, tmp_path, "md-gan")
    outcome, seen = run_tapped(scenario)
    assert outcome.status == "completed"
    down = [m for m in seen if m.src == SERVER_ID and m.kind is MessageKind.ACTIVATION]
    assert down and all(tuple(m.tensors["images"].shape[1:]) == (1, 28, 28) for m in down)
    assert all(not m.tensors["labels"].is_floating_point() for m in down)  # server-sampled labels
    up = [m for m in seen if m.src != SERVER_ID]
    assert {m.kind for m in up} == {MessageKind.GRADIENT, MessageKind.PARAMS}
    # clients send only their discriminator; nothing of G ever leaves the server
    params = [m for m in up if m.kind is MessageKind.PARAMS]
    assert all({k.split(".")[0] for k in m.tensors} == set(DISCRIMINATOR.block_names) for m in params)
    rounds = [json.loads(line) for line in (scenario.results_dir / "rounds.jsonl").read_text().splitlines()]
    swap = rounds[0]["details"]["d_swap"]
    assert sorted(swap) == sorted(swap.values()) and all(k != v for k, v in swap.items())
