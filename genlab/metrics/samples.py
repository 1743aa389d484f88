"""Sample quality, for every model that samples (explicit and implicit alike).

- FID and KID on genlab's own feature network, computed by torchmetrics;
- precision and recall (Kynkäänniemi et al. 2019, k-NN manifolds in feature space);
- the classifier score (the "Inception score" on the feature network's classes) and mode coverage;
- the Parzen-window log-likelihood of the GAN and AAE papers (pixel space; see its flaws).

Every metric returns a :class:`SampleReport` naming the space it was computed in (the feature
network's description), the number of samples and the real data. Features of the real data are
cached per (data, feature network) under ``$GENLAB_CACHE`` (default ``~/.cache/genlab``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genlab.data import Dataset
from genlab.metrics.likelihood import Progress
from genlab.models.base import GenerativeModel

METRICS = ("fid", "kid", "pr", "cs", "parzen")
PARZEN_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))  # the GAN paper's grid


class FeatureNetLike(Protocol):
    """What the metrics need of a feature network (``genlab.metrics.features.FeatureNet``)."""

    name: str
    dim: int
    classes: Sequence[str]  # class names, in the order of the logits
    description: str  # e.g. "genlab-mnist-classifier, 128-d penultimate layer"

    def features(self, x: Tensor) -> Tensor: ...  # (B, C, H, W) in [0, 1] -> (B, dim)
    def logits(self, x: Tensor) -> Tensor: ...  # (B, C, H, W) -> (B, classes)


# ---- reports -------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.4g}"


@dataclass
class SampleReport:
    """One sample-quality number and what it was computed on."""

    metric: str  # "FID", "KID", "precision", "classifier score", "Parzen log-likelihood"
    value: float
    features: str  # the space: the feature network's description, or pixel space and kernel
    n_samples: int
    real: str  # the real data compared with, e.g. "mnist test"
    n_real: int
    std: float | None = None  # the uncertainty, where the metric has one
    std_of: str | None = None  # what that uncertainty is, e.g. "std over 100 subsets of 1,000"
    note: str = ""  # the other numbers of the headline, e.g. "recall 0.65, k=3"
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (histograms, grids)

    def __str__(self) -> str:
        head = f"{self.metric} {_fmt(self.value)}"
        if self.std is not None:
            head += f" ± {_fmt(self.std)} ({self.std_of})"
        if self.note:
            head += f", {self.note}"
        return f"{head} ({self.features}; {self.n_samples:,} samples vs {self.real})"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def describe_real(real: Dataset) -> str:
    """e.g. "mnist test" or "mnist test (static-binarized)"."""
    what = f"{real.name} {real.split}"
    return f"{what} ({real.binarize}-binarized)" if real.binarize else what


# ---- features ------------------------------------------------------------------------------------
class TorchmetricsFeature(nn.Module):
    """genlab's feature network as torchmetrics' ``feature=`` module: the thinnest adapter,
    used only for a network without an int ``num_features`` (``FeatureNet`` has one and goes
    to torchmetrics as it is; see :func:`torchmetrics_feature`).

    Why: ``FrechetInceptionDistance`` sizes its states from ``feature.num_features`` and, when
    the module has no such attribute, probes it with a (1, 3, 299, 299) uint8 image (Inception's
    input), which a 1x28x28 network for float images in [0, 1] cannot take. With a custom
    module torchmetrics neither casts nor resizes the images (``normalize`` only applies to its
    own Inception), so ``forward`` passes them through unchanged. ``KernelInceptionDistance``
    never probes; it takes the same module for symmetry.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features: int = int(net.dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, dim)
        return self.net.features(x)


def torchmetrics_feature(net: nn.Module) -> nn.Module:
    """What to pass as torchmetrics' ``feature=``: the network itself when torchmetrics can
    size it (an int ``num_features``) and its ``forward`` gives the features, else the adapter."""
    if isinstance(getattr(net, "num_features", None), int):
        return net
    return TorchmetricsFeature(net)


def _device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    # Features must not depend on the batch (batch norm) or on chance (dropout).
    was = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was)


def _batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


