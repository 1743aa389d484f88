"""Pixel orderings for autoregressive models, and the flattened-position convention they share.

An image of shape (C, H, W) is flattened the way ``torch.flatten`` does it, so sub-pixel
(c, h, w) sits at index ``c*H*W + h*W + w``. An ordering is a permutation ``order`` of
``range(C*H*W)``: ``order[d]`` is the index of the d-th sub-pixel an autoregressive model
generates, and p(x) = prod_d p(x[order[d]] | x[order[:d]]).

All orderings are *pixel-major*: they visit pixels (h, w) in some spatial order and, within one
pixel, its channels in turn (R before G before B), so a pixel's colour is generated together.
``random`` is the exception: a seeded uniform permutation of all sub-pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.nn import off_grid

ORDERINGS = ("raster", "snake", "random")


def _pixel_major(pixels: list[int], hw: int, channels: int) -> Tensor:
    # Spatial order over the hw pixels -> flat sub-pixel order, channels innermost.
    return torch.tensor([c * hw + p for p in pixels for c in range(channels)], dtype=torch.long)


def ordering(name: str, n: int, seed: int = 0, width: int | None = None,
             channels: int = 1) -> Tensor:
    """A permutation (n,) of ``range(n)`` over flattened (C, H, W) sub-pixels, n = C*H*W.

    ``"raster"``: rows top to bottom, each row left to right, channels within a pixel.
    ``"snake"``: like raster but odd rows (counting from 0) run right to left, so consecutive
    pixels are always neighbours; needs ``width``.
    ``"random"``: ``torch.randperm(n)`` from a generator seeded with ``seed``.
    """
    if name not in ORDERINGS:
        raise ValueError(f"unknown ordering {name!r}; choose one of: {', '.join(ORDERINGS)}")
    if n < 1 or channels < 1 or n % channels:
        raise ValueError(f"n={n} sub-pixels cannot be split into {channels} channels")
    hw = n // channels
    if name == "raster":
        return _pixel_major(list(range(hw)), hw, channels)
    if name == "snake":
        if width is None or width < 1 or hw % width:
            raise ValueError(f"the snake ordering needs the image width (got width={width} "
                             f"for {hw} pixels per channel)")
        rows = [list(range(r * width, (r + 1) * width)) for r in range(hw // width)]
        pixels = [p for r, row in enumerate(rows) for p in (row[::-1] if r % 2 else row)]
        return _pixel_major(pixels, hw, channels)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)


def split_cond(cond: dict[str, Tensor] | None, n: int, shape: tuple[int, int, int],
               device: torch.device | None = None, levels: int | None = 2
               ) -> tuple[Tensor, Tensor] | None:
    """Check a completion request and flatten it: ``(given (n, D) float, known (n, D) bool)``.

    ``cond = {"x": partial images (n, C, H, W), "mask": (n, C, H, W) bool, True = given}``.
    ``None`` means unconditional sampling. Values under ``mask`` must be 0 or 1, or on the grid
    k / (levels - 1) for a model of ``levels`` grey levels; ``levels=None`` leaves the values
    to the caller's own check.
    """
    if cond is None:
        return None
    if not isinstance(cond, dict) or set(cond) != {"x", "mask"}:
        raise ValueError("cond must be {'x': partial images, 'mask': bool mask, True = given}")
    x, mask = cond["x"], cond["mask"]
    want = (n, *shape)
    if tuple(x.shape) != want or tuple(mask.shape) != want:
        raise ValueError(f"cond['x'] and cond['mask'] must both have shape {want}, "
                         f"got {tuple(x.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"cond['mask'] must be a bool tensor, got {mask.dtype}")
    known = mask.reshape(n, -1).to(device)
    given = x.reshape(n, -1).to(device=device, dtype=torch.float32)
    if levels is not None and off_grid(given[known], levels):
        allowed = "0 or 1" if levels == 2 else f"values k/{levels - 1} in [0, 1]"
        raise ValueError(f"the given pixels (cond['x'] where mask is True) must be {allowed}")
    return torch.where(known, given, torch.zeros_like(given)), known
