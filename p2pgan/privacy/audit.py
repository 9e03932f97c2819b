"""The leakage audit: for each cut, what a curious server can infer from what it receives.

Per domain: draw the clients' private images (train split) and the attacker's auxiliary images
(test split, held by no client); play one iteration of each over the real blocks
(:func:`~p2pgan.privacy.observer.observe`); for every distinct tensor the audited cuts send, run
the label probe and its control, the distance correlations, and (for tensors computed from real
images) the inversion decoder. A cut's leakage is the worst over the tensors it sends.

:func:`audit_blocks` is the core; :func:`audit_initial` audits the blocks every node builds from
the scenario seed (what the first iteration reveals), :func:`audit_trained` audits trained weights.
Files are written by :mod:`p2pgan.privacy.files`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from p2pgan.data import load_domain, to_model_input
from p2pgan.errors import P2PGanError
from p2pgan.metrics import derive_seed
from p2pgan.model.blocks import Block, ModelSpec, build_initial_blocks
from p2pgan.model.segments import ClientCut, all_cut_options
from p2pgan.privacy.attacks import constant_guess, infer_labels, invert
from p2pgan.privacy.dcor import bias_corrected_distance_correlation, capped
from p2pgan.privacy.observer import Observation, TensorKey, keys_for, observe, received_keys
from p2pgan.config.privacy import PrivacyOptions

StateDicts = Mapping[str, Mapping[str, torch.Tensor]]  # block name -> state_dict


@dataclass(frozen=True)
class TensorLeakage:
    """What one kind of received tensor reveals about one domain's private data."""

    domain: str
    key: TensorKey
    shape: tuple[int, ...]  # per sample
    label_accuracy: float
    shuffled_label_accuracy: float
    chance: float
    dcor_label: float  # bias-corrected dCor(one-hot label, tensor)
    ssim: float | None = None  # inversion, only for tensors computed from real images
    psnr: float | None = None
    dcor_image: float | None = None  # bias-corrected dCor(image, tensor)


@dataclass(frozen=True)
class CutLeakage:
    """One cut on one domain: the worst of what its tensors reveal."""

    cut: ClientCut
    domain: str
    tensors: tuple[TensorLeakage, ...]

    @property
    def _image_tensors(self) -> tuple[TensorLeakage, ...]:
        return tuple(t for t in self.tensors if t.ssim is not None)

    @property
    def worst_inversion(self) -> TensorLeakage:
        return max(self._image_tensors, key=lambda t: t.ssim)

    @property
    def ssim(self) -> float:
        return self.worst_inversion.ssim

    @property
    def psnr(self) -> float:
        return self.worst_inversion.psnr

    @property
    def worst_label(self) -> TensorLeakage:
        return max(self.tensors, key=lambda t: t.label_accuracy)

    @property
    def label_accuracy(self) -> float:
        return self.worst_label.label_accuracy

    @property
    def chance(self) -> float:
        return self.tensors[0].chance

    @property
    def dcor_image(self) -> float:
        return max(t.dcor_image for t in self._image_tensors)

    @property
    def dcor_label(self) -> float:
        return max(t.dcor_label for t in self.tensors)


@dataclass(frozen=True)
class DomainBaseline:
    domain: str
    private: int
    auxiliary: int
    mean_image_ssim: float  # guessing the auxiliary mean image for every private one
    mean_image_psnr: float
    chance: float


@dataclass(frozen=True)
class CutSummary:
    """One cut averaged over the audited domains (each domain's worst tensor first)."""

    cut: ClientCut
    ssim: float
    psnr: float
    label_accuracy: float
    chance: float
    dcor_image: float
    dcor_label: float
    inversion_from: str  # the tensor the best reconstruction came from
    label_from: str  # the tensor the best label probe read


