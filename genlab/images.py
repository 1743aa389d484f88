"""Image grids: what a person looks at after training, sampling or completing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.models.base import atomic_write


def grid(x: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 image (rows*H', cols*W', C) with a grey border."""
    x = x.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i]
    img = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return img[..., 0] if c == 1 else img


# Pillow's format name for each file suffix a grid may be written as.
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def grid_format(path: str | os.PathLike) -> str:
    """Pillow's format for writing a grid to ``path``, chosen by its suffix; ValueError (one line
    naming the suffixes that work) for any other, so callers can check before sampling."""
    suffix = Path(path).suffix.lower()
    if suffix not in GRID_FORMATS:
        got = f"'{suffix}'" if suffix else "no suffix"
        raise ValueError(
            f"cannot write an image grid to {path} ({got}): "
            f"name it {', '.join(f'*{s}' for s in GRID_FORMATS)}"
        )
    return GRID_FORMATS[suffix]


def save_grid(
    x: Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None
) -> Path:
    """Write a grid of the images ``x`` as PNG, JPEG or WebP (by the suffix of ``path``); small
    images are upscaled so they can be seen."""
    from PIL import Image

    path = Path(path)
    fmt = grid_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid(x, nrow))
    if scale is None:
        scale = max(1, 512 // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    # Lossy formats at high quality: a grid's sharp pixel edges blur at Pillow's default 75.
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda p: img.save(p, format=fmt, **options))
    return path


# Hidden pixels are shown blended half-way with this colour, so the mask is visible on any image
# (black, white or colour) and what was hidden still shows through.
HIDDEN_TINT = (0.15, 0.45, 1.0)


def _rgb(x: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W) float."""
    return x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()


def tinted(x: Tensor, given: Tensor) -> Tensor:
    """RGB images (N, 3, H, W): ``x`` (N, C, H, W) with the pixels not ``given`` (bool, same
    shape) blended with HIDDEN_TINT. A pixel counts as hidden if any of its channels is."""
    rgb = _rgb(x)
    hidden = (~given).any(1, keepdim=True)  # (N, 1, H, W)
    tint = torch.tensor(HIDDEN_TINT).view(1, 3, 1, 1)
    return torch.where(hidden, 0.5 * rgb + 0.5 * tint, rgb)


def save_completions(x: Tensor, given: Tensor, completions: Tensor,
                     path: str | os.PathLike) -> Path:
    """One row per input: the input ``x`` (N, C, H, W) with its hidden part tinted (``given``
    bool, True = given), then its k ``completions`` (N, k, C, H, W)."""
    n, k = completions.shape[:2]
    filled = _rgb(completions.flatten(0, 1)).view(n, k, 3, *x.shape[2:])
    rows = torch.cat([tinted(x, given).unsqueeze(1), filled], 1)  # (N, 1 + k, 3, H, W)
    return save_grid(rows.flatten(0, 1), path, nrow=k + 1)