@torch.no_grad()
def extract(net: nn.Module, x: Tensor, what: str = "features", batch_size: int = 500) -> Tensor:
    """(N, dim) features or (N, classes) logits of images (N, C, H, W), in batches, on the CPU."""
    device = _device(net)
    fn = getattr(net, what)
    with _eval_mode(net):
        return torch.cat([fn(b.to(device)).float().cpu() for b in _batches(x, batch_size)])


def feature_net_hash(net: nn.Module) -> str:
    """sha256 of the network's class, name and weights (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256(f"{type(net).__qualname__}:{getattr(net, 'name', '')}".encode())
    for key, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        # reshape(-1): 0-d buffers (batch norm's num_batches_tracked) cannot be viewed as bytes.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("GENLAB_CACHE") or Path.home() / ".cache" / "genlab") / "features"


def reference_key(real: Dataset, net: nn.Module) -> str:
    """Cache key of the real data's features: the images' bytes and the network's weights.

    Hashing the images (31 MB for 10k MNIST images: well under the cost of the features) keys
    hand-built datasets and every binarization correctly, where a name alone could not.
    """
    h = hashlib.sha256(feature_net_hash(net).encode())
    h.update(f"{tuple(real.x.shape)}".encode())
    h.update(real.x.contiguous().numpy().tobytes())
    return h.hexdigest()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    # Write next to the target, then rename: a killed process or a parallel writer never
    # leaves a half-written file under the final name.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reference_features(real: Dataset, net: nn.Module, cache: bool = True,
                       batch_size: int = 500) -> Tensor:
    """(N, dim) features of the real images, from the cache when the same data and network
    were seen before. The FID/KID/precision-recall statistics of the real side are functions
    of these, so a cache hit gives identical statistics."""
    if not cache:
        return extract(net, real.x, batch_size=batch_size)
    name = f"{real.name}-{real.split}-{getattr(net, 'name', 'net')}-{reference_key(real, net)[:24]}"
    path = cache_dir() / f"{name}.npy"
    with contextlib.suppress(OSError, ValueError, EOFError):  # absent or damaged: recompute
        cached = np.load(path)
        if cached.shape == (len(real), net.dim) and cached.dtype == np.float32:
            return torch.from_numpy(cached)
    feats = extract(net, real.x, batch_size=batch_size)
    _atomic_save(path, feats.numpy())
    return feats


# ---- FID and KID (torchmetrics) ------------------------------------------------------------------
def _report_base(net: FeatureNetLike, n: int, real: Dataset) -> dict[str, Any]:
    return {"features": net.description, "n_samples": n, "real": describe_real(real),
            "n_real": len(real)}


def fid_reference(real: Dataset, feature_net: nn.Module, *, cache: bool = True,
                  batch_size: int = 500) -> FrechetInceptionDistance:
    """torchmetrics' FID holding the real side's statistics (from the cached features);
    ``reset()`` keeps them, so one of these scores many sets of images (``fid_of``)."""
    ref = reference_features(real, feature_net, cache, batch_size).double()  # (N, dim)
    metric = FrechetInceptionDistance(feature=torchmetrics_feature(feature_net),
                                      reset_real_features=False)
    metric = metric.to(_device(feature_net))
    # The real side from the cached features: the same sums update() would accumulate.
    metric.real_features_sum = ref.sum(0).to(metric.real_features_sum)
    metric.real_features_cov_sum = (ref.T @ ref).to(metric.real_features_cov_sum)
    metric.real_features_num_samples = torch.tensor(len(ref), device=metric.device)
    return metric


def fid_of(images: Tensor, metric: FrechetInceptionDistance, feature_net: nn.Module,
           batch_size: int = 500) -> float:
    """The FID of ``images`` against the real statistics ``metric`` holds (``fid_reference``)."""
    metric.reset()  # the fake side only
    with _eval_mode(feature_net):
        for b in _batches(images, batch_size):
            metric.update(b.to(metric.device), real=False)
        return float(metric.compute())


def fid(images: Tensor, real: Dataset, feature_net: nn.Module, *, cache: bool = True,
        batch_size: int = 500) -> SampleReport:
    """Fréchet distance between Gaussians fitted to the features of ``images`` and of ``real``
    (torchmetrics' ``FrechetInceptionDistance`` on genlab's feature network)."""
    metric = fid_reference(real, feature_net, cache=cache, batch_size=batch_size)
    value = fid_of(images, metric, feature_net, batch_size)
    return SampleReport("FID", value, **_report_base(feature_net, len(images), real))


def kid(images: Tensor, real: Dataset, feature_net: nn.Module, *, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0, cache: bool = True,
        batch_size: int = 500) -> SampleReport:
    """Kernel inception distance: the unbiased MMD² with the cubic polynomial kernel, its mean
    and standard deviation over ``subsets`` random subsets of ``subset_size`` (torchmetrics'
    ``KernelInceptionDistance``; ``subset_size`` is capped at the smaller set)."""
    ref = reference_features(real, feature_net, cache, batch_size)
    size = min(subset_size, len(ref), len(images))
    with warnings.catch_warnings():
        # Its warning that it keeps every feature: (10k, 128) floats here, 5 MB.
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(feature=torchmetrics_feature(feature_net),
                                         subsets=subsets, subset_size=size)
    metric = metric.to(_device(feature_net))
    metric.real_features.append(ref.to(metric.device))
    with _eval_mode(feature_net):
        for b in _batches(images, batch_size):
            metric.update(b.to(metric.device), real=False)
        # torchmetrics draws its subsets from the global generator: seed it, leave it as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return SampleReport("KID", float(mean), std=float(std),
                        std_of=f"std over {subsets} subsets of {size:,}",
                        **_report_base(feature_net, len(images), real))


# ---- precision and recall ------------------------------------------------------------------------
def _kth_neighbour_radii(f: Tensor, k: int, chunk: int = 1000) -> Tensor:
    """(N,) distance from each row of f (N, D) to its k-th nearest other row."""
    radii = [torch.cdist(c, f).topk(k + 1, dim=1, largest=False).values[:, k]
             for c in _batches(f, chunk)]  # column k: column 0 is the point itself
    return torch.cat(radii)


def _in_manifold(query: Tensor, ref: Tensor, radii: Tensor, chunk: int = 1000) -> Tensor:
    """(M,) bool: whether each query row lies in some ball (ref[i], radii[i])."""
    return torch.cat([(torch.cdist(c, ref) <= radii).any(dim=1) for c in _batches(query, chunk)])


def precision_recall_features(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features fake (M, D) against
    real (N, D): precision is the share of fake points inside the real manifold (the union of
    balls reaching each real point's k-th nearest real neighbour), recall the share of real
    points inside the fake manifold."""
    real, fake = real.double(), fake.double()
    precision = _in_manifold(fake, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _in_manifold(real, fake, _kth_neighbour_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def precision_recall(images: Tensor, real: Dataset, feature_net: nn.Module, *, k: int = 3,
                     cache: bool = True, batch_size: int = 500) -> SampleReport:
    """Precision (fidelity) and recall (diversity) in the feature network's space; the value
    is the precision, the recall is in ``details`` and the headline."""
    ref = reference_features(real, feature_net, cache, batch_size)
    p, r = precision_recall_features(ref, extract(feature_net, images, batch_size=batch_size), k)
    return SampleReport("precision", p, note=f"recall {_fmt(r)}, k={k}",
                        details={"recall": r, "k": k},
                        **_report_base(feature_net, len(images), real))


# ---- classifier score and mode coverage ----------------------------------------------------------
def classifier_score_probs(probs: Tensor, splits: int = 10) -> tuple[float, float]:
    """exp E_x[KL(p(y|x) || p(y))] of class probabilities (N, K): the mean and standard
    deviation over ``splits`` equal parts (the Inception score's protocol)."""
    scores = []
    for part in probs.double().chunk(splits):
        marginal = part.mean(0, keepdim=True)  # (1, K) p(y) of this part
        # xlogy: 0 log 0 = 0 for the classes no image gives any probability.
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(1)  # (n,)
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False)) if len(s) > 1 else 0.0


