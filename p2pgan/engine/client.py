"""A client: owns its data, labels, head/tail segments of G and D, and their optimizers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from p2pgan.protocol.messages import ROUND_LEVEL_STEP, Message, MessageKind, Phase

from p2pgan.ids import SERVER_ID
from p2pgan.engine.loops import run_client
from p2pgan.plan.run import ClientPlan, Schedule
from p2pgan.engine.port import NodePort
from p2pgan.plan.setup import NodeSetup, node_seed
from p2pgan.protocol.params import flatten_blocks, float_state, unflatten_blocks
from p2pgan.bus import EventBus
from p2pgan.plan.nodedata import LocalData
from p2pgan.protocol.events import ClientLosses
from p2pgan.model.blocks import build_initial_blocks
from p2pgan.model.segments import NetworkSplit, Segment
from p2pgan.protocol.endpoint import Endpoint


class BatchSampler:
    """Endless stream of batches: consecutive slices of fresh seeded permutations."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self._size = size
        self._batch = batch_size
        self._gen = generator
        self._order = torch.empty(0, dtype=torch.long)

    def next_indices(self) -> torch.Tensor:
        while self._order.numel() < self._batch:
            self._order = torch.cat([self._order, torch.randperm(self._size, generator=self._gen)])
        batch, self._order = self._order[: self._batch], self._order[self._batch:]
        return batch


@dataclass
class _NetworkSegments:
    split: NetworkSplit
    head: Segment
    tail: Segment

    @property
    def via_server(self) -> bool:
        return bool(self.split.server)


@dataclass
class RoundLosses:
    sums: dict[str, float] = field(default_factory=lambda: {"d_real": 0.0, "d_fake": 0.0, "d_loss": 0.0, "g_loss": 0.0})
    count: int = 0

    def add(self, losses: ClientLosses) -> None:
        for key in self.sums:
            self.sums[key] += getattr(losses, key)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}


