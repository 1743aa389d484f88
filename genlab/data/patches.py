"""Key patches: a few crops of each image, the data of part-conditional models (PuzzleGAN).

Each image of ``mnist-attrs`` (3x32x32, see :mod:`genlab.data.attributes`) gets 1 to
:data:`MAX_PATCHES` square crops of :data:`PATCH` x :data:`PATCH` pixels. A box is centred on
a random pixel of the digit's stroke (so a patch shows a part of the digit, not background),
clamped inside the image. As in the PuzzleGAN paper each patch is an image by itself, its
location unknown to the model; the ground truth lies alongside for measuring mask IoU.

Batch fields (source ``mnist-patches``), with K = MAX_PATCHES slots, the first
``patch_count`` of them used (the others are all zeros / False):

- ``x`` (B, 3, 32, 32) float, ``y`` (B,) int64, ``attrs`` (B, 6) int64 as ``mnist-attrs``;
- ``patches`` (B, K, 3, PATCH, PATCH) float: ``patches[i, k] == x[i, :, t:t+PATCH, l:l+PATCH]``
  with ``(t, l) = boxes[i, k, :2]``;
- ``patch_count`` (B,) int64 in 1..K; ``patch_valid`` (B, K) bool (slot k < patch_count);
- ``boxes`` (B, K, 4) int64 ``(top, left, bottom, right)``, bottom/right exclusive;
- ``masks`` (B, K, 32, 32) bool: True inside slot k's box.

:func:`patch_cond` turns a list of patch images into the ``cond`` a model's ``sample`` gets.
"""

from __future__ import annotations

import torch

from genlab.data.attributes import attributed_source
from genlab.data.dataset import Dataset
from genlab.data.seeds import generator, mix
from genlab.data.source import Source

TAG_PATCHES = 11
MAX_PATCHES = 3
PATCH = 12


def boxes_for(ink: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, W) ink -> ((n, K, 4) boxes, (n,) counts): K boxes per image, `count` of them real.

    Each centre is a random pixel with ink above half its image's maximum."""
    n, h, w = ink.shape
    counts = torch.randint(1, MAX_PATCHES + 1, (n,), generator=g)
    strong = ink > 0.5 * ink.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]  # (n, H, W)
    # A random strong pixel per slot: the argmax of random keys restricted to strong pixels.
    keys = torch.rand(n, MAX_PATCHES, h * w, generator=g)
    keys = keys.masked_fill(~strong.flatten(1)[:, None, :], -1.0)
    centre = keys.argmax(2)  # (n, K)
    cy, cx = centre // w, centre % w
    top = (cy - PATCH // 2).clamp(0, h - PATCH)
    left = (cx - PATCH // 2).clamp(0, w - PATCH)
    boxes = torch.stack([top, left, top + PATCH, left + PATCH], 2)  # (n, K, 4)
    unused = torch.arange(MAX_PATCHES)[None, :] >= counts[:, None]
    boxes[unused] = 0
    return boxes, counts


def crop(x: torch.Tensor, boxes: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(n, C, H, W) images and their boxes -> ((n, K, C, PATCH, PATCH) patches, (n, K, H, W)
    bool masks); unused slots are zero."""
    n, c, h, w = x.shape
    patches = torch.zeros(n, MAX_PATCHES, c, PATCH, PATCH)
    masks = torch.zeros(n, MAX_PATCHES, h, w, dtype=torch.bool)
    for i in range(n):
        for k in range(int(counts[i])):
            t, left, b, r = boxes[i, k].tolist()
            patches[i, k] = x[i, :, t:b, left:r]
            masks[i, k, t:b, left:r] = True
    return patches, masks


def patched_source(base: Source, name: str, seed: int, limit: int | None) -> Source:
    """`base` rendered as ``mnist-attrs`` with its key patches and their ground truth."""
    src = attributed_source(base, name, seed, limit)
    d = src.data
    # (n, H, W): how far each pixel is from the background (the corner pixel, which no
    # rotation or enlargement reaches), i.e. how much of the stroke it shows.
    ink = (d.x - d.x[:, :, :1, :1]).abs().amax(1)
    boxes, counts = boxes_for(ink, generator(mix(TAG_PATCHES, seed)))
    patches, masks = crop(d.x, boxes, counts)
    valid = torch.arange(MAX_PATCHES)[None, :] < counts[:, None]
    fields = {"attrs": d.attrs, "patches": patches, "patch_count": counts,
              "patch_valid": valid, "boxes": boxes, "masks": masks}
    data = Dataset(d.x, d.y, name, classes=d.classes, fields=fields)
    return Source(data=data, splits=src.splits)


def patch_cond(images: list[torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Patch images ((C, h, w) each, at most MAX_PATCHES; resized to PATCH x PATCH) ->
    ``{"patches": (n, K, C, PATCH, PATCH), "patch_valid": (n, K) bool}``, the same for all n."""
    import torch.nn.functional as F

    if not 1 <= len(images) <= MAX_PATCHES:
        raise ValueError(f"give 1 to {MAX_PATCHES} patches, got {len(images)}")
    c = images[0].shape[0]
    out = torch.zeros(MAX_PATCHES, c, PATCH, PATCH)
    for k, p in enumerate(images):
        if p.shape[0] != c:
            raise ValueError("all patches must have the same number of channels")
        out[k] = F.interpolate(p[None].float(), size=(PATCH, PATCH), mode="bilinear",
                               align_corners=False)[0].clamp(0, 1)
    valid = torch.arange(MAX_PATCHES) < len(images)
    return {"patches": out[None].repeat(n, 1, 1, 1, 1), "patch_valid": valid[None].repeat(n, 1)}
