"""Evaluation metrics of docs/design.md §1.5: generation score, classification utility, FID, ARI.

The generator under test is a plain callable ``generate(labels, z) -> images`` (labels
``LongTensor [N]``, z ``FloatTensor [N, z_dim]``, images float ``[N, C, H, W]`` in [-1, 1]), so
nothing here depends on how the split engine holds G. Every random draw (labels, z, classifier
initialisation and batch order) comes from a private generator seeded from
:attr:`MetricsConfig.seed` and the domain name; the global RNG is never touched.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from .classifier import ClassifierCache, DomainClassifier, as_model_input, train_classifier

GenerateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MetricsConfig:
    """Sizes and seeds of the evaluation. Defaults are the paper's; tests use small numbers."""

    score_samples: int = 5000  # generated samples for the generation score (and FID)
    utility_samples: int = 30000  # generated labelled samples to train the utility classifier
    classifier_epochs: int = 5  # epochs of the real-data (judge) classifier
    utility_epochs: int = 5  # epochs of the classifier trained on generated data
    batch_size: int = 128  # training batch size of both classifiers
    gen_batch_size: int = 1000  # how many samples one generate() call produces
    seed: int = 0
    cache_dir: str | None = None  # where trained judge classifiers are cached (None: no cache)
    num_classes: int = 10


