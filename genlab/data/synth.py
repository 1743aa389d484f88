"""Small generated images for tests: bars (binary) and blobs (grey), any shape."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.data.dataset import DataError, Dataset, check_shape, concat_fields
from genlab.data.seeds import TAG_SYNTH, generator, mix
from genlab.data.source import Source, bounds

_SYNTH_CLASSES = {
    "bars": ["horizontal", "vertical"],
    "blobs": ["top-left", "top-right", "bottom-left", "bottom-right"],
}


def _lines(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) bool: which of k lines are on, never none and (for k > 1) never all."""
    on = torch.rand(n, k, generator=g) < 0.5
    pick = torch.randint(0, k, (n,), generator=g)  # (n,)
    rows = torch.arange(n)
    # All-off or all-on images would look the same for both orientations: flip one line.
    flip = ~on.any(1) | (on.all(1) if k > 1 else torch.zeros(n, dtype=torch.bool))
    on[rows[flip], pick[flip]] = ~on[rows[flip], pick[flip]]
    return on


def _bars(n: int, shape: tuple[int, int, int], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    c, h, w = shape
    vertical = torch.randint(0, 2, (n,), generator=g)  # (n,) label: 0 horizontal, 1 vertical
    rows = _lines(n, h, g)[:, :, None].expand(n, h, w)  # (n, H, W)
    cols = _lines(n, w, g)[:, None, :].expand(n, h, w)  # (n, H, W)
    mask = torch.where(vertical[:, None, None].bool(), cols, rows).float()  # (n, H, W)
    if c == 3:
        # One of the 7 non-black pure colours, so RGB bars stay exactly binary.
        palette = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(1, 8)]).float()
        colour = palette[torch.randint(0, 7, (n,), generator=g)]  # (n, 3)
        x = mask[:, None] * colour[:, :, None, None]  # (n, 3, H, W)
    else:
        x = mask[:, None].expand(n, c, h, w).clone()  # (n, C, H, W)
    return x, vertical.long()


def _blobs(n: int, shape: tuple[int, int, int], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    c, h, w = shape
    cy = torch.rand(n, generator=g) * (h - 1)  # (n,) centre row
    cx = torch.rand(n, generator=g) * (w - 1)  # (n,) centre column
    sigma = (0.1 + 0.15 * torch.rand(n, generator=g)) * min(h, w)  # (n,) width
    yy = torch.arange(h, dtype=torch.float32)[None, :, None]  # (1, H, 1)
    xx = torch.arange(w, dtype=torch.float32)[None, None, :]  # (1, 1, W)
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2  # (n, H, W)
    img = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))  # (n, H, W) in (0, 1]
    label = 2 * (cy >= (h - 1) / 2).long() + (cx >= (w - 1) / 2).long()  # (n,) quadrant
    if c == 3:
        colour = 0.5 + 0.5 * torch.rand(n, 3, generator=g)  # (n, 3)
        x = img[:, None] * colour[:, :, None, None]  # (n, 3, H, W)
    else:
        x = img[:, None].expand(n, c, h, w).clone()  # (n, C, H, W)
    return x, label


GENERATORS: dict[str, Callable[..., tuple[torch.Tensor, ...]]] = {"bars": _bars, "blobs": _blobs}


def synthetic(
    name: str, n: int = 512, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0
) -> Dataset:
    """Small generated images for tests, deterministic given `seed`.

    ``"bars"``: some horizontal or some vertical full-length bars, exactly binary
    (label 0 horizontal, 1 vertical; with 3 channels each image has one pure colour).
    ``"blobs"``: one Gaussian blob of random centre and width, grey values in (0, 1]
    (label = quadrant of the centre; with 3 channels each image has a random colour).
    """
    if name not in GENERATORS:
        raise DataError(
            f"unknown synthetic data {name!r}: expected one of {', '.join(sorted(GENERATORS))}"
        )
    if not isinstance(n, int) or n < 1:
        raise DataError(f"synthetic:{name}: n must be a positive int, got {n!r}")
    shape = check_shape(shape)
    x, y = GENERATORS[name](n, shape, generator(seed))  # (n, C, H, W), (n,)
    return Dataset(x, y, f"synthetic:{name}", "all", None, seed, list(_SYNTH_CLASSES[name]))


def synthetic_source(name: str, n: int, shape: tuple[int, int, int], seed: int) -> Source:
    """Train, val and test: independent draws of n images each (`limit` sets n)."""
    parts = [synthetic(name, n, shape, seed=mix(TAG_SYNTH, seed, i)) for i in range(3)]
    whole = concat_fields([p.fields for p in parts])  # (3n, C, H, W) images, (3n,) labels
    data = Dataset(whole["x"], whole["y"], f"synthetic:{name}", classes=parts[0].classes)
    return Source(data=data, splits=bounds(n, n, n))
