"""The node engine on a device (``execution.device``): where its tensors live.

Without a GPU the device here is ``meta``: tensors with shapes and no values, on which every kernel
runs and from which nothing can be read back. A node built for it must keep its blocks, Adam
state, batches, noise, everything it sends and everything it receives there, so that an iteration
runs to the first read of a value (its losses, the one host read of an iteration), and a host
tensor mixed into its computations fails before that. The GPU variants, with values compared, are
in tests/test_cohort.py and tests/test_http_runs.py (skipped without CUDA).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch

from p2pgan.bus import EventBus
from p2pgan.config import load_scenario
from p2pgan.engine.port import NodePort
from p2pgan.errors import P2PGanError
from p2pgan.ids import SERVER_ID
from p2pgan.model.recompute import ReleasableOutputs, SavedTensors
from p2pgan.plan.nodedata import LocalData
from p2pgan.protocol.messages import Message, MessageKind, Phase
from p2pgan.run.nodes import run_nodes
from p2pgan.run.prepare import execution_device, prepare_run
from transports.memory import MemoryTransport

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quick.yaml"
META = torch.device("meta")
TINY = ["training.rounds=1", "training.max_batches_per_epoch=1", "training.batch_size=4",
        "domains={mnist: 2, fashion-mnist: 1}", "model.width=0.125"]


def _message(**tensors: torch.Tensor) -> Message:
    return Message(MessageKind.ACTIVATION, "c000", SERVER_ID, 1, 0, Phase.D_REAL, tensors, {"n": 3})


def test_a_message_is_put_on_a_device_once():
    msg = _message(act=torch.ones(2, 3), grad=torch.zeros(4))
    assert msg.on(torch.device("cpu")) is msg  # already there: no copy
    moved = msg.on(META)
    assert {t.device for t in moved.tensors.values()} == {META}
    assert moved.key == msg.key and moved.meta == msg.meta
    assert {name: t.shape for name, t in moved.tensors.items()} == {name: t.shape for name, t in msg.tensors.items()}
    assert moved.on(META) is moved
    assert msg.tensors["act"].device.type == "cpu"  # the original is left as it was


def test_a_node_port_puts_what_it_receives_on_its_device():
    """A wire delivers host tensors; a node on a device receives them there."""

    async def go(device):
        transport = MemoryTransport(receive_timeout_s=5)
        endpoints = await transport.open(["c000", SERVER_ID])
        port = NodePort(SERVER_ID, endpoints[SERVER_ID], EventBus(), costs=None, device=device)
        port.at(1, 0)
        await endpoints["c000"].send(_message(act=torch.ones(2, 3)))
        got = await port.receive(MessageKind.ACTIVATION, "c000", Phase.D_REAL)
        await transport.close()
        return got

    assert asyncio.run(go(META)).tensors["act"].device == META
    assert asyncio.run(go(None)).tensors["act"].device.type == "cpu"


def test_local_data_goes_to_a_device_and_draws_its_batches_there():
    data = LocalData(torch.arange(24.0).reshape(6, 1, 2, 2), torch.arange(6))
    assert data.on(torch.device("cpu")) is data
    indices = torch.tensor([4, 1])
    images, labels = data.batch(indices)
    assert labels.tolist() == [4, 1] and torch.equal(images, data.images[indices])
    on_meta = data.on(META)
    images, labels = on_meta.batch(indices)  # the sampler's indices are the host's
    assert (images.device, labels.device) == (META, META) and images.shape == (2, 1, 2, 2)
    assert len(on_meta) == len(data)


@pytest.mark.parametrize("engine", ["nodes", "cohort"])
def test_execution_device_is_resolved_where_the_engine_computes(engine, monkeypatch):
    def device(name):
        return execution_device(load_scenario(QUICK, [f"execution.engine={engine}", f"execution.device={name}"]))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device("auto") == torch.device("cuda") and device("cuda") == torch.device("cuda")
    assert device("cpu") == torch.device("cpu")
    # Ray's actors compute on the CPU, whatever this machine has: auto is the CPU there.
    assert execution_device(load_scenario(QUICK, ["execution.engine=ray", "execution.device=auto"])) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device("auto") == torch.device("cpu")
    with pytest.raises(P2PGanError, match=r"quick.yaml:execution.device: cuda asked for, but this machine has no"):
        device("cuda")


@pytest.mark.parametrize("strategy", ["huscf", "fedprox", "md-gan"])
def test_every_tensor_of_a_node_iteration_is_on_the_nodes_device(strategy, monkeypatch):
    """The split nodes (and fedprox's client, and md-gan's own nodes) on ``meta``: their blocks and
    Adam state are there, every message they send is, and the iteration runs to its losses."""
    prepared = prepare_run(load_scenario(QUICK, [*TINY, f"strategy.name={strategy}"]))
    prepared = dataclasses.replace(prepared, setup=dataclasses.replace(prepared.setup, device=META))
    sent: list[tuple[str, str, torch.device]] = []
    deliver = MemoryTransport._deliver

    async def recording(self, msg):
        sent.extend((msg.src, name, t.device) for name, t in msg.tensors.items())
        await deliver(self, msg)

    monkeypatch.setattr(MemoryTransport, "_deliver", recording)
    # Every meta tensor's data pointer is 0, and the scopes that free and rebuild saved
    # activations key them on data pointers: register nothing with them, so a forward's saved
    # tensors stay as they are (only memory differs; the CUDA tests run them on a GPU).
    for scope, method in ((SavedTensors, "add_recipe"), (SavedTensors, "add_pieces"), (ReleasableOutputs, "add")):
        monkeypatch.setattr(scope, method, lambda self, *args, **kwargs: None)
    built = []
    create = type(_strategy(prepared)).create_node

    def create_node(self, prepared, node_id, endpoint, bus):
        node = create(self, prepared, node_id, endpoint, bus)
        built.append(node)
        return node

    monkeypatch.setattr(type(_strategy(prepared)), "create_node", create_node)
    with pytest.raises(RuntimeError, match=r"item\(\) cannot be called on meta tensors"):
        asyncio.run(run_nodes(prepared, MemoryTransport(receive_timeout_s=10), EventBus()))
    assert {n.node_id for n in built} == {SERVER_ID, *prepared.plan.client_ids}
    for node in built:
        params = [p for block in node.blocks.values() for p in block.parameters()]
        assert params and {p.device for p in params} == {META}, node.node_id
        moments = [t for opt in node._optimizers.values() if opt is not None
                   for state in opt.state.values() for key, t in state.items() if key != "step"]
        assert {t.device for t in moments} <= {META}, node.node_id
    # Up and down: the server's messages and the clients' (a client holding every block sends none).
    senders = {src for src, _, _ in sent}
    assert SERVER_ID in senders and senders - {SERVER_ID}, senders
    assert {device for _, _, device in sent} == {META}, sent


def _strategy(prepared):
    from p2pgan.strategies.catalogue import strategy_for

    return strategy_for(prepared.scenario)
