"""Binarization: stochastic (static or dynamic) as the literature does, or a threshold.

Binary models see pixels drawn from Bernoulli(grey value). ``"static"`` fixes one draw per
image when loading, ``"dynamic"`` draws afresh for every batch, ``"threshold"`` keeps
``x > 0.5`` (deterministic, but not comparable with published binarized-MNIST likelihoods).
:func:`binarization_for` is the one place that decides which a model gets.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

from genlab.data.dataset import BINARIZE_MODES, DataError, bad_mode_message, check_unit_range
from genlab.data.seeds import TAG_IMAGE, generator, mix

if TYPE_CHECKING:
    from genlab.models.base import GenerativeModel


def bernoulli_bits(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Bool tensor shaped like x with P(True) = x, drawn from `gen`."""
    # u < x with u ~ U[0, 1) is exactly Bernoulli(x); drawing the uniforms ourselves keeps the
    # draw reproducible whatever the thread count, and lets the generator live on the CPU.
    device = gen.device if gen is not None else x.device
    u = torch.rand(x.shape, generator=gen, device=device)  # same shape as x
    return u.to(x.device) < x


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary version of grey images `x` (values in [0, 1]), same shape and float dtype.

    ``"static"`` and ``"dynamic"`` draw each pixel from Bernoulli(x) with `generator` (the two
    names only differ in when `load`/`Loader` call this); ``"threshold"`` returns
    ``(x > 0.5)``, which is deterministic but gives likelihoods that are not comparable with
    published binarized-MNIST results.
    """
    if mode not in BINARIZE_MODES:
        raise DataError(bad_mode_message(mode))
    check_unit_range(x, "binarize")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    if mode == "threshold":
        return (x > 0.5).to(dtype)
    return bernoulli_bits(x, generator).to(dtype)


def image_hash(image: torch.Tensor) -> int:
    """64-bit hash of one image's shape and values: equal images, equal hashes."""
    flat = (image.detach().cpu().float() + 0.0).contiguous()  # + 0.0 turns -0.0 into 0.0
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(tuple(flat.shape)).encode())
    h.update(flat.numpy().tobytes())
    return int.from_bytes(h.digest(), "little")


def per_image_bits(p: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, C, H, W) bool: each image's own Bernoulli(p) draw, seeded by (seed, its content).

    An image gets the same bits wherever it sits (alone, in a folder, in another order), so
    scoring it gives the same number either way.
    """
    out = torch.empty(p.shape, dtype=torch.bool)
    for i, image in enumerate(p):  # image: (C, H, W)
        out[i] = bernoulli_bits(image, generator(mix(TAG_IMAGE, seed, image_hash(image))))
    return out


def binarization_for(
    model: GenerativeModel, requested: str | None = None, *, default: str = "static"
) -> str | None:
    """The binarization a model's training and evaluation data get, from its ``data_kind``.

    Binary models (``data_kind == "binary"``) get `requested`, or `default` when nothing was
    requested (``"static"``, the literature's fixed draw; a preset may choose ``"dynamic"``).
    Models of grey levels or continuous values get None: their data keeps its grey values,
    and `default` is ignored. Asking a non-binary model for a binarization is a DataError.

        >>> m = genlab.create("nade", shape=(1, 28, 28))
        >>> train = load("mnist", "train", binarize=binarization_for(m))   # "static"
    """
    for mode in (requested, default):
        if mode is not None and mode not in BINARIZE_MODES:
            raise DataError(bad_mode_message(mode))
    kind = getattr(model, "data_kind", None)
    if kind == "binary":
        return requested or default
    if requested is not None:
        what = "grey levels" if kind == "grey" else f"{kind} values"
        raise DataError(
            f"{model.name or type(model).__name__} with these settings models {what}, "
            f"not binary images: drop binarize={requested!r} (--binarize {requested})"
        )
    return None