def mode_coverage(predicted: Tensor, classes: int, min_share: float = 0.1) -> tuple[int, list[int]]:
    """(covered, histogram): how many classes receive at least ``min_share`` of their uniform
    share n/K of the predicted labels (N,) (a single stray image does not cover a class), and
    the count of every class."""
    hist = torch.bincount(predicted, minlength=classes)[:classes]
    covered = int((hist >= min_share * len(predicted) / classes).sum())
    return covered, hist.tolist()


def classifier_score(images: Tensor, feature_net: nn.Module, *, real: Dataset | None = None,
                     splits: int = 10, min_share: float = 0.1,
                     batch_size: int = 500) -> SampleReport:
    """The "Inception score" analogue on the feature network's class probabilities, with the
    classes the samples cover (the histogram of predicted classes in ``details``). ``real``
    only names the data in the report: the score does not look at real images."""
    logits = extract(feature_net, images, "logits", batch_size)  # (N, K)
    mean, std = classifier_score_probs(logits.softmax(1), splits)
    k = logits.shape[1]
    covered, hist = mode_coverage(logits.argmax(1), k, min_share)
    names = getattr(feature_net, "classes", None)
    names = list(map(str, names)) if isinstance(names, Sequence) and len(names) == k else None
    return SampleReport(
        "classifier score", mean, features=feature_net.description, n_samples=len(images),
        real=describe_real(real) if real is not None else "no real data",
        n_real=len(real) if real is not None else 0, std=std, std_of=f"std over {splits} splits",
        note=f"covers {covered}/{k} classes",
        details={"covered": covered, "classes": k, "histogram": hist, "class_names": names,
                 "min_share": min_share})


