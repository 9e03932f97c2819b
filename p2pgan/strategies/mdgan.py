"""MD-GAN-style baseline (Hardy, Le Merrer, Sericola 2019): one generator, many discriminators.

The server holds the whole conditional generator G; every client holds a whole discriminator D
and its private data. One iteration, over the same transport, messages and events as the split
engine:

1. The server samples, for each client, ``batch_size`` labels (uniform over the classes: it knows
   nothing about the clients' label distributions) and z from its own seeded stream, runs G once
   batched over all clients (client-id order), and sends every client its slice: the **synthetic
   images and their labels** (``ACTIVATION``, phase ``g_fwd``).
2. Each client trains its D on its real batch (target 1) and the received fakes (target 0), then
   computes the generator's feedback: the gradient of ``BCE(D(fake), 1)`` with respect to the
   fake images, sent back up (``GRADIENT``, phase ``g_bwd``).
3. The server back-propagates the mean of the clients' feedback through G and steps G's optimizer.

At each round's end the discriminators are swapped between clients (MD-GAN's peer-to-peer swap,
routed through the server here because the transport's clients talk only to the server): client
``i`` sends its D (``PARAMS``) and receives the D of the previous client in id order
(``AGGREGATE``), a cyclic shift. There is no parameter averaging.

Privacy, compared with HuSCF-GAN: the "nothing leaves G's tail" property is broken by design —
synthetic images (and the labels they were generated for) travel from the server to every
client, and clients send image-shaped gradients (of their D's loss with respect to those images)
back. Real data and real labels still never leave a client.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from p2pgan.engine.client import BatchSampler

from p2pgan.protocol.events import ClientLosses
from p2pgan.engine.loops import run_client, run_server
from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Message, MessageKind, Phase
from p2pgan.ids import SERVER_ID
from p2pgan.engine.port import NodePort
from p2pgan.protocol.events import AggregationDone
from p2pgan.protocol.params import flatten_blocks, float_state, unflatten_blocks
from p2pgan.plan.setup import node_seed
from p2pgan.bus import EventBus
from p2pgan.protocol.federation import FederationResult
from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, build_initial_blocks
from p2pgan.model.segments import Segment


class _Node:
    """What both MD-GAN nodes share: their plan, random stream and traced port."""

    node_id: str

    def __init__(self, prepared, node_id: str, endpoint, bus: EventBus) -> None:
        self.node_id = node_id
        self._prepared = prepared
        self._setup = prepared.setup
        self._schedule = prepared.plan.schedule
        self._bus = bus
        self._gen = torch.Generator().manual_seed(node_seed(prepared.setup.seed, node_id))
        self._port = NodePort(node_id, endpoint, bus, prepared.setup.costs)


class MDGanServer(_Node):
    """Holds G; generates for every client, applies the clients' averaged feedback."""

    def __init__(self, prepared, endpoint, bus: EventBus) -> None:
        super().__init__(prepared, SERVER_ID, endpoint, bus)
        blocks = build_initial_blocks(self._setup.model, self._setup.seed)
        self.blocks = {name: blocks[name] for name in GENERATOR.block_names}
        self._g = Segment(self.blocks)
        self._g_opt = self._setup.adam(list(self._g.parameters()))
        self._clients = prepared.plan.client_ids

    async def run(self) -> None:
        await run_server(self, self._schedule, self._bus)

    async def iteration(self, round_: int, step: int) -> None:
        self._port.at(round_, step)
        spec = self._setup.model
        batch = self._schedule.batch_size
        total = batch * len(self._clients)
        labels = torch.randint(0, spec.num_classes, (total,), generator=self._gen)
        z = torch.randn(total, spec.z_dim, generator=self._gen)
        self._port.state("computing")
        fake = self._g(z, labels)
        self._port.computed(GENERATOR.block_names, Phase.G_FWD, "fwd", total)
        for i, cid in enumerate(self._clients):
            part = slice(i * batch, (i + 1) * batch)
            await self._port.send(Message(MessageKind.ACTIVATION, SERVER_ID, cid, round_, step, Phase.G_FWD,
                                     {"images": fake[part].detach(), "labels": labels[part].clone()}))
        grads = []
        for cid in self._clients:  # client-id order, never arrival order
            msg = await self._port.receive(MessageKind.GRADIENT, cid, Phase.G_BWD)
            grads.append(msg.tensors["grad"])
        self._port.state("computing")
        self._g_opt.zero_grad(set_to_none=True)
        # MD-GAN averages the workers' feedback: each client's loss is a mean over its batch.
        torch.autograd.backward(fake, torch.cat(grads) / len(self._clients))
        self._g_opt.step()
        self._port.computed(GENERATOR.block_names, Phase.G_BWD, "bwd", total)

    async def federate(self, round_: int) -> FederationResult:
        self._port.at(round_, ROUND_LEVEL_STEP)
        d_states, losses = {}, {}
        for cid in self._clients:
            msg = await self._port.receive(MessageKind.PARAMS, cid, Phase.FEDERATE)
            d_states[cid] = unflatten_blocks(msg.tensors)
            losses[cid] = {k: float(v) for k, v in msg.meta.items() if k != "num_examples"}
        self._port.computed((), Phase.FEDERATE, "fwd", len(self._clients), 0.0)
        ids = list(self._clients)
        # Cyclic swap: client i continues with the discriminator client i-1 trained.
        source = {cid: ids[(i - 1) % len(ids)] for i, cid in enumerate(ids)}
        client_blocks = {cid: d_states[source[cid]] for cid in ids}
        g_state = {name: {k: v.clone() for k, v in float_state(block).items()} for name, block in self.blocks.items()}
        for cid in ids:
            await self._port.send(Message(MessageKind.AGGREGATE, SERVER_ID, cid, round_, ROUND_LEVEL_STEP,
                                     Phase.FEDERATE, flatten_blocks(client_blocks[cid])))
        model = {**g_state, **client_blocks[ids[0]]}
        result = FederationResult(client_blocks, g_state, {cid: 0 for cid in ids}, {0: model},
                                  {"strategy": "md-gan", "d_swap": source, "note": "no averaging; D swapped"})
        self._bus.publish(AggregationDone(round_, result, losses))
        return result


