"""One split iteration over the memory transport == an independent single-process cGAN step.

The reference below re-implements docs/design.md §1.1 directly on whole per-client models: it shares
nothing with the engine but the block definitions, their seeded initialisation and the
clients' random streams (so both see the same data and z).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch.nn import functional as F

from p2pgan.engine.client import BatchSampler, ClientNode

from p2pgan.plan.nodedata import LocalData
from p2pgan.ids import SERVER_ID
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.engine.server import ServerNode
from p2pgan.plan.program import U_SHAPED
from p2pgan.plan.setup import NodeSetup, node_seed
from p2pgan.bus import EventBus
from p2pgan.strategies.fedavg import SplitFedAvg
from p2pgan.model.blocks import ModelSpec, build_initial_blocks
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, all_cut_options
from transports.memory import MemoryTransport

SPEC = ModelSpec(width=0.125, z_dim=8)
SEED = 11
BATCH = 4
LR, BETAS = 2e-3, (0.5, 0.999)
G_NAMES = ("g0", "g1", "g2", "g3", "g4")
D_NAMES = ("d0", "d1", "d2", "d3", "d4")


def make_data(n: int, seed: int) -> LocalData:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1
    labels = torch.randint(0, 10, (n,), generator=gen)
    return LocalData(images, labels)


def run_engine_iteration(cuts: list[ClientCut], data: dict[str, LocalData]):
    costs = profile_model(SPEC, batch=2)
    setup = NodeSetup(SPEC, costs, SEED, LR, BETAS)
    plans = tuple(ClientPlan(cid, cut, len(data[cid])) for cid, cut in zip(sorted(data), cuts))
    schedule = Schedule(rounds=1, local_epochs=1, steps_per_epoch=1, batch_size=BATCH)
    plan = RunPlan(plans, schedule)

    async def go():
        transport = MemoryTransport(receive_timeout_s=30)
        endpoints = await transport.open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        server = ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED)
        clients = [ClientNode(setup, p, schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED) for p in plans]
        await asyncio.gather(server.iteration(1, 0), *(c.iteration(1, 0) for c in clients))
        return server, clients

    return asyncio.run(go())


class Reference:
    """Whole G and D per client, the server's blocks shared, docs/design.md §1.1 in plain PyTorch."""

    def __init__(self, cuts: dict[str, ClientCut]) -> None:
        self.cuts = cuts
        self.ids = sorted(cuts)
        init = build_initial_blocks(SPEC, SEED)
        self.server = {}
        self.own = {}
        for cid, cut in cuts.items():
            local = self.local_names(cut)
            fresh = build_initial_blocks(SPEC, SEED)
            self.own[cid] = {n: fresh[n] for n in local}
        for name in G_NAMES + D_NAMES:
            if any(name not in self.local_names(c) for c in cuts.values()):
                self.server[name] = init[name]
        def params(blocks):
            return [p for b in blocks for p in b.parameters()]
        self.opts = []
        for net in (G_NAMES, D_NAMES):
            for cid in self.ids:
                ps = params(b for n, b in self.own[cid].items() if n in net)
                self.opts.append((net, torch.optim.Adam(ps, lr=LR, betas=BETAS)))
            ps = params(b for n, b in self.server.items() if n in net)
            if ps:
                self.opts.append((net, torch.optim.Adam(ps, lr=LR, betas=BETAS)))

    @staticmethod
    def local_names(cut: ClientCut) -> set[str]:
        names = {"g0", "g4", "d0", "d4"}
        if cut.g_head: names.add("g1")
        if cut.g_tail: names.add("g3")
        if cut.d_head: names.add("d1")
        if cut.d_tail: names.add("d3")
        return names

    def apply(self, net, inputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]):
        """Run network ``net`` for every client; server blocks batched over their users."""
        flowing = dict(inputs)
        for name in net:
            users = [c for c in self.ids if name not in self.own[c]]
            for c in self.ids:
                if name in self.own[c]:
                    block = self.own[c][name]
                    flowing[c] = block(flowing[c], labels[c]) if block.needs_labels else block(flowing[c])
            if users:
                out = self.server[name](torch.cat([flowing[c] for c in users]))
                for c, chunk in zip(users, out.split([flowing[c].shape[0] for c in users])):
                    flowing[c] = chunk
        return flowing

    def step(self, real, labels, z):
        fake = self.apply(G_NAMES, z, labels)
        for net, opt in self.opts:
            if net is D_NAMES:
                opt.zero_grad(set_to_none=True)
        out_fake = self.apply(D_NAMES, {c: f.detach() for c, f in fake.items()}, labels)
        out_real = self.apply(D_NAMES, real, labels)
        # The standard objective, as the reference sums it: BCE(D(fake), 0) + BCE(D(real), 1).
        d_loss = sum(F.binary_cross_entropy(out_fake[c], torch.zeros(BATCH, 1))
                     + F.binary_cross_entropy(out_real[c], torch.ones(BATCH, 1)) for c in self.ids)
        d_loss.backward()
        for net, opt in self.opts:
            if net is D_NAMES:
                opt.step()
        for net, opt in self.opts:
            if net is G_NAMES:
                opt.zero_grad(set_to_none=True)
        out_adv = self.apply(D_NAMES, fake, labels)
        g_loss = sum(F.binary_cross_entropy(out_adv[c], torch.ones(BATCH, 1)) for c in self.ids)
        g_loss.backward()
        for net, opt in self.opts:
            if net is G_NAMES:
                opt.step()