# ---- Parzen window -------------------------------------------------------------------------------
def parzen_log_likelihood(samples: Tensor, x: Tensor, sigmas: Sequence[float],
                          chunk: int = 500) -> Tensor:
    """(len(sigmas), M) log-density of each image x (M, ...) under the Gaussian kernel density
    estimate on ``samples`` (N, ...) in pixel space, one row per bandwidth:
    log (1/N) sum_j N(x; s_j, sigma^2 I)."""
    s = samples.flatten(1).double()  # (N, D)
    x = x.flatten(1).double()  # (M, D)
    n, d = s.shape
    sig = torch.tensor(sigmas, dtype=torch.float64)  # (S,)
    # log N and the normaliser: D/2 log(2 pi sigma^2) per bandwidth.
    const = math.log(n) + 0.5 * d * torch.log(2 * math.pi * sig**2)  # (S,)
    s_sq = (s * s).sum(1)  # (N,)
    out = []
    for c in _batches(x, chunk):
        # Squared distances (m, N) in float64: in float32 ||x||^2 + ||s||^2 - 2 x.s loses
        # about 1e-4 of ~100, which a bandwidth of 0.1 turns into nats.
        d2 = ((c * c).sum(1, keepdim=True) + s_sq - 2 * c @ s.T).clamp(min=0)
        # One bandwidth at a time: (S, m, N) at once would be 400 MB for 500 x 10k x 10.
        lse = torch.stack([torch.logsumexp(-d2 / (2 * v**2), dim=1) for v in sig])  # (S, m)
        out.append(lse - const[:, None])
    return torch.cat(out, dim=1)


def _pixels(data: Dataset | Tensor) -> Tensor:
    return data.x if isinstance(data, Dataset) else data


def _named(data: Dataset | Tensor) -> str:
    return describe_real(data) if isinstance(data, Dataset) else "given images"


