"""HuSCF-GAN federation (docs/design.md §1.3): aggregation by hand, FedAvg reduction, own/server copies,
and a short two-domain run whose clusters match the domains after warm-up.

KLD scores and weights themselves are checked against hand computations in tests/test_kld.py;
here they are checked where the strategy uses them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from p2pgan.config import load_scenario
from p2pgan.protocol.messages import MessageKind
from p2pgan.protocol.federation import ClientUpdate, FederationInput
from p2pgan.strategies.catalogue import create_strategy
from p2pgan.federation.huscf import correlation_feature, covariance_feature
from p2pgan.model.blocks import NETWORKS
from p2pgan.federation.kld import client_weights
from p2pgan.metrics import adjusted_rand
from p2pgan.run.session import run_scenario
from transports.memory import MemoryTransport

ALL_BLOCKS = ("g0", "g1", "g2", "g3", "g4", "d0", "d1", "d2", "d3", "d4")


def _state(value: float) -> dict[str, torch.Tensor]:
    """A toy block state: one weight and one float buffer, both filled with ``value``."""
    return {"w": torch.full((2, 3), float(value)), "running_mean": torch.full((3,), float(value))}


def _client_blocks(cut: tuple[int, int, int, int], base: float) -> dict[str, dict[str, torch.Tensor]]:
    g_head, g_tail, d_head, d_tail = cut
    held = ["g0", "g4", "d0", "d4"] + (["g1"] if g_head else []) + (["g3"] if g_tail else []) \
        + (["d1"] if d_head else []) + (["d3"] if d_tail else [])
    return {b: _state(base + ALL_BLOCKS.index(b)) for b in held}


def _inputs(cuts, sizes, features, round_=1, server_base=100.0, num_domains=2) -> FederationInput:
    updates = {
        cid: ClientUpdate(cid, sizes[cid], cut, _client_blocks(cut, 10.0 * (i + 1)))
        for i, (cid, cut) in enumerate(cuts.items())
    }
    server = {b: _state(server_base + ALL_BLOCKS.index(b)) for b in ("g1", "g2", "g3", "d1", "d2", "d3")}
    order = tuple(name for net in NETWORKS for name in net.block_names)
    return FederationInput(round_, updates, server, features, num_domains, order)


def _same_features(ids, seed=0):
    act = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    return {c: act.clone() for c in ids}


def _assert_results_equal(a, b):
    assert a.clusters == b.clusters
    assert a.client_blocks.keys() == b.client_blocks.keys()
    for cid in a.client_blocks:
        for block, state in a.client_blocks[cid].items():
            for name, t in state.items():
                torch.testing.assert_close(t, b.client_blocks[cid][block][name], rtol=0, atol=1e-6)
    for block, state in a.server_blocks.items():
        for name, t in state.items():
            torch.testing.assert_close(t, b.server_blocks[block][name], rtol=0, atol=1e-6)
    for label, model in a.cluster_models.items():
        for block, state in model.items():
            for name, t in state.items():
                torch.testing.assert_close(t, b.cluster_models[label][block][name], rtol=0, atol=1e-6)


CUTS = {"c0": (0, 0, 0, 0), "c1": (1, 0, 1, 0), "c2": (1, 1, 1, 1)}
SIZES = {"c0": 100, "c1": 50, "c2": 250}


@pytest.mark.parametrize("name", ["huscf", "huscf-no-kld", "huscf-no-cluster"])
def test_one_cluster_with_equal_kld_is_size_weighted_fedavg(name):
    """Equal features -> equal KLD (0) -> w_i = n_i / Σ n: exactly SizeWeightedFedAvg."""
    inputs = _inputs(CUTS, SIZES, _same_features(CUTS), round_=1)
    got = create_strategy(name, clusters=1, warmup_rounds=2, seed=0).aggregate(inputs)
    want = create_strategy("split-fedavg").aggregate(inputs)
    _assert_results_equal(got, want)
    assert got.details["weights"] == pytest.approx({"c0": 0.25, "c1": 0.125, "c2": 0.625})
    # and by hand for one block every client holds: Σ n_i θ_i / Σ n
    hand = (100 * 10 + 50 * 20 + 250 * 30) / 400 + ALL_BLOCKS.index("g0")
    assert float(got.cluster_models[0]["g0"]["w"][0, 0]) == pytest.approx(hand)
    # also after warm-up with k=1
    later = _inputs(CUTS, SIZES, _same_features(CUTS), round_=5)
    _assert_results_equal(create_strategy(name, clusters=1, seed=0).aggregate(later),
                          create_strategy("split-fedavg").aggregate(later))


def test_layer_held_by_server_for_some_clients_and_locally_by_others():
    """g1: c1 and c2 hold it (g_head=1), c0 offloads it -> c0's θ is the server's copy."""
    feats = {c: torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(CUTS)}
    inputs = _inputs(CUTS, SIZES, feats, round_=1)
    result = create_strategy("huscf", seed=0).aggregate(inputs)  # warm-up: one cluster, KLD weights
    w = result.details["weights"]
    g = result.details["global_weights"]
    cw, gw, _, _ = client_weights(feats, SIZES, None)
    assert w == pytest.approx(cw, abs=1e-6) and g == pytest.approx(gw, abs=1e-6)
    idx = ALL_BLOCKS.index("g1")
    own = {"c0": 100.0 + idx, "c1": 20.0 + idx, "c2": 30.0 + idx}  # c0: server copy
    want = sum(cw[c] * own[c] for c in CUTS)
    model = result.cluster_models[0]
    torch.testing.assert_close(model["g1"]["w"], torch.full((2, 3), want), rtol=0, atol=1e-5)
    torch.testing.assert_close(model["g1"]["running_mean"], torch.full((3,), want), rtol=0, atol=1e-5)
    # clients get exactly the blocks they hold
    assert "g1" not in result.client_blocks["c0"]
    assert set(result.client_blocks["c1"]) == set(inputs.updates["c1"].blocks)
    torch.testing.assert_close(result.client_blocks["c1"]["g1"]["w"], model["g1"]["w"])
    # the server's shared copy uses the global weights over all clients (same set here: one cluster)
    server_want = sum(gw[c] * own[c] for c in CUTS)
    torch.testing.assert_close(result.server_blocks["g1"]["w"], torch.full((2, 3), server_want), rtol=0, atol=1e-5)
    # d3: only c2 holds it; c0 and c1 contribute the server's copy
    i3 = ALL_BLOCKS.index("d3")
    want_d3 = cw["c0"] * (100 + i3) + cw["c1"] * (100 + i3) + cw["c2"] * (30 + i3)
    assert float(model["d3"]["w"][0, 0]) == pytest.approx(want_d3, rel=1e-6)


def _two_group_features():
    """c0, c1 share one activation pattern and c2, c3 another: two obvious clusters."""
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(1, 4, 3, 3, generator=gen) * 3 for _ in range(2)]
    feats = {}
    for i, c in enumerate(["c0", "c1", "c2", "c3"]):
        feats[c] = base[i // 2] + 0.05 * torch.randn(6, 4, 3, 3, generator=gen)
    return feats


def test_clustered_round_uses_in_cluster_kld_weights_and_global_server_weights():
    cuts = {"c0": (0, 0, 0, 0), "c1": (0, 0, 0, 0), "c2": (0, 0, 0, 0), "c3": (0, 0, 0, 0)}
    sizes = {"c0": 10, "c1": 30, "c2": 20, "c3": 40}
    feats = _two_group_features()
    inputs = _inputs(cuts, sizes, feats, round_=3)
    for feature in ("covariance", "correlation", "mean"):
        result = create_strategy("huscf", seed=0, warmup_rounds=2, clusters=2, cluster_feature=feature).aggregate(inputs)
        assert result.clusters == {"c0": 0, "c1": 0, "c2": 1, "c3": 1}
    cw, gw, ck, gk = client_weights(feats, sizes, result.clusters)
    assert result.details["weights"] == pytest.approx(cw, abs=1e-6)
    assert result.details["kld"] == pytest.approx(ck, abs=1e-6)
    assert result.details["global_weights"] == pytest.approx(gw, abs=1e-6)
    i = ALL_BLOCKS.index("g0")
    own = {c: 10.0 * (n + 1) + i for n, c in enumerate(cuts)}
    for label, members in ((0, ["c0", "c1"]), (1, ["c2", "c3"])):
        want = sum(cw[c] * own[c] for c in members)
        assert float(result.cluster_models[label]["g0"]["w"][0, 0]) == pytest.approx(want, rel=1e-6)
        for c in members:
            torch.testing.assert_close(result.client_blocks[c]["g0"]["w"], result.cluster_models[label]["g0"]["w"])
    j = ALL_BLOCKS.index("g2")  # server-only block: Σ g_i θ_i over all clients, θ_i = server copy
    assert float(result.server_blocks["g2"]["w"][0, 0]) == pytest.approx(100.0 + j, rel=1e-6)
    assert sum(gw.values()) == pytest.approx(1.0)
    # the ablations
    no_kld = create_strategy("huscf-no-kld", seed=0, clusters=2).aggregate(inputs)
    assert no_kld.clusters == result.clusters
    assert no_kld.details["weights"] == pytest.approx({"c0": 0.25, "c1": 0.75, "c2": 1 / 3, "c3": 2 / 3})
    no_cluster = create_strategy("huscf-no-cluster", seed=0, clusters=2).aggregate(inputs)
    assert set(no_cluster.clusters.values()) == {0}
    cw1, _, _, _ = client_weights(feats, sizes, None)
    assert no_cluster.details["weights"] == pytest.approx(cw1, abs=1e-6)
    # details are JSON for rounds.jsonl
    json.dumps(result.details)
    assert result.details["phase"] == "clustered" and result.details["members"] == {"0": ["c0", "c1"], "1": ["c2", "c3"]}


def test_warmup_rounds_use_one_cluster():
    feats = _two_group_features()
    cuts = {c: (0, 0, 0, 0) for c in feats}
    sizes = {c: 10 for c in feats}
    strategy = create_strategy("huscf", seed=0, warmup_rounds=2, clusters=2)
    assert set(strategy.aggregate(_inputs(cuts, sizes, feats, round_=2)).clusters.values()) == {0}
    assert len(set(strategy.aggregate(_inputs(cuts, sizes, feats, round_=3)).clusters.values())) == 2
    auto = create_strategy("huscf", seed=0, warmup_rounds=0, clusters="auto")
    assert len(set(auto.aggregate(_inputs(cuts, sizes, feats, round_=1)).clusters.values())) == 2


def test_correlation_feature_by_hand():
    # B=1, C=3, H=1, W=3: channel 1 = 2 x channel 0 (corr 1), channel 2 = reversed (corr -1)
    a = torch.tensor([[[[1.0, 2.0, 3.0]], [[2.0, 4.0, 6.0]], [[3.0, 2.0, 1.0]]]])
    torch.testing.assert_close(correlation_feature(a), torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    # scale and offset of a channel do not matter; a constant channel correlates 0
    b = a.clone()
    b[:, 0] = b[:, 0] * 5 + 7
    b[:, 2] = 4.0
    torch.testing.assert_close(correlation_feature(b), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_covariance_feature_by_hand():
    # B=2, C=2, H=1, W=1: channel values over the 2 samples: ch0 = [1, 3], ch1 = [2, 0]
    a = torch.tensor([[[[1.0]], [[2.0]]], [[[3.0]], [[0.0]]]])
    # centred: ch0 = [-1, 1], ch1 = [1, -1] -> var 1, cov -1, var 1
    torch.testing.assert_close(covariance_feature(a), torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))


def _cut_dominated_activations(cut_scale):
    """Two domains x two d_head groups; the cut adds an offset ``cut_scale`` times the domain signal."""
    gen = torch.Generator().manual_seed(0)
    domain_dir = torch.randn(2, 2, 3, 3, generator=gen)
    cut_dir = torch.randn(2, 2, 3, 3, generator=gen)
    feats, cuts, domains = {}, {}, {}
    for i in range(8):
        cid, cut, dom = f"c{i}", i % 2, (i // 2) % 2
        feats[cid] = (domain_dir[dom] + cut_scale * cut_dir[cut])[None] + 0.01 * torch.randn(4, 2, 3, 3, generator=gen)
        cuts[cid], domains[cid] = (0, 0, cut, 0), dom
    return feats, cuts, domains


def test_cut_driven_features_are_centred_per_d_head_group():
    for scale, centred in ((50.0, True), (0.0, False)):
        feats, cuts, domains = _cut_dominated_activations(scale)
        inputs = _inputs(cuts, {c: 10 for c in cuts}, feats, round_=3)
        result = create_strategy("huscf", seed=0, clusters=2, cluster_feature="mean").aggregate(inputs)
        assert result.details["cut_centering"] is centred
        assert adjusted_rand(result.clusters, domains) == 1.0
    # without centring the cut-dominated case clusters by cut, not by domain
    feats, cuts, domains = _cut_dominated_activations(50.0)
    plain = create_strategy("huscf", seed=0, clusters=2, cluster_feature="mean", cut_centering=False).aggregate(
        _inputs(cuts, {c: 10 for c in cuts}, feats, round_=3))
    assert adjusted_rand(plain.clusters, {c: cut[2] for c, cut in cuts.items()}) == 1.0


def test_two_domain_run_separates_domains_after_warmup(repo_root, tmp_path):
    """MNIST + Fashion-MNIST, 6 non-IID clients with mixed (heterogeneous) cuts, 3 rounds."""
    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "strategy.name=huscf", "training.rounds=3", "training.max_batches_per_epoch=4", "cuts.policy=mixed",
        f"output.dir={tmp_path / 'out'}"])
    transport = MemoryTransport(receive_timeout_s=60)
    params_bytes = []
    transport.add_tap(lambda m: params_bytes.append(m.nbytes) if m.kind in (MessageKind.PARAMS, MessageKind.AGGREGATE) else None)
    outcome = run_scenario(scenario, transport=transport)
    assert outcome.status == "completed"
    rounds = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    domain_of = {r.client_id: r.domain for r in outcome.prepared.records}
    cuts = {tuple(c.cut.as_tuple()) for c in outcome.prepared.plan.clients}
    assert len(cuts) == 6  # heterogeneous: every client its own cut
    assert [r["details"]["phase"] for r in rounds] == ["warmup", "warmup", "clustered"]
    assert set(rounds[1]["clusters"].values()) == {0}
    assert adjusted_rand(rounds[2]["clusters"], domain_of) == 1.0
    assert rounds[2]["domain_clusters"] == {"mnist": 0, "fashion-mnist": 1}
    # parameters travelled through the transport: 6 up + 6 down per round, all counted
    assert len(params_bytes) == 3 * 12 and all(n > 0 for n in params_bytes)
    assert math.isclose(sum(rounds[2]["details"]["weights"].values()), 2.0, rel_tol=1e-5)  # 1 per cluster