@dataclass
class AuditResult:
    scenario: str
    weights: str  # "initial" (from the seed) or "trained"
    spec: ModelSpec
    seed: int
    batch_size: int
    options: PrivacyOptions
    cuts: tuple[ClientCut, ...]
    baselines: dict[str, DomainBaseline] = field(default_factory=dict)
    tensors: list[TensorLeakage] = field(default_factory=list)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # domain -> [k, 1, H, W]
    reconstructions: dict[tuple[str, TensorKey], torch.Tensor] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.baselines)

    def leakage(self, cut: ClientCut, domain: str) -> CutLeakage:
        by_key = {t.key: t for t in self.tensors if t.domain == domain}
        return CutLeakage(cut, domain, tuple(by_key[key] for key in received_keys(cut)))

    def per_cut(self) -> list[CutLeakage]:
        return [self.leakage(cut, domain) for cut in self.cuts for domain in self.domains]

    def summary(self) -> list[CutSummary]:
        rows = []
        for cut in self.cuts:
            per_domain = [self.leakage(cut, d) for d in self.domains]
            rows.append(CutSummary(
                cut,
                _mean([c.ssim for c in per_domain]),
                _mean([c.psnr for c in per_domain]),
                _mean([c.label_accuracy for c in per_domain]),
                _mean([c.chance for c in per_domain]),
                _mean([c.dcor_image for c in per_domain]),
                _mean([c.dcor_label for c in per_domain]),
                _most_common([c.worst_inversion.key.name for c in per_domain]),
                _most_common([c.worst_label.key.name for c in per_domain]),
            ))
        return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _most_common(names: list[str]) -> str:
    return max(dict.fromkeys(names), key=names.count)


@dataclass(frozen=True)
class _Sample:
    images: torch.Tensor  # [N, 1, H, W] in [-1, 1]
    labels: torch.Tensor


def _draw(domain: str, split: str, count: int, seed: int, data_root: Path | None) -> _Sample:
    data = load_domain(domain, split, data_root)
    generator = torch.Generator().manual_seed(derive_seed(seed, "privacy", domain, split))
    index = torch.randperm(len(data), generator=generator)[: min(count, len(data))].sort().values
    return _Sample(to_model_input(data.images[index]), data.labels[index].clone())


def _dcor(x: torch.Tensor, y: torch.Tensor, cap: int, seed: int) -> float:
    index = capped(x.shape[0], cap, torch.Generator().manual_seed(seed))
    return bias_corrected_distance_correlation(x[index], y[index])


def _measure(domain: str, key: TensorKey, aux: Observation, private: Observation, spec: ModelSpec,
             options: PrivacyOptions, seed: int) -> tuple[TensorLeakage, torch.Tensor | None]:
    aux_x, private_x = aux.tensors[key], private.tensors[key]
    tag = derive_seed(seed, "privacy", domain, key.name) % (2**31)
    labels = infer_labels(aux_x, aux.labels, private_x, private.labels, num_classes=spec.num_classes,
                          epochs=options.probe_epochs, seed=tag)
    one_hot = F.one_hot(private.labels, spec.num_classes)
    leak = dict(domain=domain, key=key, shape=tuple(private_x.shape[1:]), label_accuracy=labels.accuracy,
                shuffled_label_accuracy=labels.shuffled_accuracy, chance=labels.chance,
                dcor_label=_dcor(one_hot, private_x, options.dcor_samples, tag))
    if not key.from_real_images:
        return TensorLeakage(**leak), None
    inversion = invert(aux_x, aux.images, private_x, private.images, epochs=options.decoder_epochs, seed=tag)
    leak.update(ssim=inversion.ssim, psnr=inversion.psnr,
                dcor_image=_dcor(private.images, private_x, options.dcor_samples, tag))
    return TensorLeakage(**leak), inversion.reconstructions[: options.png_samples]


