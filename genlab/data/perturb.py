"""``perturb:RATE:SOURCE``: a source with each pixel replaced by noise with probability RATE.

The background model of Ren et al. 2019 (arXiv:1906.02845, §4) is trained on inputs perturbed
this way: each sub-pixel is, independently with probability RATE (the paper's mu, 0.1 to 0.3),
replaced by a uniform draw from its range. That destroys the local semantics of the images and
keeps their population-level statistics, so the likelihood ratio log p(x) / log p_bg(x)
cancels what both models share. Binarized data (``static``, ``threshold``) gets a random bit
in place of the pixel (Bernoulli(1/2)); grey data (and the probabilities ``dynamic`` keeps)
a uniform grey value, which a fresh Bernoulli draw turns into the same random bit. The
perturbation is one fixed draw per split, seeded by ``seed``, like static binarization.
"""

from __future__ import annotations

import torch

from genlab.data.dataset import SPLITS, DataError, Dataset
from genlab.data.seeds import TAG_PERTURB, generator, mix

PREFIX = "perturb:"


def parse(source: object) -> tuple[float, str] | None:
    """(rate, inner source) for ``"perturb:RATE:SOURCE"``; None for any other source."""
    text = str(source)
    if not text.startswith(PREFIX):
        return None
    rate_text, sep, inner = text[len(PREFIX):].partition(":")
    try:
        rate = float(rate_text)
    except ValueError:
        rate = None
    if not sep or not inner or rate is None or not 0 <= rate <= 1:
        raise DataError(f"{text!r}: expected perturb:RATE:SOURCE with RATE in [0, 1], "
                        "e.g. perturb:0.2:mnist")
    return rate, inner


def perturbed(data: Dataset, rate: float, seed: int) -> Dataset:
    """``data`` with each sub-pixel replaced by noise with probability ``rate``."""
    g = generator(mix(TAG_PERTURB, seed, SPLITS.index(data.split)))
    hit = torch.rand(data.x.shape, generator=g) < rate  # (N, C, H, W) which sub-pixels
    noise = torch.rand(data.x.shape, generator=g)
    if data.binarize in ("static", "threshold"):
        noise = (noise < 0.5).float()
    fields = {k: v for k, v in data.fields.items() if k not in ("x", "y")}
    origin = None
    if data.origin is not None:
        origin = {**data.origin, "source": f"{PREFIX}{rate:g}:{data.origin['source']}"}
    return Dataset(torch.where(hit, noise, data.x), data.y, f"{data.name} perturbed at {rate:g}",
                   data.split, data.binarize, data.seed, data.classes, data.paths,
                   fields=fields, origin=origin)
