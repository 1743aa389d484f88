"""Digits (or clothes) drawn with controlled attributes: colour, background, thickness, rotation,
scale, inversion. The data of attribute-conditional models (StarGAN, text-to-image).

Each image of MNIST or Fashion-MNIST is rendered once, with attributes drawn uniformly and
independently per image from a generator seeded by ``(seed, split)``:

- ``thickness``: ``thin`` (grey erosion, a 3x3 cross), ``normal``, ``thick`` (grey dilation,
  3x3 max-pool): thick always has at least the ink of normal, thin at most.
- ``scale`` ``small`` / ``normal`` / ``large`` (0.75, 1, 1.2) and ``rotation`` ``-30`` / ``0`` /
  ``30`` degrees (positive = counter-clockwise, "tilted left"), one bilinear affine warp.
- ``colour`` (the stroke) on ``background``: ``image = ink * colour + (1 - ink) * background``.
- ``inversion`` ``no`` / ``yes``: yes swaps the two colours (the stroke takes the background's
  colour and the rest the stroke's).

Images are 3x32x32: the 28x28 digit is padded by 2 on each side, which leaves room to rotate
and enlarge without cropping and gives the power-of-two square that DCGAN-style networks
(:class:`genlab.nn.ConvGenerator`) work on.

Batch fields: ``x`` (B, 3, 32, 32) float, ``y`` (B,) the class, ``attrs`` (B, 6) int64, column
``j`` the index of the value of ``ATTRIBUTE_NAMES[j]`` in ``ATTRIBUTES[name]``.
:func:`parse_attrs` turns ``"colour=red,rotation=30"`` into such rows, :func:`describe_attrs`
turns a row back into text.

Sources ``mnist-attrs`` and ``fashion-mnist-attrs``: the first 10k / 1k / 1k images of the
base source's train / val / test splits (a rendered image costs 12 KB; ``limit`` renders only
the first ``limit`` of a split).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.data.dataset import DataError, Dataset, concat_fields
from genlab.data.seeds import generator, mix
from genlab.data.source import Source, bounds, count, first

TAG_ATTRS = 7  # the seed stream of attribute draws (see genlab.data.seeds)

# Named colours, RGB in [0, 1]. Strokes are bright, backgrounds dark, so every pair contrasts.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.2, 0.4, 1.0),
    "yellow": (1.0, 0.95, 0.1), "magenta": (1.0, 0.1, 1.0), "cyan": (0.1, 0.95, 1.0),
    "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.55, 0.0),
}  # fmt: skip
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0), "grey": (0.3, 0.3, 0.3),
    "navy": (0.0, 0.0, 0.35), "maroon": (0.35, 0.0, 0.0),
}  # fmt: skip

# Attribute -> its values, in column order; a value's index is its label.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "background": tuple(BACKGROUNDS),
    "thickness": ("thin", "normal", "thick"),
    "rotation": ("-30", "0", "30"),
    "scale": ("small", "normal", "large"),
    "inversion": ("no", "yes"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
# The value parse_attrs gives an attribute the text does not name.
DEFAULTS: dict[str, str] = {
    "colour": "white", "background": "black", "thickness": "normal", "rotation": "0",
    "scale": "normal", "inversion": "no",
}  # fmt: skip
ANGLES = {"-30": -30.0, "0": 0.0, "30": 30.0}
SCALES = {"small": 0.75, "normal": 1.0, "large": 1.2}
SIZE = 32  # rendered images are 3 x SIZE x SIZE
SPLIT_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}


def parse_attrs(text: str, n: int = 1) -> torch.Tensor:
    """``"colour=red,rotation=30"`` -> (n, len(ATTRIBUTE_NAMES)) int64, the same row n times.

    Attributes not named take :data:`DEFAULTS`; an unknown name or value is one DataError
    listing what is allowed. Aliases: ``color`` for ``colour``, ``+30`` for ``30``.
    """
    values = dict(DEFAULTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip().lower() for s in part.partition("="))
        key = "colour" if key == "color" else key
        value = value.lstrip("+") if key == "rotation" else value
        if not sep or key not in ATTRIBUTES:
            raise DataError(
                f"bad attribute {part!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(ATTRIBUTE_NAMES)}"
            )
        if value not in ATTRIBUTES[key]:
            raise DataError(f"bad {key} {value!r}: expected one of {', '.join(ATTRIBUTES[key])}")
        values[key] = value
    row = torch.tensor([ATTRIBUTES[k].index(values[k]) for k in ATTRIBUTE_NAMES])
    return row[None].repeat(n, 1)


def describe_attrs(row: torch.Tensor) -> str:
    """One row of ``attrs`` as ``"colour=red,background=black,..."`` (what parse_attrs reads)."""
    pairs = zip(ATTRIBUTE_NAMES, row.tolist(), strict=True)
    return ",".join(f"{k}={ATTRIBUTES[k][i]}" for k, i in pairs)


def random_attrs(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, len(ATTRIBUTE_NAMES)) int64: each attribute uniform over its values, independently."""
    cols = [torch.randint(0, len(v), (n,), generator=g) for v in ATTRIBUTES.values()]
    return torch.stack(cols, 1)