class ClientNode:
    """Runs DESIGN §1.1's iteration from the client side, talking only through its endpoint."""

    def __init__(self, setup: NodeSetup, plan: ClientPlan, schedule: Schedule, data: LocalData,
                 endpoint: Endpoint, bus: EventBus) -> None:
        self.node_id = plan.client_id
        self.plan = plan
        self._setup = setup
        self._schedule = schedule
        self._data = data
        self._bus = bus
        self._gen = torch.Generator().manual_seed(node_seed(setup.seed, self.node_id))
        self._sampler = BatchSampler(len(data), schedule.batch_size, self._gen)
        blocks = build_initial_blocks(setup.model, setup.seed)
        self.blocks = {name: blocks[name] for name in plan.split.client_blocks}
        self._g = self._segments(plan.split.generator)
        self._d = self._segments(plan.split.discriminator)
        self._g_opt = setup.adam([p for n in plan.split.generator.client_blocks for p in self.blocks[n].parameters()])
        self._d_opt = setup.adam([p for n in plan.split.discriminator.client_blocks for p in self.blocks[n].parameters()])
        self._port = NodePort(self.node_id, endpoint, bus, setup.costs)

    def _segments(self, split: NetworkSplit) -> _NetworkSegments:
        head = Segment({n: self.blocks[n] for n in split.head})
        tail = Segment({n: self.blocks[n] for n in split.tail})
        return _NetworkSegments(split, head, tail)

    # -- the schedule -------------------------------------------------------------------------

    async def run(self) -> None:
        await run_client(self, self._schedule, self._bus)

    async def iteration(self, round_: int, step: int) -> ClientLosses:
        self._port.at(round_, step)
        idx = self._sampler.next_indices()
        real, labels = self._data.images[idx], self._data.labels[idx]
        batch = labels.shape[0]
        z = torch.randn(batch, self._setup.model.z_dim, generator=self._gen)
        ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)

        # 1. G forward: head -> server middle -> tail; the fake never leaves this client.
        g_head_out = self._run(self._g.head, Phase.G_FWD, z, labels)
        g_tail_in = await self._through_server(self._g, Phase.G_FWD, g_head_out)
        fake = self._run(self._g.tail, Phase.G_FWD, g_tail_in, labels)

        # 2. D step on fake.detach() (target 0) and real (target 1).
        d_fake_head = self._run(self._d.head, Phase.D_FAKE, fake.detach(), labels)
        await self._upload(self._d, Phase.D_FAKE, {"act": d_fake_head})
        d_real_head = self._run(self._d.head, Phase.D_REAL, real, labels)
        await self._upload(self._d, Phase.D_REAL, {"act": d_real_head})
        d_fake_in = await self._download_activation(self._d, Phase.D_FAKE, d_fake_head)
        out_fake = self._run(self._d.tail, Phase.D_FAKE, d_fake_in, labels)
        d_real_in = await self._download_activation(self._d, Phase.D_REAL, d_real_head)
        out_real = self._run(self._d.tail, Phase.D_REAL, d_real_in, labels)
        loss_fake = F.binary_cross_entropy(out_fake, zeros)
        loss_real = F.binary_cross_entropy(out_real, ones)
        d_loss = 0.5 * (loss_fake + loss_real)
        if self._d_opt is not None:
            self._d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self._computed(self._backward_blocks(self._d), Phase.D_BWD, "bwd", 2 * batch)
        if self._d.via_server:
            await self._upload(self._d, Phase.D_BWD, {"fake": d_fake_in.grad, "real": d_real_in.grad}, MessageKind.GRADIENT)
            grads = await self._download(Phase.D_BWD, MessageKind.GRADIENT)
            torch.autograd.backward([d_fake_head, d_real_head], [grads.tensors["fake"], grads.tensors["real"]])
            self._computed(self._d.split.head, Phase.D_BWD, "bwd", 2 * batch)
        if self._d_opt is not None:
            self._d_opt.step()

        # 3. G step: D(fake) with target 1; gradients flow back through D into G.
        if self._g_opt is not None:
            self._g_opt.zero_grad(set_to_none=True)
        adv_head = self._run(self._d.head, Phase.G_ADV, fake, labels)
        adv_in = await self._through_server(self._d, Phase.G_ADV, adv_head)
        out_adv = self._run(self._d.tail, Phase.G_ADV, adv_in, labels)
        g_loss = F.binary_cross_entropy(out_adv, ones)
        g_loss.backward()
        if self._d.via_server:
            self._computed(self._d.split.tail, Phase.G_ADV_BWD, "bwd", batch)
            await self._upload(self._d, Phase.G_ADV_BWD, {"grad": adv_in.grad}, MessageKind.GRADIENT)
            grads = await self._download(Phase.G_ADV_BWD, MessageKind.GRADIENT)
            torch.autograd.backward(adv_head, grads.tensors["grad"])
            self._computed(self._d.split.head, Phase.G_ADV_BWD, "bwd", batch)
        else:
            self._computed(self._d.split.client_blocks, Phase.G_ADV_BWD, "bwd", batch)
        self._computed(self._backward_blocks(self._g), Phase.G_BWD, "bwd", batch)
        if self._g.via_server:
            await self._upload(self._g, Phase.G_BWD, {"grad": g_tail_in.grad}, MessageKind.GRADIENT)
            grads = await self._download(Phase.G_BWD, MessageKind.GRADIENT)
            torch.autograd.backward(g_head_out, grads.tensors["grad"])
            self._computed(self._g.split.head, Phase.G_BWD, "bwd", batch)
        if self._g_opt is not None:
            self._g_opt.step()
        # D's gradients from the G pass are discarded: the next D step zeroes them first.
        return ClientLosses(self.node_id, round_, step, loss_real.item(), loss_fake.item(), d_loss.item(), g_loss.item())

    async def federate(self, round_: int, losses: dict[str, float]) -> None:
        """Send this client's blocks up, load its cluster's average back."""
        self._port.at(round_, ROUND_LEVEL_STEP)
        states = {name: float_state(block) for name, block in self.blocks.items()}
        meta: dict[str, str | int | float] = {"num_examples": len(self._data), **losses}
        await self._port.send(self._port.message(MessageKind.PARAMS, SERVER_ID, Phase.FEDERATE,
                                                 flatten_blocks(states), meta))
        reply = await self._port.receive(MessageKind.AGGREGATE, SERVER_ID, Phase.FEDERATE)
        for name, state in unflatten_blocks(reply.tensors).items():
            self.blocks[name].load_state_dict(state, strict=False)
        self._port.forget_received()

    # -- helpers ------------------------------------------------------------------------------

    def _backward_blocks(self, net: _NetworkSegments) -> tuple[str, ...]:
        """Blocks the first local backward of ``net`` reaches: the tail, or everything when local."""
        return net.split.tail if net.via_server else net.split.client_blocks

    def _run(self, segment: Segment, phase: Phase, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not len(segment):
            return x
        self._port.state("computing")
        out = segment(x, labels)
        self._computed(segment.block_names, phase, "fwd", x.shape[0])
        return out

    def _computed(self, blocks: tuple[str, ...], phase: Phase, direction: str, batch: int) -> None:
        if blocks:
            self._port.computed(blocks, phase, direction, batch)

    async def _through_server(self, net: _NetworkSegments, phase: Phase, head_out: torch.Tensor) -> torch.Tensor:
        await self._upload(net, phase, {"act": head_out})
        return await self._download_activation(net, phase, head_out)

    async def _upload(self, net: _NetworkSegments, phase: Phase, tensors: dict[str, torch.Tensor],
                      kind: MessageKind = MessageKind.ACTIVATION) -> None:
        if not net.via_server:
            return
        detached = {name: t.detach() for name, t in tensors.items()}
        await self._port.send(self._port.message(kind, SERVER_ID, phase, detached))

    async def _download_activation(self, net: _NetworkSegments, phase: Phase, head_out: torch.Tensor) -> torch.Tensor:
        if not net.via_server:
            return head_out
        msg = await self._download(phase, MessageKind.ACTIVATION)
        return msg.tensors["act"].requires_grad_(True)

    async def _download(self, phase: Phase, kind: MessageKind) -> Message:
        return await self._port.receive(kind, SERVER_ID, phase)
