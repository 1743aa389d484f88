"""Anomaly detection: how well a score separates in-distribution from out-of-distribution images.

Convention throughout: the *positives* are the out-of-distribution (OOD) images and a score is
an *anomaly* score, higher meaning "more likely OOD" (e.g. -log p(x)). An AUROC below 0.5 then
means the score ranks the OOD images as *more* typical than the in-distribution ones, as the
likelihood of a model trained on Fashion-MNIST does for MNIST (Nalisnick et al. 2019,
arXiv:1810.09136).

The scores a model supports are chosen from its capabilities (:func:`ood_scores`):

- **log-likelihood**: -log p(x), exact or the model's estimate (the VAE's IWAE bound). Bits per
  dimension is the same number rescaled, so it gives the same ranking and the same metrics;
- **typicality** (Nalisnick et al. 2019b, arXiv:1906.02994): |-mean log p over a batch of M
  images - H|, with H the mean of -log p on the training split (the entropy estimate). It scores
  batches, not images: in and out test images are cut into disjoint batches of M;
- **likelihood ratio** (Ren et al. 2019, arXiv:1906.02845): -(log p(x) - log p_bg(x)) with a
  background model trained on perturbed inputs (``perturb:RATE:SOURCE`` data), which cancels
  the population-level statistics (e.g. the number of background pixels) both models share;
- **input complexity** (Serrà et al. 2020, arXiv:1909.11480): -log p(x) - L(x) ln 2, with L(x)
  the image's length in bits as a PNG (:func:`png_bits`). It is the likelihood ratio with a
  generic lossless compressor as the background model: simple images (MNIST's black strokes on
  black, to a model of Fashion-MNIST) are cheap to the compressor too, so they stop looking
  typical, and nothing has to be trained. It can over-correct: where the likelihood alone
  already separates the sets it may undo that (benchmarks/RESULTS.md, out-of-distribution);
- **discriminator**: a GAN discriminator's logit, negated (a model with ``discriminate``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.data import Dataset
from genlab.data.seeds import generator, mix

CORRUPTIONS = ("noise", "constant", "flip", "invert")
TAG_CORRUPT = 0xC0  # seeds.mix tag of the corruptions' stream (the data package's tags are 1-6)


def _pair(scores_pos: Tensor, scores_neg: Tensor, what: str) -> tuple[Tensor, Tensor]:
    pos = scores_pos.double().flatten()
    neg = scores_neg.double().flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"{what} needs at least one positive and one negative score")
    if bool(torch.isnan(pos).any() | torch.isnan(neg).any()):
        raise ValueError(f"{what}: the scores hold NaN")
    return pos, neg


def auroc(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = _pair(scores_pos, scores_neg, "auroc")
    allv = torch.cat([pos, neg])
    # Average ranks handle ties exactly (Mann-Whitney U statistic).
    _, inverse, counts = torch.unique(allv, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()
    ranks = (last_rank - (counts.double() - 1) / 2)[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _roc_steps(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """(true positives, false positives) (T,) when flagging scores >= each distinct value,
    thresholds in decreasing order: tied scores enter together, never one by one."""
    values, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)  # ascending
    t = len(values)
    tp = torch.zeros(t, dtype=torch.float64).index_add_(0, inverse[: len(pos)],
                                                        torch.ones(len(pos), dtype=torch.float64))
    fp = torch.zeros(t, dtype=torch.float64).index_add_(0, inverse[len(pos):],
                                                        torch.ones(len(neg), dtype=torch.float64))
    return tp.flip(0).cumsum(0), fp.flip(0).cumsum(0)


def aupr(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """Area under the precision-recall curve as average precision: sum over thresholds of
    (recall gained) x precision, the step-wise sum that does not interpolate (as
    scikit-learn's ``average_precision_score``). Chance level is the share of positives."""
    pos, neg = _pair(scores_pos, scores_neg, "aupr")
    tp, fp = _roc_steps(pos, neg)
    precision = tp / (tp + fp)
    recall_gain = torch.diff(tp, prepend=tp.new_zeros(1)) / len(pos)
    return float((recall_gain * precision).sum())


def fpr_at_tpr(scores_pos: Tensor, scores_neg: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that flags at least ``tpr`` of the
    positives: the share of in-distribution images wrongly flagged when 95% of the OOD images
    are caught (lower is better)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos, neg = _pair(scores_pos, scores_neg, "fpr_at_tpr")
    tp, fp = _roc_steps(pos, neg)
    # The first (highest) threshold reaching the rate; a tolerance keeps 19/20 from missing 0.95.
    first = int(torch.nonzero(tp / len(pos) >= tpr - 1e-12)[0, 0])
    return float(fp[first] / len(neg))


@dataclass
class Detection:
    """How well one anomaly score separates the OOD images (positives) from the others."""

    score: str  # what was scored, e.g. "log-likelihood (exact)", "typicality, M=5"
    auroc: float
    aupr: float  # out-of-distribution images as the positive class
    fpr95: float  # false-positive rate at 95% true-positive rate
    n_in: int  # items scored: images, or batches for typicality
    n_out: int

    @classmethod
    def of(cls, score: str, in_scores: Tensor, out_scores: Tensor) -> Detection:
        """The metrics of anomaly scores: ``in_scores`` (N,), ``out_scores`` (M,)."""
        return cls(score, auroc(out_scores, in_scores), aupr(out_scores, in_scores),
                   fpr_at_tpr(out_scores, in_scores), len(in_scores), len(out_scores))


@dataclass
class DetectionReport:
    """The detection metrics of every score a model supports, on one pair of data sets."""

    model: str
    in_data: str  # Dataset.describe() of the in-distribution test images
    out_data: str
    rows: list[Detection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "bits/dim ranks as log-likelihood"

    def __str__(self) -> str:
        w = max([len(r.score) for r in self.rows] + [5])
        lines = [f"{self.model}: in {self.in_data}", f"{' ' * len(self.model)}  out "
                 f"{self.out_data}", f"{'score':<{w}}  AUROC   AUPR   FPR@95   n in / out"]
        lines += [f"{r.score:<{w}}  {r.auroc:.3f}   {r.aupr:.3f}  {r.fpr95:.3f}    "
                  f"{r.n_in} / {r.n_out}" for r in self.rows]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---- scores ---------------------------------------------------------------------------------


def batch_means(values: Tensor, m: int, seed: int = 0) -> Tensor:
    """Means (N // m,) of ``values`` (N,) over disjoint batches of ``m``, after a seeded shuffle
    (data sets are often sorted, by class or file name); the remainder is dropped."""
    if m < 1:
        raise ValueError(f"batch size must be at least 1, got {m}")
    n = len(values) // m
    if n == 0:
        raise ValueError(f"typicality with M={m} needs at least {m} images, got {len(values)}")
    order = torch.randperm(len(values), generator=generator(seed))[: n * m]
    return values[order].view(n, m).mean(1)


def typicality(log_p: Tensor, entropy: float, m: int, seed: int = 0) -> Tensor:
    """Typicality test statistic (N // m,): |mean -log p over a batch of m - H|."""
    return (batch_means(-log_p, m, seed) - entropy).abs()


def corrupt(x: Tensor, kind: str, seed: int = 0) -> Tensor:
    """A synthetic OOD set from grey images ``x`` (N, C, H, W) in [0, 1], before binarization:
    ``noise`` uniform grey noise, ``constant`` one uniform grey value per image, ``flip`` the
    images upside down, ``invert`` 1 - x."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}: expected one of {', '.join(CORRUPTIONS)}")
    # A stream of its own: binarizing with generator(seed) must not reuse these uniforms
    # (u < u is never true: every noise pixel would come out 0).
    g = generator(mix(TAG_CORRUPT, seed))
    if kind == "noise":
        return torch.rand(x.shape, generator=g)
    if kind == "constant":
        return torch.rand(len(x), 1, 1, 1, generator=g).expand_as(x).clone()
    if kind == "flip":
        return x.flip(-2)
    return 1 - x  # invert


def png_bits(x: Tensor) -> Tensor:
    """(N,) float64: the length in bits of each image of x (N, C, H, W) in [0, 1] as a PNG at
    the highest compression, its values rounded to 8 bits (C = 3: one RGB image; any other C:
    the channels stacked vertically as one grey image). L(x) of the input-complexity score."""
    from PIL import Image

    values = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    bits = torch.empty(len(values), dtype=torch.float64)
    for i, v in enumerate(values):  # (C, H, W)
        image = (Image.fromarray(v.permute(1, 2, 0).numpy(), "RGB") if v.shape[0] == 3
                 else Image.fromarray(v.reshape(-1, v.shape[-1]).numpy(), "L"))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        bits[i] = 8 * buffer.tell()
    return bits


def has_discriminator(model: Any) -> bool:
    return callable(getattr(model, "discriminate", None))


@torch.no_grad()
def _discriminator_logits(model: Any, data: Dataset, batch_size: int) -> Tensor:
    from genlab.data import Loader

    model.eval()
    out = [model.discriminate(b["x"].to(model.device)).cpu().double()
           for b in Loader(data, batch_size, shuffle=False, drop_last=False, seed=12345)]
    return torch.cat(out)


def ood_scores(
    model: Any,
    in_data: Dataset,
    out_data: Dataset,
    train: Dataset | None = None,
    background: Any = None,
    typicality_m: Sequence[int] = (1, 5, 25),
    batch_size: int = 500,
    **kwargs: Any,
) -> tuple[dict[str, tuple[Tensor, Tensor]], list[str]]:
    """Every anomaly score ``model`` supports: {name: (in scores, out scores)} and notes.

    ``train`` (training images) is needed for typicality's entropy estimate, ``background``
    (a model of the same shape trained on perturbed inputs) for the likelihood ratio; without
    them those scores are skipped. ``kwargs`` go to the ``log_prob`` of the model and of the
    background where it is an estimate (e.g. ``k`` for a VAE); an exact one takes none.
    """
    from genlab.metrics.likelihood import check_finite, log_probs, method_of

    scores: dict[str, tuple[Tensor, Tensor]] = {}
    notes: list[str] = []
    if model.has("log_prob"):
        bg_kwargs = {} if background is None or background.exact else kwargs
        kwargs = {} if model.exact else kwargs
        method, k = method_of(model, kwargs.get("k"))
        how = method if k is None else f"{method}, k={k}"
        lp_in, lp_out = (log_probs(model, d, batch_size, **kwargs) for d in (in_data, out_data))
        for lp, d in ((lp_in, in_data), (lp_out, out_data)):
            check_finite(lp, d)
        scores[f"log-likelihood ({how})"] = (-lp_in, -lp_out)
        notes.append("bits/dim is -log p rescaled by a constant: the same ranking and metrics "
                     "as the log-likelihood")
        if train is not None:
            lp_train = log_probs(model, train, batch_size, **kwargs)
            check_finite(lp_train, train)
            h = float(-lp_train.mean())
            notes.append(f"typicality: H = {h:.2f} nats, mean -log p of {len(train)} "
                         "training images; scored on disjoint batches of M test images")
            for m in typicality_m:
                if m <= min(len(lp_in), len(lp_out)):
                    scores[f"typicality, M={m}"] = (typicality(lp_in, h, m, seed=1),
                                                    typicality(lp_out, h, m, seed=2))
        if background is not None:
            if tuple(background.shape) != tuple(model.shape):
                raise ValueError(f"the background model is for {background.shape} images, "
                                 f"the model for {model.shape}")
            bg_in, bg_out = (log_probs(background, d, batch_size, **bg_kwargs)
                             for d in (in_data, out_data))
            # Anomaly = -LLR: images the background explains as well as the model are suspect.
            scores["likelihood ratio (background model)"] = (bg_in - lp_in, bg_out - lp_out)
        # The compressor's log-probability of x is -L(x) ln 2 nats (a code of L bits).
        png_in, png_out = (-math.log(2) * png_bits(d.x) for d in (in_data, out_data))
        scores["input complexity (PNG as the background)"] = (png_in.to(lp_in.dtype) - lp_in,
                                                              png_out.to(lp_out.dtype) - lp_out)
    if has_discriminator(model):
        d_in, d_out = (_discriminator_logits(model, d, batch_size) for d in (in_data, out_data))
        scores["discriminator logit (GAN's D, not a likelihood)"] = (-d_in, -d_out)
    if not scores:
        raise ValueError(f"{model.name} has no OOD score: it needs log_prob or a discriminator")
    return scores, notes


def detect(model: Any, in_data: Dataset, out_data: Dataset, **kwargs: Any
           ) -> tuple[DetectionReport, dict[str, tuple[Tensor, Tensor]]]:
    """AUROC, AUPR and FPR@95 of every score (see :func:`ood_scores` for ``kwargs``); the
    report and the raw scores (for histograms)."""
    scores, notes = ood_scores(model, in_data, out_data, **kwargs)
    rows = [Detection.of(name, s_in, s_out) for name, (s_in, s_out) in scores.items()]
    report = DetectionReport(model.name, in_data.describe(), out_data.describe(), rows, notes)
    return report, scores


def plot_scores(scores: dict[str, tuple[Tensor, Tensor]], path: str | Path,
                title: str = "") -> None:
    """One histogram panel per score, in-distribution and OOD overlaid, written to ``path``.
    Each panel spans the 0.5%-99.5% quantiles of both; the tails pile into the end bins."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    n = len(scores)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, (s_in, s_out)) in zip(axes.flat, scores.items(), strict=False):
        both = torch.cat([s_in, s_out]).float()
        lo, hi = float(both.quantile(0.005)), float(both.quantile(0.995))
        bins = torch.linspace(lo, hi if hi > lo else lo + 1, 50).numpy()
        for s, label in ((s_in, "in"), (s_out, "out")):
            ax.hist(s.clamp(lo, hi).numpy(), bins=bins, alpha=0.55, density=True, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("anomaly score (higher: more OOD)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