def _column(attrs: torch.Tensor, name: str) -> torch.Tensor:
    return attrs[:, ATTRIBUTE_NAMES.index(name)]


def _erode(ink: torch.Tensor) -> torch.Tensor:
    """Grey erosion with a 3x3 cross: each pixel becomes the min of itself and its 4 neighbours."""
    p = F.pad(ink, (1, 1, 1, 1))  # (n, 1, H+2, W+2), zero outside: strokes thin at the border
    shifts = [p[..., 1:-1, 1:-1], p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2],
              p[..., 1:-1, 2:]]  # fmt: skip
    return torch.stack(shifts).amin(0)


def _dilate(ink: torch.Tensor) -> torch.Tensor:
    """Grey dilation with a 3x3 square."""
    return F.max_pool2d(ink, 3, stride=1, padding=1)


def render(grey: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """(n, 1, 28, 28) grey ink in [0, 1] and (n, k) attrs -> (n, 3, 32, 32) RGB in [0, 1]."""
    ink = F.pad(grey, (2, 2, 2, 2))  # (n, 1, 32, 32)
    thickness = _column(attrs, "thickness")
    ink = torch.where((thickness == 0)[:, None, None, None], _erode(ink), ink)
    ink = torch.where((thickness == 2)[:, None, None, None], _dilate(ink), ink)
    # One affine warp: output pixel p samples the input at R(-angle) p / scale.
    angle = torch.tensor([ANGLES[v] for v in ATTRIBUTES["rotation"]])[_column(attrs, "rotation")]
    scale = torch.tensor([SCALES[v] for v in ATTRIBUTES["scale"]])[_column(attrs, "scale")]
    a = angle * math.pi / 180
    # affine_grid's y axis points down, so this matrix turns the picture counter-clockwise.
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), torch.zeros_like(a)], 1),
                         torch.stack([a.sin(), a.cos(), torch.zeros_like(a)], 1)], 1)
    theta = theta / scale[:, None, None]
    theta[:, :, 2] = 0
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    ink = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ink = ink.clamp(0, 1)  # (n, 1, 32, 32)
    stroke = torch.tensor(list(COLOURS.values()))[_column(attrs, "colour")]  # (n, 3)
    back = torch.tensor(list(BACKGROUNDS.values()))[_column(attrs, "background")]  # (n, 3)
    inverted = (_column(attrs, "inversion") == 1)[:, None]
    stroke, back = torch.where(inverted, back, stroke), torch.where(inverted, stroke, back)
    return ink * stroke[:, :, None, None] + (1 - ink) * back[:, :, None, None]


def split_rows(base: Source, limit: int | None) -> dict[str, torch.Tensor]:
    """Rows of `base` each split renders: the first SPLIT_SIZES[split] (or `limit`) of it."""
    out = {}
    for split, size in SPLIT_SIZES.items():
        rows = base.splits[split]
        n = count(rows, len(base.data))
        keep = first(rows, min(size, limit or size, n))
        out[split] = torch.arange(len(base.data))[keep]
    return out


def attributed_source(base: Source, name: str, seed: int, limit: int | None) -> Source:
    """`base` (a grey 1x28x28 source with labels) rendered with random attributes per image."""
    if base.shape != (1, 28, 28):
        raise DataError(f"{name}: needs a 1x28x28 grey source, got {base.shape}")
    pieces = []
    for i, rows in enumerate(split_rows(base, limit).values()):
        attrs = random_attrs(len(rows), generator(mix(TAG_ATTRS, seed, i)))
        x = render(base.data.x[rows], attrs)
        pieces.append({"x": x, "y": base.data.y[rows], "attrs": attrs})
    whole = concat_fields(pieces)
    data = Dataset(whole.pop("x"), whole.pop("y"), name, classes=base.data.classes,
                   fields=whole)
    return Source(data=data, splits=bounds(*(len(p["x"]) for p in pieces)))
