"""Privacy audit: nothing but activations, gradients and parameters ever leaves a client."""

from __future__ import annotations

import torch

from p2pgan.config import load_scenario
from p2pgan.ids import SERVER_ID
from p2pgan.protocol.messages import Message, MessageKind
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.run.prepare import prepare_run
from p2pgan.model.segments import all_cut_options
from p2pgan.run.session import run_scenario
from transports.memory import MemoryTransport

IMAGE_NUMEL = 28 * 28


def quick(repo_root, tmp_path, *extra):
    return load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "training.rounds=2", "training.max_batches_per_epoch=2", "cuts.policy=mixed",
        f"output.dir={tmp_path / 'out'}", *extra])


def test_no_client_message_carries_images_labels_or_real_data(repo_root, tmp_path):
    scenario = quick(repo_root, tmp_path)
    prepared = prepare_run(scenario)
    transport = MemoryTransport(receive_timeout_s=30)
    seen: list[Message] = []
    transport.add_tap(seen.append)
    outcome = run_scenario(scenario, transport=transport, prepared=prepared)
    assert outcome.status == "completed"

    from_clients = [m for m in seen if m.src != SERVER_ID]
    assert {m.kind for m in from_clients} == {MessageKind.ACTIVATION, MessageKind.GRADIENT, MessageKind.PARAMS}
    assert len(from_clients) > 50
    for msg in from_clients:
        real = prepared.client_data[msg.src].images.flatten(1)  # [N, 784]
        for name, tensor in msg.tensors.items():
            where = f"{msg.msg_id}:{name}"
            assert tensor.is_floating_point(), f"integer tensor (labels?) in {where}"
            if msg.kind is MessageKind.PARAMS:
                continue  # model weights, never per-example data
            assert tuple(tensor.shape[1:]) != (1, 28, 28), f"image-shaped tensor in {where}"
            per_sample = tensor.flatten(1)
            assert per_sample.shape[1] != IMAGE_NUMEL, f"image-sized rows in {where}"
            # No row of the message may reproduce (a prefix of) one of this client's real images.
            width = min(per_sample.shape[1], IMAGE_NUMEL)
            distance = torch.cdist(per_sample[:, :width].float(), real[:, :width].float())
            assert distance.min() > 1e-3, f"{where} reproduces real data"
    # Labels never travel: no message anywhere (either direction) holds an integer tensor.
    assert all(t.is_floating_point() for m in seen for t in m.tensors.values())


def test_server_never_holds_label_consuming_blocks():
    clients = tuple(ClientPlan(f"c{i:03d}", cut, 10) for i, cut in enumerate(all_cut_options()))
    plan = RunPlan(clients, Schedule(1, 1, 1, 4))
    from p2pgan.model.blocks import ModelSpec, build_initial_blocks

    blocks = build_initial_blocks(ModelSpec(width=0.125, z_dim=8), seed=0)
    assert plan.server_blocks()  # every offloadable block is in use by someone
    for name in plan.server_blocks():
        assert not blocks[name].needs_labels, f"server would need labels for {name}"
    for client in clients:
        for name in ("g0", "d0", "d4", "g4"):
            assert name in client.split.client_blocks
