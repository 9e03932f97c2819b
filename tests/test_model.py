"""The block model, the segmenter and measured costs."""

from __future__ import annotations

import pytest
import torch

from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, ModelSpec, build_initial_blocks
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, Segment, all_cut_options, split_client, validate_cut


def test_every_cut_partitions_each_network_into_head_server_tail():
    for cut in all_cut_options():
        split = split_client(cut)
        for net, part in ((GENERATOR, split.generator), (DISCRIMINATOR, split.discriminator)):
            assert part.head + part.server + part.tail == net.block_names
            assert len(part.head) == 1 + cut.for_network(net)[0]
            assert len(part.tail) == 1 + cut.for_network(net)[1]
            assert part.server, "the pinned middle block always stays on the server"


def test_full_local_client_holds_everything():
    split = split_client(ClientCut(0, 0, 0, 0), full_local=True)
    assert split.server_blocks == ()
    assert set(split.client_blocks) == set(GENERATOR.block_names + DISCRIMINATOR.block_names)


@pytest.mark.parametrize("values", [(2, 0, 0, 0), (0, -1, 0, 0), (0, 0, 0, 3)])
def test_impossible_cuts_are_refused(values):
    assert validate_cut(ClientCut(*values)) is not None
    with pytest.raises(ValueError, match="impossible"):
        split_client(ClientCut(*values))


def test_costs_are_measured_from_modules_and_match_design():
    costs = profile_model(ModelSpec())
    # docs/design.md §4.2: one client-iteration (G fwd+bwd, three D passes + backward) is ~53 GFLOP at batch 64.
    g = [b for b in costs.blocks if b.network == "G"]
    d = [b for b in costs.blocks if b.network == "D"]
    per_sample = sum(b.fwd_flops + b.bwd_flops for b in g) + 3 * sum(b.fwd_flops + b.bwd_flops for b in d)
    assert 52e9 < per_sample * 64 < 54.5e9
    blocks = build_initial_blocks(ModelSpec(), seed=0)
    x = torch.randn(2, 100)
    out = blocks["g0"](x, torch.zeros(2, dtype=torch.long))
    assert costs["g0"].out_bytes == out[0].numel() * 4
    assert costs["g0"].param_bytes >= sum(p.numel() * 4 for p in blocks["g0"].parameters())
    for cost in costs.blocks:
        assert cost.bwd_flops >= cost.fwd_flops > 0


def test_costs_follow_width():
    narrow, wide = profile_model(ModelSpec(width=0.5)), profile_model(ModelSpec(width=1.0))
    assert narrow["g2"].fwd_flops == pytest.approx(wide["g2"].fwd_flops / 4, rel=0.05)
    assert narrow["g2"].out_bytes == wide["g2"].out_bytes // 2


def test_other_image_shapes_use_the_same_machinery():
    spec = ModelSpec(width=0.25, z_dim=16, image_channels=3, image_size=32)
    blocks = build_initial_blocks(spec, seed=1)
    labels = torch.tensor([1, 2])
    g = Segment({n: blocks[n] for n in GENERATOR.block_names})
    d = Segment({n: blocks[n] for n in DISCRIMINATOR.block_names})
    fake = g(torch.randn(2, 16), labels)
    assert fake.shape == (2, 3, 32, 32)
    assert d(fake, labels).shape == (2, 1)
    assert profile_model(spec, batch=2)["d4"].out_bytes == 4


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_initial_blocks(ModelSpec(width=0.25), seed=3)
    b = build_initial_blocks(ModelSpec(width=0.25), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a["d1"].body[0].weight, b["d1"].body[0].weight)


def test_allocator_tuning_applies_on_glibc():
    import platform

    from p2pgan.runtime import keep_freed_memory

    applied = keep_freed_memory()
    assert applied or platform.libc_ver()[0] != "glibc"