def audit_blocks(blocks_for: Callable[[str], Mapping[str, Block]], spec: ModelSpec, domains: Sequence[str],
                 cuts: Sequence[ClientCut], options: PrivacyOptions, *, scenario: str, weights: str, seed: int,
                 batch_size: int, data_root: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> AuditResult:
    """Audit ``cuts`` (all 16 with ``options.all_cuts``) on each domain with ``blocks_for(domain)``."""
    started = time.perf_counter()
    cuts = tuple(all_cut_options()) if options.all_cuts else tuple(dict.fromkeys(cuts))
    if not cuts:
        raise ValueError("no cuts to audit")
    result = AuditResult(scenario, weights, spec, seed, batch_size, options, cuts)
    keys = keys_for(cuts)
    for domain in dict.fromkeys(domains):
        if progress:
            progress(f"{domain}: observing {len(keys)} tensor kinds")
        private = _draw(domain, "train", options.samples, seed, data_root)
        aux = _draw(domain, "test", options.aux_samples, seed, data_root)
        blocks = blocks_for(domain)
        z = torch.Generator().manual_seed(derive_seed(seed, "privacy", domain, "z"))
        seen_private = observe(blocks, private.images, private.labels, keys, z_dim=spec.z_dim,
                               batch_size=batch_size, generator=z)
        seen_aux = observe(blocks, aux.images, aux.labels, keys, z_dim=spec.z_dim, batch_size=batch_size, generator=z)
        floor_ssim, floor_psnr = constant_guess(aux.images, private.images)
        result.baselines[domain] = DomainBaseline(domain, len(private.labels), len(aux.labels), floor_ssim, floor_psnr,
                                                  float(torch.bincount(private.labels).max()) / len(private.labels))
        result.originals[domain] = private.images[: options.png_samples]
        for key in keys:
            if progress:
                progress(f"{domain}: {key.name}")
            leak, recon = _measure(domain, key, seen_aux, seen_private, spec, options, seed)
            result.tensors.append(leak)
            if recon is not None:
                result.reconstructions[(domain, key)] = recon
    result.wall_s = time.perf_counter() - started
    return result


def audit_initial(spec: ModelSpec, domains: Sequence[str], cuts: Sequence[ClientCut], options: PrivacyOptions, *,
                  scenario: str, seed: int, batch_size: int, data_root: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> AuditResult:
    """Audit the blocks every node builds from ``seed``: what the first iteration reveals."""
    return audit_blocks(lambda domain: build_initial_blocks(spec, seed), spec, domains, cuts, options,
                        scenario=scenario, weights="initial", seed=seed, batch_size=batch_size,
                        data_root=data_root, progress=progress)


def load_blocks(spec: ModelSpec, seed: int, weights: StateDicts) -> dict[str, Block]:
    """Fresh blocks with ``weights`` loaded (strictly) into the blocks it names."""
    blocks = build_initial_blocks(spec, seed)
    for name, state in weights.items():
        if name not in blocks:
            raise P2PGanError(f"weights for block {name!r}, which the model does not have "
                              f"(expected {', '.join(blocks)})")
        try:
            blocks[name].load_state_dict(state)
        except RuntimeError as exc:  # shapes or names that do not fit: another width, another model
            problem = " ".join(str(exc).split())
            raise P2PGanError(f"weights for block {name} do not fit the model (width {spec.width:g}, "
                              f"z_dim {spec.z_dim}): {problem}") from None
    return blocks


def audit_trained(weights: StateDicts, spec: ModelSpec, domains: Sequence[str], cuts: Sequence[ClientCut],
                  options: PrivacyOptions, *, scenario: str, seed: int, batch_size: int,
                  domain_weights: Mapping[str, StateDicts] | None = None, data_root: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> AuditResult:
    """Audit trained weights (block name -> state_dict; blocks not named keep their initial
    weights). ``domain_weights[domain]`` overrides blocks for one domain, e.g. the head and tail
    copies of one of its clients after cluster averaging."""
    def blocks_for(domain: str) -> dict[str, Block]:
        return load_blocks(spec, seed, {**weights, **(domain_weights or {}).get(domain, {})})

    return audit_blocks(blocks_for, spec, domains, cuts, options, scenario=scenario, weights="trained", seed=seed,
                        batch_size=batch_size, data_root=data_root, progress=progress)