@dataclass
class DomainMetrics:
    """Metrics of one domain. Utility fields are percentages; ``None`` when not computed."""

    domain: str
    gen_score: float
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    fpr: float | None = None
    fid: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats/None); ``json.dumps(m.to_json())`` works."""
        return {k: (float(v) if isinstance(v, (float, int, np.floating)) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DomainMetrics:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed derived from ``seed`` and tags (stable across processes and runs)."""
    h = hashlib.sha256(repr((int(seed),) + tuple(str(t) for t in tags)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels, each class appearing ``n // C`` or ``n // C + 1`` times, in random order."""
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def sample_generated(
    generate: GenerateFn,
    z_dim: int,
    n: int,
    *,
    num_classes: int = 10,
    seed: int = 0,
    batch_size: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` samples with balanced labels and z ~ N(0, I) from a generator seeded by ``seed``.

    Returns ``(images float32 [n, C, H, W], labels int64 [n])``; ``generate`` runs under
    ``torch.no_grad`` in chunks of ``batch_size``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    labels = balanced_labels(n, num_classes, gen)
    z = torch.randn(n, z_dim, generator=gen)
    chunks = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            out = generate(labels[i : i + batch_size], z[i : i + batch_size])
            out = torch.as_tensor(out).detach().to("cpu", torch.float32)
            if out.dim() == 3:
                out = out.unsqueeze(1)
            if out.dim() != 4 or len(out) != len(labels[i : i + batch_size]):
                raise ValueError(f"generate() returned shape {tuple(out.shape)} for a batch of {len(labels[i : i + batch_size])}")
            chunks.append(out)
    images = torch.cat(chunks) if chunks else torch.empty(0, 1, 28, 28)
    return images, labels


# ---------------------------------------------------------------------------------------------
# Individual metrics
# ---------------------------------------------------------------------------------------------


def generation_score_from_probs(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y) = E_x p(y|x)`` (one split, like the paper).

    1 when every sample gets the same class distribution; at most the number of classes.
    """
    p = probs.to(torch.float64)
    py = p.mean(dim=0, keepdim=True)
    kl = (p * (torch.log(p + eps) - torch.log(py + eps))).sum(dim=1)
    return float(torch.exp(kl.mean()))


def generation_score(classifier: DomainClassifier, images: torch.Tensor, batch_size: int = 500) -> float:
    """Generation score of ``images`` judged by the domain's real-data classifier."""
    return generation_score_from_probs(classifier.probs(images, batch_size))


def classification_report(y_true: Any, y_pred: Any, num_classes: int = 10) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and macro false-positive rate, all in %.

    FPR of class c = FP_c / (FP_c + TN_c); classes never predicted count precision 0.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    yt = _to_numpy(y_true).astype(np.int64).reshape(-1)
    yp = _to_numpy(y_pred).astype(np.int64).reshape(-1)
    classes = list(range(num_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        yt, yp, labels=classes, average="macro", zero_division=0
    )
    cm = confusion_matrix(yt, yp, labels=classes).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = np.where(fp + tn > 0, fp / (fp + tn), 0.0)
    return {
        "accuracy": 100.0 * float((yt == yp).mean()) if len(yt) else 0.0,
        "precision": 100.0 * float(precision),
        "recall": 100.0 * float(recall),
        "f1": 100.0 * float(f1),
        "fpr": 100.0 * float(fpr.mean()),
    }


def classification_utility(
    gen_images: torch.Tensor,
    gen_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    num_classes: int = 10,
) -> dict[str, float]:
    """Train the CNN only on generated labelled samples, test on real data (metrics in %)."""
    model = train_classifier(gen_images, gen_labels, epochs, batch_size, seed, num_classes)
    pred = model.predict(as_model_input(test_images))
    return classification_report(test_labels, pred, num_classes)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def frechet_distance(feats_a: Any, feats_b: Any, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``[N, D]``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))``, in float64. As in the usual FID
    code, a non-finite ``sqrtm`` is retried with ``eps`` added to both diagonals, a numerically
    complex result keeps its real part, and the result is clamped at 0.
    """
    a, b = _to_numpy(feats_a), _to_numpy(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per feature set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(s_a.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))
    if not math.isfinite(fd):
        raise FloatingPointError("Fréchet distance is not finite")
    return max(fd, 0.0)


def adjusted_rand(clusters: Mapping[str, int], domains: Mapping[str, Any]) -> float:
    """Adjusted Rand index of cluster labels against true domains, over the clients in both."""
    from sklearn.metrics import adjusted_rand_score

    if set(clusters) != set(domains):
        raise ValueError("clusters and domains must cover the same clients")
    ids = sorted(clusters)
    return float(adjusted_rand_score([str(domains[i]) for i in ids], [int(clusters[i]) for i in ids]))


# ---------------------------------------------------------------------------------------------
# One-call evaluation of a domain
# ---------------------------------------------------------------------------------------------


def _unpack(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "images") and hasattr(data, "labels"):
        return torch.as_tensor(data.images), torch.as_tensor(data.labels)
    images, labels = data
    return torch.as_tensor(images), torch.as_tensor(labels)


def domain_classifier(
    domain: str, train: Any, config: MetricsConfig, cache: ClassifierCache | None = None
) -> DomainClassifier:
    """The domain's judge classifier trained on its real train data (cached if configured).

    ``train``: anything with ``.images``/``.labels`` (e.g. :class:`p2pgan.data.DomainData`) or an
    ``(images, labels)`` pair; uint8 images are hashed as-is for the cache key.
    """
    images, labels = _unpack(train)
    seed = derive_seed(config.seed, "judge", domain)
    if cache is None and config.cache_dir is not None:
        cache = ClassifierCache(config.cache_dir)
    if cache is not None:
        return cache.get_or_train(
            domain, images, labels, config.classifier_epochs, config.batch_size, seed, config.num_classes
        )
    return train_classifier(images, labels, config.classifier_epochs, config.batch_size, seed, config.num_classes)


def evaluate_domain(
    domain: str,
    generate: GenerateFn,
    z_dim: int,
    *,
    test: Any,
    config: MetricsConfig = MetricsConfig(),
    train: Any = None,
    classifier: DomainClassifier | None = None,
    cache: ClassifierCache | None = None,
    utility: bool = True,
    fid: bool = True,
) -> DomainMetrics:
    """Evaluate a conditional generator on one domain.

    - ``gen_score`` over ``config.score_samples`` generated samples, judged by ``classifier``
      (or one trained on ``train``, cached per ``config.cache_dir``/``cache``);
    - if ``fid``: Fréchet distance between the judge's penultimate features of the real ``test``
      images and of those generated samples;
    - if ``utility``: a fresh CNN trained on ``config.utility_samples`` generated labelled samples
      for ``config.utility_epochs`` epochs, scored on the real ``test`` split.

    For a cheap per-round generation score pass ``utility=False, fid=False`` and a prebuilt
    ``classifier``. Samples are drawn with seeds derived from ``config.seed`` and ``domain`` (the
    same z every call, so rounds are comparable).
    """
    if classifier is None:
        if train is None:
            raise ValueError("evaluate_domain needs either classifier= or train=")
        classifier = domain_classifier(domain, train, config, cache)
    images, _ = sample_generated(
        generate,
        z_dim,
        config.score_samples,
        num_classes=config.num_classes,
        seed=derive_seed(config.seed, "score", domain),
        batch_size=config.gen_batch_size,
    )
    result = DomainMetrics(domain=domain, gen_score=generation_score(classifier, images))
    if fid or utility:
        test_images, test_labels = _unpack(test)
        test_x = as_model_input(test_images)
    if fid:
        result.fid = frechet_distance(classifier.penultimate(test_x), classifier.penultimate(images))
    del images
    if utility:
        gen_x, gen_y = sample_generated(
            generate,
            z_dim,
            config.utility_samples,
            num_classes=config.num_classes,
            seed=derive_seed(config.seed, "utility-samples", domain),
            batch_size=config.gen_batch_size,
        )
        report = classification_utility(
            gen_x,
            gen_y,
            test_x,
            test_labels,
            epochs=config.utility_epochs,
            batch_size=config.batch_size,
            seed=derive_seed(config.seed, "utility-model", domain),
            num_classes=config.num_classes,
        )
        result.accuracy = report["accuracy"]
        result.precision = report["precision"]
        result.recall = report["recall"]
        result.f1 = report["f1"]
        result.fpr = report["fpr"]
    return result