def parzen(samples: Tensor, val: Dataset | Tensor, test: Dataset | Tensor, *,
           sigmas: Sequence[float] = PARZEN_SIGMAS, n_samples: int = 10_000,
           n_val: int = 1000, chunk: int = 500) -> SampleReport:
    """Parzen-window log-likelihood (Breuleux et al. 2011), the protocol of the GAN (Goodfellow
    et al. 2014) and AAE (Makhzani et al. 2015) papers: a Gaussian kernel on ``n_samples``
    (10,000) samples in pixel space, its bandwidth chosen from ``sigmas`` (default
    ``logspace(-1, 0, 10)``) by the mean log-likelihood of ``n_val`` validation images, and the
    mean over the test images reported in nats with its standard error. ``val`` and ``test``
    are Datasets or image tensors (N, ...).

    Known flaws (Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative
    models"): in 784 dimensions a Parzen estimate on 10,000 samples is far from the model's
    density, even for a model whose likelihood is known it misses it by hundreds of nats, and
    the ranking it gives can be reversed; a model that stores its training images (k-means
    centres, or the training set itself) scores better than real generative models; and it
    rewards blur, not sample quality. Report it only to compare with those papers, never alone.
    """
    samples = samples[:n_samples]
    val_x, test_x = _pixels(val)[:n_val], _pixels(test)
    val_ll = parzen_log_likelihood(samples, val_x, sigmas, chunk).mean(1)  # (S,)
    sigma = float(sigmas[int(val_ll.argmax())])
    ll = parzen_log_likelihood(samples, test_x, [sigma], chunk)[0]  # (M,)
    stderr = float(ll.std() / math.sqrt(len(ll)))
    return SampleReport(
        "Parzen log-likelihood (nats)", float(ll.mean()),
        features=f"pixel space, Gaussian kernel σ={sigma:.3g} chosen on "
                 f"{_named(val)} ({len(val_x):,} images)",
        n_samples=len(samples), real=_named(test), n_real=len(test_x),
        std=stderr, std_of="standard error",
        details={"sigma": sigma, "sigmas": list(map(float, sigmas)),
                 "val_log_likelihood": val_ll.tolist()})


# ---- one entry point -----------------------------------------------------------------------------
@torch.no_grad()
def draw(model: GenerativeModel, n: int, batch_size: int = 500, progress: bool = True) -> Tensor:
    """(n, C, H, W) samples of a model, drawn in batches (with a progress bar), on the CPU."""
    bar = Progress(n, f"sampling {n} images", enabled=progress)
    out = []
    try:
        for i in range(0, n, batch_size):
            out.append(model.sample(min(batch_size, n - i)).float().cpu())
            bar.update(len(out[-1]))
    finally:
        bar.close()
    return torch.cat(out)


def sample_quality(model_or_images: GenerativeModel | Tensor, real: Dataset,
                   feature_net: nn.Module, n: int = 10_000,
                   metrics: Sequence[str] = ("fid", "kid", "pr", "cs"), *,
                   val: Dataset | None = None, k: int = 3, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, batch_size: int = 500, cache: bool = True,
                   progress: bool = True) -> dict[str, SampleReport]:
    """The sample-quality reports of a model (``n`` samples drawn in batches) or of given
    images (N, C, H, W) in [0, 1], against ``real`` (e.g. the test split), keyed by metric:
    "fid", "kid", "pr" (precision and recall), "cs" (classifier score and mode coverage),
    "parzen" (pixel space; needs ``val`` for its bandwidth, ``real`` is its test split).

    Compare like with like: a model of binarized MNIST against binarized real images.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    if "parzen" in metrics and val is None:
        raise ValueError("the Parzen log-likelihood chooses its bandwidth on val=: pass a Dataset")
    if isinstance(model_or_images, Tensor):
        images = model_or_images[:n].float().cpu()
    else:
        images = draw(model_or_images, n, batch_size, progress)
    if images.shape[1:] != real.x.shape[1:]:
        raise ValueError(f"images of shape {tuple(images.shape[1:])} against real data of "
                         f"shape {tuple(real.x.shape[1:])}")
    tm = {"cache": cache, "batch_size": batch_size}
    out: dict[str, SampleReport] = {}
    for m in metrics:
        if m == "fid":
            out[m] = fid(images, real, feature_net, **tm)
        elif m == "kid":
            out[m] = kid(images, real, feature_net, subsets=kid_subsets,
                         subset_size=kid_subset_size, **tm)
        elif m == "pr":
            out[m] = precision_recall(images, real, feature_net, k=k, **tm)
        elif m == "cs":
            out[m] = classifier_score(images, feature_net, real=real, batch_size=batch_size)
        else:
            assert val is not None
            out[m] = parzen(images, val, real)
    return out
