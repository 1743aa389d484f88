"""Measures of an image-to-image translation (CycleGAN and the like), as functions of
predictions and features so they can be checked on hand-made values:

- **label preservation**: the share of translated images in which a classifier still
  recognises the source image's label (a 7 translated to the other domain is still a 7);
- **cycle error**: the mean absolute difference between images and their round trip
  (A -> B -> A), per sub-pixel, in [0, 1] units;
- **Fréchet distance** between the features of translated images and those of real images of
  the target domain (FID when the features are a classifier's).
"""

from __future__ import annotations

import torch
from torch import Tensor


def label_preservation(predicted: Tensor, labels: Tensor) -> float:
    """Share of rows whose predicted label (B,) equals the source label (B,)."""
    if predicted.shape != labels.shape or predicted.dim() != 1 or len(labels) == 0:
        raise ValueError(f"predicted and labels must be equal non-empty (B,) tensors, got "
                         f"{tuple(predicted.shape)} and {tuple(labels.shape)}")
    return float((predicted.cpu() == labels.cpu()).double().mean())


def cycle_error(x: Tensor, reconstructed: Tensor) -> float:
    """Mean |x - reconstructed| over every sub-pixel of images (B, C, H, W) in [0, 1]."""
    if x.shape != reconstructed.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reconstructed.shape)}")
    return float((x.double() - reconstructed.double()).abs().mean())


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
    feature rows ``a`` (N, F) and ``b`` (M, F) (Heusel et al. 2017)."""
    fa, fb = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    s_a, s_b = torch.cov(fa.T).reshape(fa.shape[1], -1), torch.cov(fb.T).reshape(fb.shape[1], -1)
    # Tr (S_a S_b)^(1/2) = sum of the square roots of the eigenvalues of the symmetric
    # S_a^(1/2) S_b S_a^(1/2), which has the same (non-negative) spectrum.
    w, v = torch.linalg.eigh(s_a)
    half = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    roots = torch.linalg.eigvalsh(half @ s_b @ half).clamp(min=0).sqrt()
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * roots.sum())


def translation_measures(model: torch.nn.Module, a: Tensor, b: Tensor, y_a: Tensor,
                         y_b: Tensor, predict: object = None, features: object = None,
                         batch_size: int = 250) -> dict[str, float]:
    """The measures both ways for a model with ``translate(x, {"to": ...})``: images ``a``,
    ``b`` (N, C, H, W) of each domain with labels ``y_a``, ``y_b``; ``predict`` maps images to
    labels and ``features`` to feature rows (both optional: those measures are then left out).
    """
    out: dict[str, float] = {}
    for src, x, y, to, target in (("a", a, y_a, "b", b), ("b", b, y_b, "a", a)):
        back = "a" if to == "b" else "b"
        moved, rec = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                chunk = x[i : i + batch_size].to(model.device)
                t = model.translate(chunk, {"to": to})
                moved.append(t.float().cpu())
                rec.append(model.translate(t, {"to": back}).float().cpu())
        t, r = torch.cat(moved), torch.cat(rec)
        key = f"{src}->{to}"
        out[f"cycle_error {key}->{src}"] = cycle_error(x.cpu(), r)
        if predict is not None:
            out[f"label_preservation {key}"] = label_preservation(predict(t), y)  # type: ignore[operator]
        if features is not None:
            out[f"fid {key}"] = frechet_distance(features(t), features(target))  # type: ignore[operator]
    return out