def client_batches(data: dict[str, LocalData]):
    """The batch and z each engine client draws first (same seeded streams, same order)."""
    real, labels, z = {}, {}, {}
    for cid, local in data.items():
        gen = torch.Generator().manual_seed(node_seed(SEED, cid))
        idx = BatchSampler(len(local), BATCH, gen).next_indices()
        real[cid], labels[cid] = local.images[idx], local.labels[idx]
        z[cid] = torch.randn(BATCH, SPEC.z_dim, generator=gen)
    return real, labels, z


def assert_equivalent(cuts: list[ClientCut]) -> None:
    ids = [f"c{i:03d}" for i in range(len(cuts))]
    data = {cid: make_data(10 + i, seed=100 + i) for i, cid in enumerate(ids)}
    server, clients = run_engine_iteration(cuts, data)
    reference = Reference(dict(zip(ids, cuts)))
    reference.step(*client_batches(data))
    checked = 0
    for client in clients:
        for name, block in client.blocks.items():
            ref_state = reference.own[client.node_id][name].state_dict()
            for key, value in block.state_dict().items():
                torch.testing.assert_close(value, ref_state[key], atol=1e-6, rtol=0,
                                           msg=f"{client.node_id}.{name}.{key}")
                checked += 1
    for name, block in server.blocks.items():
        ref_state = reference.server[name].state_dict()
        for key, value in block.state_dict().items():
            torch.testing.assert_close(value, ref_state[key], atol=1e-6, rtol=0, msg=f"server.{name}.{key}")
            checked += 1
    assert checked > 0
    # The step must have changed parameters, or equality would prove nothing.
    init = build_initial_blocks(SPEC, SEED)
    assert not torch.equal(clients[0].blocks["g0"].linear.weight, init["g0"].linear.weight)


@pytest.mark.parametrize("cut", all_cut_options(), ids=str)
def test_every_cut_matches_reference(cut: ClientCut) -> None:
    assert_equivalent([cut, cut, cut])


def test_mixed_cuts_match_reference() -> None:
    options = all_cut_options()
    assert_equivalent([options[0], options[5], options[10], options[15], options[6]])


def test_all_sixteen_cut_options_exist() -> None:
    assert len({c.as_tuple() for c in all_cut_options()}) == 16
