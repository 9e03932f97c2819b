"""The leakage audit: what a curious server can infer from each cut's messages (issue 13)."""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from p2pgan.commands import privacy as privacy_command
from p2pgan.data import load_domain, to_model_input
from p2pgan.errors import ConfigError, P2PGanError
from p2pgan.model.blocks import ModelSpec, build_initial_blocks
from p2pgan.model.segments import ClientCut, Segment, all_cut_options, split_client
from p2pgan.privacy import PrivacyOptions, parse_privacy_options
from p2pgan.privacy.attacks import constant_guess, infer_labels, invert
from p2pgan.privacy.audit import audit_initial, audit_trained
from p2pgan.privacy.dcor import bias_corrected_distance_correlation, capped, distance_correlation
from p2pgan.privacy.files import png_name, write_audit
from p2pgan.privacy.observer import TensorKey, keys_for, observe, received_keys
from p2pgan.privacy.ssim import psnr, ssim

TINY = ModelSpec(width=0.125, z_dim=8)
TINY_OPTIONS = PrivacyOptions(samples=32, aux_samples=64, decoder_epochs=1, probe_epochs=2, dcor_samples=32,
                              png_samples=4)


def mnist(split: str, count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_domain("mnist", split)
    return to_model_input(data.images[offset:offset + count]), data.labels[offset:offset + count].clone()


# ---- measures --------------------------------------------------------------------------------

def test_ssim_is_one_for_identical_images_and_matches_the_formula_on_constant_ones():
    images, _ = mnist("test", 8)
    assert torch.allclose(ssim(images, images), torch.ones(8, dtype=torch.float64))
    assert torch.all(psnr(images, images) == 100.0)
    # Two constant images a, b: no variance, so SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01·2)².
    a, b, c1 = 0.2, -0.4, (0.01 * 2) ** 2
    got = ssim(torch.full((1, 28, 28), a), torch.full((1, 28, 28), b))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    noisy = images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.all(ssim(images, noisy) < 0.9)
    assert torch.allclose(ssim(images, noisy), ssim(noisy, images))
    # PSNR: an error of 0.2 everywhere on a range of 2 is 10·log10(4 / 0.04) = 20 dB.
    assert psnr(images, images + 0.2).mean().item() == pytest.approx(20.0, abs=1e-6)


def test_distance_correlation_known_values():
    g = torch.Generator().manual_seed(0)
    # A published example (the docstring of the widely copied distcorr gist by S. Ghosh).
    assert distance_correlation(torch.tensor([1., 2, 3, 4, 5]), torch.tensor([1., 2, 9, 4, 4])) == \
        pytest.approx(0.762676242417, abs=1e-11)
    # By hand, x = (0,1,2,3), y = (0,1,0,1): the double-centred matrices give Σ A·B = 2, Σ A² = 13,
    # Σ B² = 4, so dCor² = (2/16) / sqrt(13/16 · 4/16) = 1/sqrt(13). U-centred (n = 4):
    # Σ Ã·B̃ = -4/3, Σ Ã² = Σ B̃² = 8/3, so the unbiased dCor² is -1/2.
    x, y = torch.tensor([0., 1, 2, 3]), torch.tensor([0., 1, 0, 1])
    assert distance_correlation(x, y) == pytest.approx(13 ** -0.25, abs=1e-12)
    assert bias_corrected_distance_correlation(x, y) == pytest.approx(-math.sqrt(0.5), abs=1e-12)
    # Identical = 1; a similarity map (rotation, scale, shift) = 1; 1-D affine = 1.
    a = torch.randn(100, 5, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    for estimator in (distance_correlation, bias_corrected_distance_correlation):
        assert estimator(a, a) == pytest.approx(1.0, abs=1e-12)
        assert estimator(a, 3 * a @ rotation + 2) == pytest.approx(1.0, abs=1e-9)
        assert estimator(a[:, :1], -2 * a[:, :1] + 1) == pytest.approx(1.0, abs=1e-9)
    # Independent samples: the bias-corrected estimator is ≈ 0 in any dimension; the V-statistic
    # is not (it tends to 1 in high dimension), which is why the audit reports the former.
    low = torch.randn(500, 20, generator=g), torch.randn(500, 20, generator=g)
    high = torch.randn(60, 2000, generator=g), torch.randn(60, 2000, generator=g)
    assert abs(bias_corrected_distance_correlation(*low)) < 0.05
    assert abs(bias_corrected_distance_correlation(*high)) < 0.1
    assert distance_correlation(*high) > 0.9
    # Non-linear dependence Pearson misses: y = x² on a symmetric x.
    assert bias_corrected_distance_correlation(a[:, :1], a[:, :1] ** 2) > 0.4
    # A constant sample carries no information; the cap draws distinct indices.
    assert bias_corrected_distance_correlation(a, torch.zeros(100, 3)) == 0.0
    index = capped(100, 30, g)
    assert len(set(index.tolist())) == 30 and capped(10, 30, g).tolist() == list(range(10))


# ---- what the server receives ----------------------------------------------------------------

def test_received_tensors_follow_the_cut():
    offload = {k.name for k in received_keys(ClientCut(0, 0, 0, 0))}
    assert offload == {"g_forward/g_head_activation@g0", "d_fake/d_head_activation@d0", "d_fake/d_tail_gradient@d3",
                       "d_real/d_head_activation@d0", "d_real/d_tail_gradient@d3", "g_step/d_tail_gradient@d3",
                       "g_step/g_tail_gradient@g3"}
    local = {k.name for k in received_keys(ClientCut(1, 1, 1, 1))}
    assert local == {"g_forward/g_head_activation@g1", "d_fake/d_head_activation@d1", "d_fake/d_tail_gradient@d2",
                     "d_real/d_head_activation@d1", "d_real/d_tail_gradient@d2", "g_step/d_tail_gradient@d2",
                     "g_step/g_tail_gradient@g2"}
    assert len(keys_for(all_cut_options())) == 14  # 2 G heads, 2 D heads x 2 passes, 2 D tails x 3, 2 G tails


def test_observed_tensors_are_what_the_client_segments_send():
    """The observer's tensors equal the head segment's output and the tail segment's input gradient."""
    blocks = build_initial_blocks(TINY, seed=3)
    images, labels = mnist("train", 16)
    cut = ClientCut(1, 0, 1, 0)
    observed = observe(blocks, images, labels, received_keys(cut), z_dim=TINY.z_dim, batch_size=16,
                       generator=torch.Generator().manual_seed(0))
    split = split_client(cut).discriminator
    head, server, tail = (Segment({n: blocks[n] for n in names}) for names in (split.head, split.server, split.tail))
    sent = head(images, labels)
    assert torch.equal(observed.tensors[TensorKey("d_real", "d_head_activation", "d1")], sent)
    middle = server(sent).detach().requires_grad_(True)
    score = tail(middle, labels)
    (gradient,) = torch.autograd.grad(F.binary_cross_entropy(score, torch.ones_like(score)), middle)
    assert torch.allclose(observed.tensors[TensorKey("d_real", "d_tail_gradient", "d3")], gradient)


# ---- attacks ---------------------------------------------------------------------------------

def test_inversion_from_d_head_0_beats_a_constant_guess_and_d_head_1():
    blocks = build_initial_blocks(TINY, seed=0)
    aux_images, aux_labels = mnist("test", 400)
    private_images, private_labels = mnist("train", 64)
    keys = (TensorKey("d_real", "d_head_activation", "d0"), TensorKey("d_real", "d_head_activation", "d1"))
    z = torch.Generator().manual_seed(0)
    aux = observe(blocks, aux_images, aux_labels, keys, z_dim=TINY.z_dim, batch_size=32, generator=z)
    private = observe(blocks, private_images, private_labels, keys, z_dim=TINY.z_dim, batch_size=32, generator=z)
    floor_ssim, floor_psnr = constant_guess(aux_images, private_images)
    d0, d1 = (invert(aux.tensors[k], aux_images, private.tensors[k], private_images, epochs=8, seed=1) for k in keys)
    assert d0.ssim > floor_ssim + 0.4 and d0.psnr > floor_psnr + 6
    assert d0.ssim > d1.ssim + 0.1 and d0.psnr > d1.psnr + 2
    assert d0.reconstructions.shape == private_images.shape


def test_label_probe_reads_the_d_head_and_its_shuffled_control_sits_at_chance():
    blocks = build_initial_blocks(TINY, seed=0)
    aux_images, aux_labels = mnist("test", 400)
    private_images, private_labels = mnist("train", 300)
    key = TensorKey("d_real", "d_head_activation", "d0")
    z = torch.Generator().manual_seed(0)
    aux = observe(blocks, aux_images, aux_labels, [key], z_dim=TINY.z_dim, batch_size=32, generator=z)
    private = observe(blocks, private_images, private_labels, [key], z_dim=TINY.z_dim, batch_size=32, generator=z)
    found = infer_labels(aux.tensors[key], aux_labels, private.tensors[key], private_labels, num_classes=10,
                         epochs=10, seed=2)
    assert found.accuracy > 0.9
    assert 0.1 <= found.chance < 0.2
    assert found.shuffled_accuracy < found.chance + 0.08
    # A tensor independent of the labels is read at chance too.
    g = torch.Generator().manual_seed(5)
    noise = infer_labels(torch.randn(400, 50, generator=g), aux_labels, torch.randn(300, 50, generator=g),
                         private_labels, num_classes=10, epochs=10, seed=2)
    assert noise.accuracy < noise.chance + 0.08


# ---- the audit and its files -----------------------------------------------------------------

def test_audit_writes_json_csv_markdown_and_a_png_per_cut(tmp_path):
    cuts = [ClientCut(0, 0, 0, 0), ClientCut(1, 1, 1, 1)]
    result = audit_initial(TINY, ["mnist"], cuts, TINY_OPTIONS, scenario="tiny", seed=0, batch_size=16)
    files = write_audit(result, tmp_path)
    data = json.loads(files["json"].read_text())
    assert [row["cut"] for row in data["summary"]] == ["(0,0,0,0)", "(1,1,1,1)"]
    assert len(data["tensors"]) == len(keys_for(cuts)) == 14
    assert data["baselines"]["mnist"]["private"] == 32
    for row in data["summary"]:
        assert 0 <= row["label_accuracy"] <= 1 and -1 <= row["ssim"] <= 1
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == 2 * 7  # per cut, per phase and tensor
    assert {r["phase"] for r in rows} == {"g_forward", "d_fake", "d_real", "g_step"}
    assert all(r["ssim"] for r in rows if r["phase"] == "d_real") and not any(r["ssim"] for r in rows
                                                                                 if r["phase"] != "d_real")
    assert "| (1,1,1,1) |" in files["md"].read_text()
    from PIL import Image

    png = Image.open(tmp_path / png_name(cuts[0]))
    assert png.size[0] > png.size[1] > 0  # 4 samples wide, 3 rows (originals, two reconstructions)


def test_audit_trained_uses_the_given_weights():
    """A D head whose convolution is zeroed sends a constant: nothing to read from it."""
    blocks = build_initial_blocks(TINY, seed=0)
    d0 = {k: (torch.zeros_like(v) if k.startswith("conv.") else v) for k, v in blocks["d0"].state_dict().items()}
    result = audit_trained({"d0": d0}, TINY, ["mnist"], [ClientCut(0, 0, 0, 0)], TINY_OPTIONS, scenario="tiny",
                           seed=0, batch_size=16)
    sent = next(t for t in result.tensors if t.key == TensorKey("d_real", "d_head_activation", "d0"))
    assert sent.dcor_label == 0.0 and sent.dcor_image == 0.0
    assert result.weights == "trained"
    with pytest.raises(P2PGanError, match="which the model does not have"):
        audit_trained({"x9": d0}, TINY, ["mnist"], [ClientCut(0, 0, 0, 0)], TINY_OPTIONS, scenario="tiny", seed=0,
                      batch_size=16)


# ---- options and the command -----------------------------------------------------------------

@pytest.mark.parametrize("raw, key, words", [
    ({"samples": 0}, "privacy.samples", "greater than or equal to 8"),
    ({"decoder_epochs": "many"}, "privacy.decoder_epochs", "valid integer"),
    ({"bogus": 1}, "privacy.bogus", "unknown key (expected one of: enabled, samples"),
    ({"enabled": "maybe"}, "privacy.enabled", "valid boolean"),
    ([1, 2], "privacy", "expected a mapping"),
])
def test_bad_privacy_options_give_a_one_line_error_naming_the_key(raw, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_privacy_options(raw, "s.yaml")
    assert caught.value.key == key and words in str(caught.value)
    assert str(caught.value).startswith(f"s.yaml:{key}: ") and "\n" not in str(caught.value)
    assert parse_privacy_options(None, "s.yaml") == PrivacyOptions()


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    privacy_command.register(parser.add_subparsers())
    args = parser.parse_args(["privacy", *argv])
    return args.func(args)


def test_privacy_command_audits_the_scenarios_cuts(repo_root, tmp_path, capsys):
    out = tmp_path / "audit"
    assert run_command(str(repo_root / "scenarios" / "quick.yaml"), "--set", "cuts.policy=all-local",
                       "--set", "model.width=0.125", "--samples", "16", "--aux-samples", "32",
                       "--decoder-epochs", "1", "--probe-epochs", "1", "--out", str(out)) == 0
    data = json.loads((out / "privacy.json").read_text())
    assert [row["cut"] for row in data["summary"]] == ["(1,1,1,1)"]
    assert data["domains"] == ["mnist", "fashion-mnist"] and data["weights"] == "initial"
    assert (out / "cut_1111.png").is_file()
    assert "what the server can infer per cut" in capsys.readouterr().out


def fake_run(folder, spec: ModelSpec, seed: int):
    """A results folder as a run writes it: mnist's cluster has its D-head convolution zeroed."""
    from safetensors.torch import save_file

    (folder / "weights").mkdir(parents=True)
    for cluster in (0, 1):
        blocks = build_initial_blocks(spec, seed)
        flat = {f"{b}.{k}": v.contiguous() for b, block in blocks.items() for k, v in block.state_dict().items()}
        if cluster == 0:
            flat = {k: (torch.zeros_like(v) if k.startswith("d0.conv.") else v) for k, v in flat.items()}
        save_file(flat, str(folder / "weights" / f"cluster-{cluster}.safetensors"))
    (folder / "rounds.jsonl").write_text(json.dumps({"round": 1, "domain_clusters": {"mnist": 0, "fashion-mnist": 1}})
                                         + "\n")
    return folder


def test_privacy_command_audits_a_runs_trained_weights(repo_root, tmp_path):
    run = fake_run(tmp_path / "run", ModelSpec(width=0.125, z_dim=32), seed=7)
    quick = str(repo_root / "scenarios" / "quick.yaml")
    small = ["--set", "cuts.policy=all-offload", "--samples", "16", "--aux-samples", "32", "--decoder-epochs", "1",
             "--probe-epochs", "1", "--weights", str(run)]
    assert run_command(quick, "--set", "model.width=0.125", *small, "--out", str(tmp_path / "audit")) == 0
    data = json.loads((tmp_path / "audit" / "privacy.json").read_text())
    assert data["weights"] == "trained"
    head = {r["domain"]: r for r in data["tensors"] if r["phase"] == "d_real" and r["tensor"] == "d_head_activation"}
    assert head["mnist"]["dcor_label"] == 0.0 and head["fashion-mnist"]["dcor_label"] > 0.5
    with pytest.raises(P2PGanError, match="do not fit the model"):
        run_command(quick, *small, "--out", str(tmp_path / "wide"))  # the run was width 0.125, quick is 0.25
    with pytest.raises(P2PGanError, match="finished run's results folder"):
        run_command(quick, "--weights", str(tmp_path / "nothing"), "--out", str(tmp_path / "none"))


def test_privacy_command_errors_are_one_line(repo_root, tmp_path):
    quick = str(repo_root / "scenarios" / "quick.yaml")
    with pytest.raises(ConfigError, match=r"quick.yaml:privacy.samples: "):
        run_command(quick, "--samples", "1", "--out", str(tmp_path))
    with pytest.raises(P2PGanError, match="fedavg-gan keeps every block on the client"):
        run_command(quick, "--set", "strategy.name=fedavg-gan", "--out", str(tmp_path))


def test_privacy_enabled_audits_the_trained_weights_at_the_end_of_a_run(repo_root, tmp_path):
    import json

    from p2pgan.config import load_scenario
    from p2pgan.run.session import run_scenario

    scenario = load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "training.rounds=1", "training.max_batches_per_epoch=1", "domains={mnist: 2}", "cuts={fixed: [0, 0, 0, 0]}",
        "privacy={enabled: true, samples: 16, aux_samples: 32, decoder_epochs: 1, probe_epochs: 1, dcor_samples: 8,"
        " png_samples: 2}", f"output.dir={tmp_path}"])
    outcome = run_scenario(scenario)
    assert outcome.status == "completed"
    audited = outcome.summary["privacy"]["cuts"]
    assert [row["cut"] for row in audited] == [[0, 0, 0, 0]]
    assert 0.0 <= audited[0]["label_accuracy"] <= 1.0
    written = json.loads((tmp_path / "privacy" / "privacy.json").read_text())
    assert written and (tmp_path / "privacy" / "privacy.md").is_file()


def test_privacy_section_is_validated_with_the_scenario(repo_root, tmp_path):
    from p2pgan.config import load_scenario
    from p2pgan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"privacy\.samples"):
        load_scenario(repo_root / "scenarios" / "quick.yaml", ["privacy={samples: 1}", f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"privacy\.nope"):
        load_scenario(repo_root / "scenarios" / "quick.yaml", ["privacy={nope: 1}", f"output.dir={tmp_path}"])
