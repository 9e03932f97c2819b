"""KLD scores/weights (docs/design.md §1.3) against hand computations, and client clustering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from p2pgan.federation.clustering import canonical_labels, cluster_clients, natural_key, prepare_features
from p2pgan.federation.kld import client_distributions, client_weights, kld_scores, kld_weights

# Three clients, B=2, C=2, H=1, W=2 -> H·W = 2 positions per channel.
ACTS = {
    "c0": torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]], [[[2.0, 1.0]], [[0.0, 0.0]]]]),
    "c1": torch.tensor([[[[1.0, 1.0]], [[0.0, 3.0]]], [[[1.0, 3.0]], [[0.0, 1.0]]]]),
    "c2": torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]], [[[0.0, 4.0]], [[1.0, 1.0]]]]),
}
EPS = 1e-9


def _softmax(v):
    e = [math.exp(x) for x in v]
    s = sum(e)
    return [x / s for x in e]


def _hand_P():
    # batch means written out by hand:
    # c0: ch0 = [(0+2)/2, (1+1)/2] = [1, 1]; ch1 = [(2+0)/2, 0] = [1, 0]
    # c1: ch0 = [1, 2];                        ch1 = [0, 2]
    # c2: ch0 = [0, 2];                        ch1 = [1, 1]
    means = {
        "c0": [[1.0, 1.0], [1.0, 0.0]],
        "c1": [[1.0, 2.0], [0.0, 2.0]],
        "c2": [[0.0, 2.0], [1.0, 1.0]],
    }
    return {c: [_softmax(ch) for ch in m] for c, m in means.items()}


def _hand_kld(P, i, members):
    others = [j for j in members if j != i]
    total = 0.0
    for ch in range(2):
        q = [sum(P[j][ch][h] for j in others) / len(others) for h in range(2)]
        p = P[i][ch]
        total += sum(q[h] * (math.log(q[h] + EPS) - math.log(p[h] + EPS)) for h in range(2))
    return total / 2


def test_client_distributions_match_hand_softmax():
    P = client_distributions(ACTS)
    hand = _hand_P()
    assert P.shape == (3, 2, 2)
    np.testing.assert_allclose(P.numpy(), np.array([hand[c] for c in ("c0", "c1", "c2")]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(P.sum(-1).numpy(), 1.0, atol=1e-12)


def test_kld_scores_match_hand_computation():
    P = client_distributions(ACTS)
    hand = _hand_P()
    ids = ["c0", "c1", "c2"]
    got = kld_scores(P).numpy()
    want = [_hand_kld(hand, c, ids) for c in ids]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # a sub-cluster {c0, c2}, given by row index, in the given order
    got2 = kld_scores(P, [2, 0]).numpy()
    want2 = [_hand_kld(hand, "c2", ["c0", "c2"]), _hand_kld(hand, "c0", ["c0", "c2"])]
    np.testing.assert_allclose(got2, want2, rtol=1e-10, atol=1e-12)
    assert all(k > 0 for k in want)


def test_kld_weights_match_hand_computation():
    sizes = [100, 50, 150]
    klds = [0.2, 0.05, 0.7]
    alpha = 1.0
    raw = [n * math.exp(-alpha * k) for n, k in zip(sizes, klds)]
    want = [r / sum(raw) for r in raw]
    got = kld_weights(sizes, klds, alpha)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # alpha 2 changes the weights the expected way
    raw2 = [n * math.exp(-2.0 * k) for n, k in zip(sizes, klds)]
    np.testing.assert_allclose(kld_weights(sizes, klds, 2.0).numpy(), [r / sum(raw2) for r in raw2], rtol=1e-12)


def test_one_member_cluster_weight_is_one():
    assert kld_weights([37], [5.0]).tolist() == [1.0]
    P = client_distributions(ACTS)
    assert kld_scores(P, [1]).tolist() == [0.0]


def test_equal_kld_gives_size_proportional_weights():
    sizes = [10, 30, 60]
    got = kld_weights(sizes, [0.4, 0.4, 0.4])
    np.testing.assert_allclose(got.numpy(), [0.1, 0.3, 0.6], rtol=1e-12)


def test_large_klds_do_not_underflow():
    w = kld_weights([1, 1], [2000.0, 2001.0])
    assert torch.isfinite(w).all() and abs(float(w.sum()) - 1) < 1e-12
    assert w[0] > w[1]


def test_client_weights_per_cluster_and_global():
    sizes = {"c0": 100, "c1": 50, "c2": 150}
    clusters = {"c0": 0, "c1": 1, "c2": 0}
    cw, gw, ck, gk = client_weights(ACTS, sizes, clusters)
    hand = _hand_P()
    assert cw["c1"] == 1.0 and ck["c1"] == 0.0
    k0, k2 = _hand_kld(hand, "c0", ["c0", "c2"]), _hand_kld(hand, "c2", ["c0", "c2"])
    r0, r2 = 100 * math.exp(-k0), 150 * math.exp(-k2)
    assert cw["c0"] == pytest.approx(r0 / (r0 + r2), rel=1e-10)
    assert cw["c2"] == pytest.approx(r2 / (r0 + r2), rel=1e-10)
    assert sum(gw.values()) == pytest.approx(1.0)
    gks = [_hand_kld(hand, c, ["c0", "c1", "c2"]) for c in ("c0", "c1", "c2")]
    assert [gk[c] for c in ("c0", "c1", "c2")] == pytest.approx(gks, rel=1e-10)


# ------------------------------------------------------------------------------------------
# clustering
# ------------------------------------------------------------------------------------------


def _blobs(n_per=5, k=3, dim=32, sep=10.0, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * sep
    feats, truth = {}, {}
    for d in range(k):
        for j in range(n_per):
            cid = f"client{d * n_per + j}"
            # an activation [B, C, H, W] whose batch mean is the blob point
            point = centers[d] + rng.normal(size=dim) * noise
            batch = point[None] + rng.normal(size=(4, dim)) * 0.01
            feats[cid] = torch.tensor(batch.reshape(4, 2, 4, dim // 8), dtype=torch.float32)
            truth[cid] = d
    return feats, truth


def _ari(labels, truth):
    ids = sorted(truth)
    return adjusted_rand_score([truth[c] for c in ids], [labels[c] for c in ids])


def test_clustering_recovers_separated_groups_deterministically():
    feats, truth = _blobs()
    a = cluster_clients(feats, 3, seed=0)
    b = cluster_clients(dict(reversed(list(feats.items()))), 3, seed=0)
    assert _ari(a, truth) == 1.0
    assert a == b
    # canonical numbering: client0 is in cluster 0, clusters numbered by first appearance
    assert a["client0"] == 0
    assert a["client5"] == 1 and a["client10"] == 2
    assert list(a) == sorted(a, key=natural_key)


def test_auto_k_picks_the_true_number():
    feats, truth = _blobs(n_per=4, k=4, seed=3)
    labels = cluster_clients(feats, "auto", seed=0)
    assert len(set(labels.values())) == 4
    assert _ari(labels, truth) == 1.0


def test_degenerate_inputs():
    one = {"a": torch.ones(3, 4)}
    assert cluster_clients(one, 2) == {"a": 0}
    same = {f"c{i}": torch.ones(3, 4) for i in range(4)}
    assert set(cluster_clients(same, 2).values()) == {0}
    assert set(cluster_clients(same, "auto").values()) == {0}
    assert canonical_labels(["c1", "c2", "c10"], np.array([5, 3, 5])) == {"c1": 0, "c2": 1, "c10": 0}


def _cut_dominated_case(seed=0):
    """Two domains x two cut groups; cut offsets are 50x larger than the domain signal."""
    rng = np.random.default_rng(seed)
    dim = 64
    domain_dir = rng.normal(size=(2, dim))
    cut_dir = rng.normal(size=(2, dim))
    feats, domains, cuts = {}, {}, {}
    i = 0
    for cut in range(2):
        for dom in range(2):
            for _ in range(4):
                cid = f"c{i}"
                f = 1.0 * domain_dir[dom] + 50.0 * cut_dir[cut] + rng.normal(size=dim) * 0.05
                feats[cid] = torch.tensor(f[None] + rng.normal(size=(3, dim)) * 0.01, dtype=torch.float64)
                domains[cid], cuts[cid] = dom, (1, 0, cut, 0)
                i += 1
    return feats, domains, cuts


def test_cut_centering_separates_domains_when_cut_offsets_dominate():
    feats, domains, cuts = _cut_dominated_case()
    plain = cluster_clients(feats, 2, seed=0, standardize=False)
    plain_std = cluster_clients(feats, 2, seed=0)
    centred = cluster_clients(feats, 2, seed=0, cut_groups=cuts)
    # plain KMeans groups by cut, not by domain
    assert _ari(plain, domains) < 0.2
    assert _ari(plain_std, domains) < 0.2
    assert _ari(plain, {c: str(cuts[c]) for c in cuts}) == 1.0
    # removing the per-cut mean recovers the domains
    assert _ari(centred, domains) == 1.0
    assert centred == cluster_clients(feats, 2, seed=0, cut_groups=cuts)


def test_prepare_features_normalize_and_standardize():
    feats = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([6.0, 8.0]), "c": torch.tensor([0.0, 1.0])}
    ids, X = prepare_features(feats, standardize=False, normalize=True)
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(X, [[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    _, Z = prepare_features(feats)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-12)