class MDGanClient(_Node):
    """Holds a whole D and its private data; sends the generator feedback up."""

    def __init__(self, prepared, client_id: str, endpoint, bus: EventBus) -> None:
        super().__init__(prepared, client_id, endpoint, bus)
        self._data = prepared.client_data[client_id]
        self._sampler = BatchSampler(len(self._data), self._schedule.batch_size, self._gen)
        blocks = build_initial_blocks(self._setup.model, self._setup.seed)
        self.blocks = {name: blocks[name] for name in DISCRIMINATOR.block_names}
        self._d = Segment(self.blocks)
        self._d_opt = self._setup.adam(list(self._d.parameters()))

    async def run(self) -> None:
        await run_client(self, self._schedule, self._bus)

    async def iteration(self, round_: int, step: int) -> ClientLosses:
        self._port.at(round_, step)
        idx = self._sampler.next_indices()
        real, labels = self._data.images[idx], self._data.labels[idx]
        msg = await self._port.receive(MessageKind.ACTIVATION, SERVER_ID, Phase.G_FWD)
        fake, fake_labels = msg.tensors["images"], msg.tensors["labels"].long()
        self._port.state("computing")
        names = DISCRIMINATOR.block_names
        out_fake = self._d(fake, fake_labels)
        self._port.computed(names, Phase.D_FAKE, "fwd", fake.shape[0])
        out_real = self._d(real, labels)
        self._port.computed(names, Phase.D_REAL, "fwd", real.shape[0])
        loss_fake = F.binary_cross_entropy(out_fake, torch.zeros_like(out_fake))
        loss_real = F.binary_cross_entropy(out_real, torch.ones_like(out_real))
        d_loss = 0.5 * (loss_fake + loss_real)
        self._d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self._d_opt.step()
        self._port.computed(names, Phase.D_BWD, "bwd", fake.shape[0] + real.shape[0])

        fake = fake.clone().requires_grad_(True)
        out_adv = self._d(fake, fake_labels)
        self._port.computed(names, Phase.G_ADV, "fwd", fake.shape[0])
        g_loss = F.binary_cross_entropy(out_adv, torch.ones_like(out_adv))
        (grad,) = torch.autograd.grad(g_loss, fake)
        self._port.computed(names, Phase.G_ADV_BWD, "bwd", fake.shape[0])
        await self._port.send(Message(MessageKind.GRADIENT, self.node_id, SERVER_ID, round_, step, Phase.G_BWD,
                                 {"grad": grad.detach()}))
        return ClientLosses(self.node_id, round_, step, loss_real.item(), loss_fake.item(), d_loss.item(),
                            g_loss.item())

    async def federate(self, round_: int, losses: dict[str, float]) -> None:
        self._port.at(round_, ROUND_LEVEL_STEP)
        states = {name: float_state(block) for name, block in self.blocks.items()}
        await self._port.send(Message(MessageKind.PARAMS, self.node_id, SERVER_ID, round_, ROUND_LEVEL_STEP,
                                 Phase.FEDERATE, flatten_blocks(states), {"num_examples": len(self._data), **losses}))
        reply = await self._port.receive(MessageKind.AGGREGATE, SERVER_ID, Phase.FEDERATE)
        for name, state in unflatten_blocks(reply.tensors).items():
            self.blocks[name].load_state_dict(state, strict=False)
        self._port.forget_received()
